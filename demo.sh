#!/usr/bin/env bash
# The main job end to end on the embedded default (a synthetic city): installs, then
#   synth -> validate -> inspect -> plot -> train ZoomDiff -> sample the city -> evaluate against the real city.
# Outputs go to ${OUT:-out/demo}. Re-running resumes (training and sampling) and overwrites the rest.
set -euo pipefail
cd "$(dirname "$0")"
bash ci/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
OUT=${OUT:-out/demo}
mkdir -p "$OUT"
mobscale data synth --city demo --seed 0 --size 64x64 --days 7 --users 200 --out "$OUT/city.zarr" --overwrite
mobscale data validate "$OUT/city.zarr"
mobscale data inspect "$OUT/city.zarr"
mobscale data plot "$OUT/city.zarr" --out "$OUT/plots"
mobscale train --config configs/demo.yaml --out "$OUT/run" --engine local --set "data.store=$OUT/city.zarr"
mobscale sample --checkpoint "$OUT/run/export" --context "$OUT/city.zarr" --out "$OUT/generated.zarr" --overwrite
mobscale data validate "$OUT/generated.zarr"
mobscale eval --real "$OUT/city.zarr" --synthetic "$OUT/generated.zarr" --out "$OUT/eval" --overwrite
echo "demo done: $OUT (report: $OUT/eval/report.html)"
