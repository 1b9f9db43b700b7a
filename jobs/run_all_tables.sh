#!/usr/bin/env bash
# Regenerate every ZoomDiff table in results/ (hours on a 2-core CPU; each step is cached under runs/tables).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# every table below was sampled before 'core' tiles reconciled to the BS stage only became the sampling default
# (2026-12-06, results/README.md "Combining windows and levels"): ramp blending and top-down reconciliation to the
# BS and cell stage outputs reproduce them
T="python jobs/zoomdiff_tables.py --blend ramp --reconcile --reconcile-levels bs,cell"
# the tables made before the profile prior became the demo default (2026-12-06) and the daily harmonics (2026-11-25)
P="--zd-set diffusion.profile_prior=none --zd-set model.tpe_periodic=0"
$T table1 --steps 1000 $P
$T table6 --steps 1000 $P
$T efficiency --steps 1000 $P
$T sampler --steps 1000 $P
$T table3 --steps 600 $P
$T table4 --steps 600 $P
$T table7 --steps 600 $P
# real data: MobileBJ grid (NPDiff, 28x24, 1 week hourly; no urban context) and UoMo Nanjing (POI + users)
mkdir -p runs/tables/data
[ -d runs/tables/data/mobilebj.zarr ] || mobscale data import grid-npy ../shared/data/reference/npdiff_mobile/MobileBJ.npy --layout 28x24 --out runs/tables/data/mobilebj.zarr
[ -d runs/tables/data/uomo_nj.zarr ] || mobscale data import uomo ../shared/data/uomo_china_mobile/uomo_TrafficNJ_15min.npz --out runs/tables/data/uomo_nj.zarr
$T table1 --steps 1000 --data runs/tables/data/mobilebj.zarr --tag _mobilebj --set data.windows.patch=8 --set data.windows.split_by=time --set data.windows.test_fraction=0.3 $P
$T table1 --steps 1000 --data runs/tables/data/uomo_nj.zarr --tag _uomo_nj --set data.windows.patch=4 --set sample.overlap=0 --set data.windows.split_by=time --set data.windows.test_fraction=0.3 $P
# 2026-12-06: several samples per model (ensemble CRPS, sample-mean MAE, oracle rows) and the profile prior
$T table1 --steps 1000 --models ZoomDiff --samples 4 --tag _samples4 --zd-set diffusion.profile_prior=none
$T table1 --steps 1000 --models ZoomDiff --samples 4 --tag _profile --zd-set diffusion.profile_prior=context_profile
$T table6 --steps 1000 --tag _profile --zd-set diffusion.profile_prior=context_profile
U="--data runs/tables/data/uomo_nj.zarr --set data.windows.patch=4 --set sample.overlap=0 --set data.windows.split_by=time --set data.windows.test_fraction=0.3"
$T table1 --steps 1000 $U --models ZoomDiff --samples 4 --tag _uomo_nj_periodic --zd-set diffusion.profile_prior=none
for p in context_profile:ctx historical:hist; do
  $T table1 --steps 1000 $U --models ZoomDiff --samples 4 --tag _uomo_nj_profile_${p#*:} --zd-set diffusion.profile_prior=${p%:*}
  $T table1 --steps 1000 $U --models ZoomDiff --samples 4 --tag _uomo_nj_stage0_${p#*:} --zd-set diffusion.profile_prior=${p%:*} --zd-set diffusion.profile_split=false
  $T table1 --steps 5000 $U --models ZoomDiff --samples 4 --tag _uomo_nj_profile_${p#*:}_5k --zd-set diffusion.profile_prior=${p%:*}
done
$T table1 --steps 1000 $U --models ZoomDiff --samples 4 --steps-per-stage 20 --tag _uomo_nj_profile_hist_sps20 --zd-set diffusion.profile_prior=historical
for f in mix add; do
  $T table1 --steps 1000 $U --models ZoomDiff --samples 4 --tag _uomo_nj_profile_hist_$f --zd-set diffusion.profile_prior=historical --zd-set diffusion.fusion=$f
done
$T table1 --steps 10000 $U --models ZoomDiff --samples 4 --tag _uomo_nj_10k --zd-set diffusion.profile_prior=none
# 3000 training steps (results/zoomdiff_table1_profile_3k.md), then other samplings of that model
$T table1 --steps 3000 --models ZoomDiff --samples 4 --tag _profile_3k --zd-set diffusion.profile_prior=context_profile
[ -e runs/tables/table1_profile_3k_core ] || ln -s table1_profile_3k runs/tables/table1_profile_3k_core
python jobs/zoomdiff_tables.py table1 --steps 3000 --models ZoomDiff --samples 4 --tag _profile_3k_core --zd-set diffusion.profile_prior=context_profile --blend core --no-reconcile
# 2026-12-07: Tables III, IV and VII again with the current defaults (harmonics, profile prior, core tiles reconciled
# to the BS stage); Table VII (DiT-style added in a later session); MobileBJ (no population:
# the historical prior stands in for the context profile); Table IV trained longer
python jobs/zoomdiff_tables.py table3 --steps 600 --tag _defaults
python jobs/zoomdiff_tables.py table4 --steps 600 --tag _defaults
python jobs/zoomdiff_tables.py table7 --steps 600 --tag _defaults
M="--data runs/tables/data/mobilebj.zarr --set data.windows.patch=8 --set data.windows.split_by=time --set data.windows.test_fraction=0.3"
python jobs/zoomdiff_tables.py table1 --steps 1000 $M --tag _mobilebj_1k --zd-set diffusion.profile_prior=none
python jobs/zoomdiff_tables.py table1 --steps 1000 $M --tag _mobilebj_hist --models ZoomDiff --samples 4 --zd-set diffusion.profile_prior=historical
[ -e runs/tables/table1_mobilebj_hist_sps20 ] || ln -s table1_mobilebj_hist runs/tables/table1_mobilebj_hist_sps20
python jobs/zoomdiff_tables.py table1 --steps 1000 $M --tag _mobilebj_hist_sps20 --models ZoomDiff --samples 4 --steps-per-stage 20 --zd-set diffusion.profile_prior=historical
python jobs/zoomdiff_tables.py table1 --steps 3000 $M --tag _mobilebj_hist_3k --models ZoomDiff --samples 4 --zd-set diffusion.profile_prior=historical
python jobs/zoomdiff_tables.py table4 --steps 1500 --tag _defaults_1500
# 2026-12-07 (later session): refinement keeps the given BS traffic hour by hour (`refine --anchor hourly`, the
# default since then; Table VI made before it scored the zero-shot row with daily anchoring, which this table shows
# as the "anchored to daily BS totals only" row of the same samples)
python jobs/zoomdiff_tables.py table6 --steps 1000 --samples 2 --tag _hourly
# DiT-style trained as long as the 3000-step ZoomDiff (its 600-1000-step samples are unusable)
python jobs/zoomdiff_tables.py table1 --steps 3000 --models DiT-style --tag _dit3k
