"""``make image-test``: build the serving image with a model baked in, run it, check it.

The logic is :mod:`healthpredict.mlops.image_check`; this writes ``var/bench/image.json`` and
exits non-zero when a check fails. Needs podman, buildah, runc and debootstrap (apt).

Usage: ``python benchmarks/image_test.py [--out var/bench/image.json] [--keep-image]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Parse the arguments and run the check; return the exit code."""
    from healthpredict.mlops.containers import SERVING_IMAGE, STANDIN_BASE
    from healthpredict.mlops.image_check import main as check

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "image.json"))
    parser.add_argument("--image", default=SERVING_IMAGE, help="image name (tag v<N>)")
    parser.add_argument("--base-image", default=STANDIN_BASE, help="the Dockerfile's BASE_IMAGE")
    parser.add_argument("--keep-image", action="store_true", help="keep the tag in the store")
    args = parser.parse_args()
    return check(
        args.out, image=args.image, base_image=args.base_image, remove_image=not args.keep_image
    )


if __name__ == "__main__":
    sys.exit(main())
