#!/usr/bin/env bash
# Regenerate every ZoomDiff table in results/ (hours on a 2-core CPU; each step is cached under runs/tables).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
T="python jobs/zoomdiff_tables.py"
$T table1 --steps 1000
$T table6 --steps 1000
$T efficiency --steps 1000
$T sampler --steps 1000
$T table3 --steps 600
$T table4 --steps 600
$T table7 --steps 600
# real data: MobileBJ grid (NPDiff, 28x24, 1 week hourly; no urban context) and UoMo Nanjing (POI + users)
mkdir -p runs/tables/data
[ -d runs/tables/data/mobilebj.zarr ] || mobscale data import grid-npy ../shared/data/reference/npdiff_mobile/MobileBJ.npy --layout 28x24 --out runs/tables/data/mobilebj.zarr
[ -d runs/tables/data/uomo_nj.zarr ] || mobscale data import uomo ../shared/data/uomo_china_mobile/uomo_TrafficNJ_15min.npz --out runs/tables/data/uomo_nj.zarr
$T table1 --steps 1000 --data runs/tables/data/mobilebj.zarr --tag _mobilebj --set data.windows.patch=8 --set data.windows.split_by=time --set data.windows.test_fraction=0.3
$T table1 --steps 1000 --data runs/tables/data/uomo_nj.zarr --tag _uomo_nj --set data.windows.patch=4 --set sample.overlap=0 --set data.windows.split_by=time --set data.windows.test_fraction=0.3
