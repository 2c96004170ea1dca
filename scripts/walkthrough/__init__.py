"""``make walkthrough``: a narrated walkthrough video of the product, made from a real run.

The committed sample run (``rendered/samples/``) is shown page by page in headless Chromium,
narrated by ``espeak-ng`` with the run's own numbers and assembled by ``ffmpeg`` into an H.264
MP4 with a subtitle track, a WebVTT sidecar and a manifest (section times, pages, screenshot
fingerprints) that ``tests/code/test_walkthrough.py`` checks the video against.

Modules: :mod:`.records` (the run records and the facts read from them), :mod:`.sections` (the
narration: page, scroll target and text template per section), :mod:`.capture` (screenshots and
their fingerprints), :mod:`.narrate` (speech and subtitles), :mod:`.assemble` (the encode) and
``__main__`` (the command). Tooling, not product logic: it lives in ``scripts/``, outside the
shipped package, and needs system tools (chromium, espeak-ng, ffmpeg) the package does not.
"""
