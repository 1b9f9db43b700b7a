#!/usr/bin/env bash
# The main job end to end on the embedded default (a synthetic city): installs, then
# synth -> validate -> inspect -> plot. Outputs go to ${OUT:-out/demo}.
set -euo pipefail
cd "$(dirname "$0")"
bash ci/setup.sh
. .venv/bin/activate
OUT=${OUT:-out/demo}
mkdir -p "$OUT"
mobscale data synth --city demo --seed 0 --size 64x64 --days 7 --out "$OUT/city.zarr" --overwrite
mobscale data validate "$OUT/city.zarr"
mobscale data inspect "$OUT/city.zarr"
mobscale data plot "$OUT/city.zarr" --out "$OUT/plots"
echo "demo done: $OUT"
