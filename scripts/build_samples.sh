#!/usr/bin/env bash
# Regenerate rendered/samples/: the audit trail of one real-data run, small enough for git.
#   EDA -> training -> a NO_DRIFT check (the validation split: same period as the training data)
#   -> the loop over the first four batches of the future stream (the first DRIFT_DETECTED) and
#   a retraining on the first batch through the gate -> the gallery linking them (its stream
#   timeline), with the training's and the retraining's model cards -> the walkthrough video.
# Usage: scripts/build_samples.sh [path/to/dataset_diabetes.zip]   (default: the committed data/uci zip; run by `make samples`)
set -euo pipefail
cd "$(dirname "$0")/.."

source_zip=${1:-data/uci/dataset_diabetes.zip}
[ -f "$source_zip" ] || { echo "real data not found at $source_zip: pass the UCI zip" >&2; exit 1; }
hp=.venv/bin/healthpredict
work=var/samples
out=rendered/samples

rm -rf "$work" "$out"
export HP_STORAGE=$work HP_MLFLOW_TRACKING_URI=sqlite:///$work/mlflow.db HP_RENDERED_DIR=$out
export HP_UCI_SOURCE=$source_zip
data=$(realpath -m "$work/processed_data")

$hp data prepare
$hp run 01_eda
$hp train --n-trials 12
# Held-out rows of the training period: nothing has changed, so NO_DRIFT is the honest answer.
# Predictions are compared with those on the test split (not on the batch itself).
$hp run 03_drift_monitor -p new_data_path "$data/validation.csv" \
  -p model_reference_path "$data/test.csv"
# The first four batches of 2,000 encounters after the training period, as the loop sees them
# (labels one batch late): the gallery's stream timeline.
$hp loop --max-batches 4
# The loop judges performance once the batch's labels arrive (none come with the first batch),
# so the sample's retraining is run by hand on that batch with its labels (the first 2,000 rows
# of the stream): the gate and the challenger's model card.
head -n 2001 "$data/future_data.csv" > "$work/first_batch_labelled.csv"
$hp retrain --retraining-data-path "$work/first_batch_labelled.csv"
$hp gallery

# Keep it small: the executed .ipynb files duplicate the HTML renderings, and every Evidently
# report embeds its ~4 MB script bundle, so only the data-drift reports are kept.
find "$out" -name '*.ipynb' -delete
find "$out" -path '*/reports/*' -name '*.html' ! -name '*data_drift*' -delete
# ...and of the stream only the first batch's report (the walkthrough shows it): the later
# batches keep their notebook, its tables and figures.
find "$out" -maxdepth 1 -type d -name '*-03_drift_monitor-*' | sort | tail -n +3 |
  while read -r run; do rm -rf "$run/reports"; done
# Run records, the HTML and the gallery name files portably (<storage>/..., <rendered>/...,
# repository-relative) from the start: nothing to rewrite (tests/code/test_samples.py checks).
# The gallery again, without links to the deleted files.
$hp gallery >/dev/null
du -sh "$out"

# The README's screenshot of the gallery, when a Chromium is at hand.
if command -v chromium >/dev/null; then
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run \
    --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars \
    --window-size=1400,900 --screenshot=docs/img/gallery.png "file://$PWD/$out/index.html" 2>/dev/null
fi

# The narrated walkthrough of this run (rendered/samples/walkthrough.*), when its tools are here.
if command -v chromium >/dev/null && command -v espeak-ng >/dev/null && command -v ffmpeg >/dev/null; then
  .venv/bin/python -m scripts.walkthrough --samples "$out"
else
  echo "walkthrough not rendered: needs chromium, espeak-ng and ffmpeg (apt), then make walkthrough" >&2
fi
