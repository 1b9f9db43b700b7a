"""Reproduce MSTDiff Tables I (traffic) and II (trajectories) on our data, with baselines and ablations.

Synthetic city (the run config's ``data``; users with home/work anchors + EPR exploration, bursty traffic):
every variant below is trained with the single-process engine (``mobscale.train.loop.train_local``), generates
as many users as there are held-out test users (x ``--oversample``), and is scored against those held-out users:

  Table I (traffic, ``mobscale.eval.users.user_traffic_metrics``): JSD of per-user half-hour volumes, JSD of
  first differences along TIME, RMSE of the daily periodic component of the mean user. Bins shared by real and
  generated data, symlog scale, divergence in nats (the "clean" convention; the public code's conventions are
  described in shared/notes/reference-implementations.md).
  Table II (trajectories, ``mobscale.eval.trajectories.trajectory_metrics``, clean mode on user-days of 48 slots):
  Distance, Radius, Duration, DailyLoc, G-rank, I-rank JSDs.

Rows: MSTDiff; the paper's ablation "w/o Traj" (traffic only) and trajectory-only; the fixes of the public code
undone one at a time (reference posterior, probability-row input, fine-tuned VQ-VAE, no CE term, band-ordered
output, sampled last step: the latter reuses the full model); our two traffic-encoding choices undone (zeros at
log1p = 0 instead of ``model.users.zero_gap`` below, no cap of the clean estimate at the training maximum:
sampling only); and all together ("public code", which has neither of ours and also uses the raw 0.01 -> 0.1
rate schedule without teleport); options of ours that are not in the paper, one at a time (``copy_gate``,
``likelihood``, ``step_layers``; ``temp1`` / ``temp05``: the sampling temperature set to 1 / 0.5, sampling only, for
configs that set another, e.g. configs/mstdiff-3k.yaml); baselines: the CSDI-style traffic baseline of the paper's
Table I (variant ``csdi``: ``model.kind=csdi_users`` from ``--csdi-config``, default configs/csdi-users-demo.yaml;
a single-resolution DDPM on the normalised half-hourly series, CSDI's residual network with its time
transformer, 50 steps, quadratic betas 1e-4 -> 0.5; the same users block, hence the same held-out users, which
is checked, and the same log1p + standardisation fitted on the training users; same training steps), first-order
Markov chain and EPR (trajectories), per-slot empirical resampling of the training users (traffic: right
marginals, no temporal correlation); and "train users" (the training users themselves scored against the test
users: the sampling-noise floor of each metric). ``--set`` overrides reach the CSDI run too, except ``model.*``
and ``diffusion.*`` keys (MSTDiff's), ``model.users.*`` excepted (both models share that block).

Real trajectories (``--geolife``, default ../shared/data/trajectories/movesim_geolife when present): MoveSim's
discretised GeoLife user-days (48 half-hours), ``--geolife-rows`` rows of real.data and as many of test.data drawn
with a fixed seed, written into a users-only city store (locations = the ids those rows visit, at their gps
lat/lon; no KG, so neighbours are geographic) and split in half by the task's seeded user split; trajectory-only
MSTDiff and the trajectory ablations named by ``--geolife-variants`` (default: exact and reference posterior) vs
Markov and EPR, scored in clean and MoveSim modes. The state space is every visited location (thousands for a few
hundred rows): each step costs O(B T N^2), so keep the rows modest on CPU. These rows keep GeoLife's trips across
China (MoveSim's ids, no region filter).

Real trajectories mapped onto base stations (``--traj-store STORE``, repeatable): a users-only store written by
``mobscale data import movesim|foursquare`` (user-days inside one city region, each location mapped to its
serving BS: a 500 m pseudo-BS grid or ``--bs-coords``); the same trajectory-only rows on ``--traj-store-rows``
user-days of it (the first ones of the task's seeded shuffle, half held out). ``--no-synthetic`` skips the
synthetic city (real-trajectory tables only).

Usage::

    python jobs/mstdiff_tables.py --out OUT [--config configs/mstdiff-demo.yaml] [--steps 1500] [--set k=v ...]
           [--variants full,wo_traj,...,csdi] [--csdi-config configs/csdi-users-demo.yaml]
           [--geolife PATH | --no-geolife] [--geolife-rows 400] [--geolife-variants traj_only,ref_posterior,no_ce,...]
           [--traj-store STORE.zarr ...] [--traj-store-rows 800] [--no-synthetic]

The tables in results/mstdiff_tables.md were made with ``OMP_NUM_THREADS=1 python jobs/mstdiff_tables.py --out OUT
--oversample 4`` (otherwise every default: the synthetic demo city, 400 + 400 GeoLife rows; 58 min on 2 CPU cores
shared with other jobs). Oversampling matters for the periodic RMSE: the synthetic users' traffic is heavy tailed
(one training half-hour holds 80 000 MB, the 99.99% quantile is 1 061 MB), so the mean user of few generated users
is noisy.

Writes OUT/tables.md and OUT/tables.json (numbers, settings, timings); runs live in OUT/runs/<variant>.
Re-running resumes finished runs from their exports.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from mobscale.config import load
from mobscale.errors import ConfigError
from mobscale.data import schema
from mobscale.data.store import is_store, open_city, write_city
from mobscale.eval.trajectories import TRAJECTORY_METRICS, read_gps, read_movesim, split_days, trajectory_metrics
from mobscale.eval.users import USER_TRAFFIC_METRICS, user_traffic_metrics
from mobscale.log import get_logger, setup_logging
from mobscale.model.mobility_baselines import EPRMobility, MarkovChainMobility
from mobscale.sample.users import sample_users
from mobscale.train.loop import train_local
from mobscale.train.mstdiff_task import CSDI_USERS_DATA_FILE, DATA_FILE, MSTDiffTask, bs_coords_km

log = get_logger("jobs.mstdiff_tables")

REPO = Path(__file__).resolve().parents[1]
GEOLIFE = REPO / ".." / "shared" / "data" / "trajectories" / "movesim_geolife"
CSDI_CONFIG = REPO / "configs" / "csdi-users-demo.yaml"

#: variant -> config overrides (dotted keys)
VARIANTS: dict[str, dict] = {
    "full": {},
    "wo_traj": {"model.use_trajectory": False},
    "traj_only": {"model.use_traffic": False},
    "ref_posterior": {"diffusion.posterior": "reference"},
    "ref_input": {"diffusion.trajectory_input": "probs"},
    "finetuned_vq": {"model.freeze_vqvae": False},
    "no_ce": {"model.lambda_ce": 0.0},
    "band_order": {"model.output_order": "band"},
    "sampled_last": {"diffusion.trajectory_last_step": "sample"},
    "no_zero_gap": {"model.users.zero_gap": 0.0},
    "no_x0_cap": {"diffusion.traffic_clip_x0": "none"},
    "public_code": {
        "model.users.zero_gap": 0.0, "diffusion.traffic_clip_x0": "none",
        "diffusion.trajectory_last_step": "sample",
        "diffusion.posterior": "reference", "diffusion.trajectory_input": "probs", "model.freeze_vqvae": False,
        "model.lambda_ce": 0.0, "model.output_order": "band", "diffusion.rate_scale": 1.0, "diffusion.teleport": 0.0,
    },
    # not a defect of the public code: an option of ours, measured (results/README.md), off by default
    "copy_gate": {"model.copy_gate": True},
    "likelihood": {"diffusion.trajectory_likelihood": True},
    "step_layers": {"model.step_layers": 1},
    "temp1": {"diffusion.trajectory_temperature": 1.0},
    "temp05": {"diffusion.trajectory_temperature": 0.5},
}
LABELS = {
    "full": "MSTDiff", "wo_traj": "MSTDiff w/o Traj (traffic only)", "traj_only": "MSTDiff trajectory only",
    "ref_posterior": "+ reference posterior", "ref_input": "+ probability-row input (leak)", "finetuned_vq": "+ fine-tuned VQ-VAE",
    "no_ce": "+ no CE term", "band_order": "+ band-ordered output", "sampled_last": "+ sampled last step",
    "copy_gate": "+ copy gate on the trajectory head (not in the paper)",
    "likelihood": "+ q(l_t | l0) in p(l0 | l_t) (D3PM parameterisation; not in the paper)",
    "step_layers": "+ one attention block at single-step resolution (not in the paper)",
    "temp1": "sampling temperature 1 on p(l0 | l_t) (the model's own distribution)",
    "temp05": "sampling temperature 0.5 on p(l0 | l_t) (not in the paper)",
    "no_zero_gap": "+ zeros at log1p = 0 (no zero gap)", "no_x0_cap": "+ no cap of the clean estimate",
    "public_code": "public code (all of the above)",
    "markov": "Markov chain", "epr": "EPR", "slot_resample": "per-slot empirical resampling", "train_users": "train users (noise floor)",
    "csdi": "CSDI-style (single resolution, DDPM on the half-hourly series)",
}
#: variants that are other model kinds, with their own config (not MSTDiff overrides)
BASELINE_VARIANTS = ("csdi",)


def _sets(d: dict) -> list[str]:
    """{"model.lambda_ce": 0.0} -> ["model.lambda_ce=0.0"] (JSON values are valid YAML)."""
    return [f"{k}={json.dumps(v)}" for k, v in d.items()]


#: variants that change only how samples are drawn: they reuse this variant's trained model
SAMPLING_ONLY = {"sampled_last": "full", "no_x0_cap": "full", "temp1": "full", "temp05": "full"}
#: the variants that make sense without traffic (GeoLife has trajectories only): the trajectory-only model and the
#: trajectory branch's ablations / options on top of it
GEOLIFE_VARIANTS = ("traj_only", "ref_posterior", "ref_input", "no_ce", "sampled_last", "public_code", "copy_gate",
                    "likelihood", "step_layers", "temp1", "temp05")


def run_variant(config: Path, sets: list[str], name: str, over: dict, runs: Path):
    """Train one variant (reusing a finished export and, across variants, identical prepared data).
    Returns (export path, config, seconds)."""
    cfg = load(config, sets + _sets(over))
    if name in SAMPLING_ONLY:  # train (or reuse) the base variant; the override applies at sampling time only
        export, _, dt = run_variant(config, sets, SAMPLING_ONLY[name], VARIANTS[SAMPLING_ONLY[name]], runs)
        return export, cfg, dt
    run = runs / name
    t0 = time.perf_counter()
    if not (run / "export" / "model.pt").exists():
        run.mkdir(parents=True, exist_ok=True)
        fp = MSTDiffTask(cfg).fingerprint()
        for other in sorted(runs.iterdir()):
            src = other / DATA_FILE
            if other != run and src.exists() and not (run / DATA_FILE).exists():
                meta = json.loads(torch.load(src, weights_only=True)["meta_json"])
                if meta.get("fingerprint") == fp and meta.get("store") == str(Path(cfg.data.store).resolve()):
                    shutil.copy2(src, run / DATA_FILE)  # same data settings: skip TuckER + VQ-VAE pretraining
        train_local(cfg, run)
    return run / "export", cfg, time.perf_counter() - t0


def csdi_sets(sets: list[str]) -> list[str]:
    """The ``--set`` overrides that also apply to the CSDI run: all but MSTDiff's model.* / diffusion.* keys
    (``model.users.*`` is shared)."""
    def applies(kv: str) -> bool:
        key = kv.split("=", 1)[0].strip()
        return key.startswith("model.users.") or not key.startswith(("model.", "diffusion."))

    return [kv for kv in sets if applies(kv)]


def run_csdi(config: Path, sets: list[str], runs: Path):
    """Train (or reuse) the CSDI-style users baseline. Returns (export path, prepared data, seconds)."""
    cfg = load(config, csdi_sets(sets))
    if cfg.model.kind != "csdi_users":
        raise ConfigError(f"--csdi-config {config}: model.kind={cfg.model.kind}, expected csdi_users")
    run = runs / "csdi"
    t0 = time.perf_counter()
    if not (run / "export" / "model.pt").exists():
        train_local(cfg, run)
    return run / "export", torch.load(run / CSDI_USERS_DATA_FILE, weights_only=True), time.perf_counter() - t0


def traffic_row(real: np.ndarray, gen: np.ndarray) -> dict:
    vals, _ = user_traffic_metrics(xr.DataArray(real, dims=("user", "time")), xr.DataArray(gen, dims=("user", "time")),
                                   jsd="clean", bin_scale="symlog", progress=False)
    return {m: float(v) for m, v in zip(USER_TRAFFIC_METRICS, vals[0])}


def trajectory_row(real: np.ndarray, gen: np.ndarray, coords: np.ndarray, mode: str = "clean") -> dict:
    return trajectory_metrics(split_days(real, 48), split_days(gen, 48), coords, mode)


def slot_resample(train: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Per time step, volumes drawn independently from the training users at that step."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, train.shape[0], size=(n, train.shape[1]))
    return train[idx, np.arange(train.shape[1])[None]]


def markdown(title: str, rows: dict[str, dict], metrics: tuple[str, ...]) -> str:
    out = [f"### {title}", "", "| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, r in rows.items():
        out.append(f"| {LABELS.get(name, name)} | " + " | ".join(f"{r[m]:.4f}" if m in r else "-" for m in metrics) + " |")
    return "\n".join(out) + "\n"


def synthetic_tables(args, out: Path) -> dict:
    base = load(args.config, args.set)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    # the city once, shared by every variant
    store = Path(base.data.store) if base.data.store else out / "city.zarr"
    if not is_store(store):
        from mobscale.data.synthetic import synth_city

        synth_city(base.data.synth, store)
    sets = list(args.set) + [f"data.store={store}"] + ([f"train.steps={args.steps}"] if args.steps else [])
    steps = load(args.config, sets).train.steps
    results: dict = {"traffic": {}, "trajectories": {}, "timing_s": {}, "settings": {"config": str(args.config), "steps": steps, "store": str(store)}}
    results["settings"]["csdi_config"] = str(args.csdi_config) if "csdi" in args.variants else None
    real: dict = {}
    for name in [v for v in args.variants if v in VARIANTS]:
        export, cfg, dt = run_variant(args.config, sets, name, VARIANTS[name], runs)
        prep = torch.load(export.parent / DATA_FILE, weights_only=True)
        if "traffic_test" in prep and "traffic" not in real:
            real["traffic"] = prep["traffic_test"].numpy()
            real["traffic_train"] = _train_volumes(prep, cfg)
        if "trajectory_test" in prep and "trajectory" not in real:
            real["trajectory"] = prep["trajectory_test"].numpy()
            real["trajectory_train"] = prep["vocab"].numpy()[prep["l_train"].numpy()]
        n_test = (real.get("traffic") if "traffic" in real else real["trajectory"]).shape[0]
        t0 = time.perf_counter()
        gen = sample_users(export, n_test * args.oversample, seed=args.seed, progress=False, last_step=cfg.diffusion.trajectory_last_step,
                           traffic_clip=cfg.diffusion.traffic_clip_x0 if cfg.model.use_traffic else None,
                           temperature=cfg.diffusion.trajectory_temperature if cfg.model.use_trajectory else None)
        results["timing_s"][name] = {"train": round(dt, 1), "sample": round(time.perf_counter() - t0, 1)}
        if "traffic" in gen:
            results["traffic"][name] = traffic_row(real["traffic"], gen["traffic"].values)
        if "trajectory" in gen:
            results["trajectories"][name] = trajectory_row(real["trajectory"], gen["trajectory"].values, _latlon(store))
        log.info("%s: %s", name, {k: results[k].get(name) for k in ("traffic", "trajectories")})
    # the CSDI-style traffic baseline: same users block, so the same held-out users (checked)
    if "csdi" in args.variants:
        export, prep, dt = run_csdi(args.csdi_config, sets, runs)
        results["settings"]["csdi_steps"] = load(args.csdi_config, csdi_sets(sets)).train.steps
        if "traffic" not in real:
            real["traffic"] = prep["traffic_test"].numpy()
            real["traffic_train"] = _train_volumes(prep, None)
        elif not np.array_equal(prep["traffic_test"].numpy(), real["traffic"]):
            raise ConfigError(f"{args.csdi_config}: its held-out users differ from MSTDiff's; use the same model.users block in both configs")
        t0 = time.perf_counter()
        gen = sample_users(export, real["traffic"].shape[0] * args.oversample, seed=args.seed, progress=False)
        results["timing_s"]["csdi"] = {"train": round(dt, 1), "sample": round(time.perf_counter() - t0, 1)}
        results["traffic"]["csdi"] = traffic_row(real["traffic"], gen["traffic"].values)
        log.info("csdi: %s", results["traffic"]["csdi"])
    # baselines, fitted on the same training users
    coords = _latlon(store)
    if "trajectory" in real:
        tr = real["trajectory_train"]
        n, T = real["trajectory"].shape[0] * args.oversample, tr.shape[1]
        root = open_city(store)
        results["trajectories"]["markov"] = trajectory_row(real["trajectory"], MarkovChainMobility().fit(tr, root.sizes["bs"]).sample(n, T, args.seed), coords)
        results["trajectories"]["epr"] = trajectory_row(real["trajectory"], EPRMobility().fit(tr, bs_coords_km(root)).sample(n, T, args.seed), coords)
        results["trajectories"]["train_users"] = trajectory_row(real["trajectory"], tr, coords)
    if "traffic" in real:
        n = real["traffic"].shape[0] * args.oversample
        results["traffic"]["slot_resample"] = traffic_row(real["traffic"], slot_resample(real["traffic_train"], n, args.seed))
        results["traffic"]["train_users"] = traffic_row(real["traffic"], real["traffic_train"])
    return results


def _latlon(store: Path) -> np.ndarray:
    root = open_city(store)
    return np.stack([np.asarray(root["bs_lat"].values, np.float64), np.asarray(root["bs_lon"].values, np.float64)], axis=1)


def _train_volumes(prep: dict, cfg) -> np.ndarray:
    """Training users' volumes: as read (``traffic_train``), or -- prepared data written before it was kept --
    inverted from the normalised series (CSDI: ``x_train``) or wavelet coefficients (MSTDiff: ``w_train``, with
    ``cfg``'s layout), where zero volumes come back as float32 round-off and the transform's zero threshold
    snaps them back."""
    from mobscale.data.wavelets import BandLayout, TrafficTransform, idwt

    if "traffic_train" in prep:
        return prep["traffic_train"].numpy().astype(np.float64)

    tf = TrafficTransform.from_state({k: (v.numpy() if torch.is_tensor(v) else v) for k, v in prep["traffic_state"].items()})
    if "x_train" in prep:
        z = prep["x_train"].numpy().astype(np.float64)
    else:
        m = cfg.model
        z = idwt(prep["w_train"].numpy().astype(np.float64), BandLayout(m.users.seq_len, m.wavelet, m.wavelet_level))
    return tf.inverse(z, np.random.default_rng(0))


def geolife_store(src: Path, out: Path, rows: int, seed: int) -> Path:
    """Users-only store of ``rows`` user-days from real.data + ``rows`` from test.data (drawn with ``seed``),
    locations = the ids they visit (compact 0..n-1) at their gps lat/lon."""
    rng = np.random.default_rng(seed)
    real = read_movesim(src / "real.data")
    test = read_movesim(src / "test.data")
    both = np.concatenate([real[rng.choice(real.shape[0], size=min(rows, real.shape[0]), replace=False)],
                           test[rng.choice(test.shape[0], size=min(rows, test.shape[0]), replace=False)]])
    gps = read_gps(src / "gps")  # (n, 2) lat, lon
    ids = np.unique(both)
    compact = np.full(gps.shape[0], -1, dtype=np.int64)
    compact[ids] = np.arange(ids.size)
    lat, lon = gps[ids, 0], gps[ids, 1]
    lat0, lon0 = float(np.median(lat)), float(np.median(lon))
    y, x = schema.latlon_to_metres(lat, lon, lat0, lon0)
    store = out / "geolife.zarr"
    if not is_store(store):
        root = xr.Dataset(
            coords={"bs": np.arange(ids.size, dtype=np.int32), "bs_x": ("bs", x), "bs_y": ("bs", y), "bs_lat": ("bs", lat), "bs_lon": ("bs", lon)},
            attrs={"mobscale_schema": schema.SCHEMA_VERSION, "city": "beijing-geolife", "crs": schema.local_crs(lat0, lon0),
                   "pixel_size_m": schema.PIXEL_SIZE_M, "time_step_minutes": 30, "kind": "real", "levels_present": "[]",
                   "provenance": f"MoveSim GeoLife user-days ({src}), {both.shape[0]} rows drawn with seed {seed}"},
        )
        users = xr.Dataset(
            {"trajectory": (("user", "time"), compact[both].astype(np.int32))},
            coords={"user": np.arange(both.shape[0], dtype=np.int32), "time": pd.date_range("2008-10-23", periods=48, freq="30min").values},
            attrs={"time_step_minutes": 30, "provenance": "MoveSim GeoLife rows (one user-day each)"},
        )
        write_city(root, store, users=users)
    return store


def geolife_tables(args, out: Path) -> dict:
    """Trajectory-only MSTDiff and its trajectory ablations (``--geolife-variants``) vs Markov and EPR on GeoLife
    user-days (MoveSim's locations as the states); the task's random user split (half of the rows) is the test set."""
    store = geolife_store(args.geolife, out, args.geolife_rows, args.seed)
    return trajectory_store_tables(args, store, out / "geolife_runs")


def trajectory_store_tables(args, store: Path, runs: Path, max_users: int | None = None) -> dict:
    """Trajectory-only MSTDiff and ``args.geolife_variants`` on a users-only store of user-days (48 half-hours)
    vs Markov and EPR fitted on the same training rows; the task's user split (half of at most ``max_users``
    rows) is the test set."""
    coords = _latlon(store)
    sets = list(args.set) + [f"data.store={store}", "model.use_traffic=false", "model.users.seq_len=48", "model.users.test_fraction=0.5"]
    sets += [f"model.users.max_users={max_users}"] if max_users else []
    sets += [f"train.steps={args.steps}"] if args.steps else []
    runs.mkdir(parents=True, exist_ok=True)
    res: dict = {"clean": {}, "movesim": {}, "timing_s": {}, "settings": {"locations": int(coords.shape[0]), "steps": load(args.config, sets).train.steps}}
    for name in args.geolife_variants:
        if name in SAMPLING_ONLY:  # sampling-time settings reuse the trajectory-only run (the "full" model here)
            export, _, dt = run_variant(args.config, sets, "traj_only", {}, runs)
            cfg = load(args.config, sets + _sets(VARIANTS[name]))
        else:
            export, cfg, dt = run_variant(args.config, sets, name, VARIANTS[name], runs)
        prep = torch.load(export.parent / DATA_FILE, weights_only=True)
        real_test = prep["trajectory_test"].numpy()
        train_rows = prep["vocab"].numpy()[prep["l_train"].numpy()]
        t0 = time.perf_counter()
        gen = sample_users(export, real_test.shape[0], seed=args.seed, progress=False, last_step=cfg.diffusion.trajectory_last_step,
                           temperature=cfg.diffusion.trajectory_temperature)["trajectory"].values
        res["timing_s"][name] = {"train": round(dt, 1), "sample": round(time.perf_counter() - t0, 1)}
        for mode in ("clean", "movesim"):
            res[mode][name] = trajectory_metrics(real_test, gen, coords, mode)
    n = real_test.shape[0]
    res["settings"].update(rows=int(n + train_rows.shape[0]), test_rows=int(n), visited_bs=int(prep["vocab"].numel()))
    base_gen = {
        "markov": MarkovChainMobility().fit(train_rows, coords.shape[0]).sample(n, 48, args.seed),
        "epr": EPRMobility().fit(train_rows, bs_coords_km(open_city(store))).sample(n, 48, args.seed),
        "train_users": train_rows,
    }
    for mode in ("clean", "movesim"):
        for k, g in base_gen.items():
            res[mode][k] = trajectory_metrics(real_test, g, coords, mode)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "mstdiff-demo.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides for every variant")
    ap.add_argument("--steps", type=int, default=None, help="training steps per variant (default: the config's)")
    known = (*VARIANTS, *BASELINE_VARIANTS)
    ap.add_argument("--variants", default=",".join(known), help=f"comma-separated subset of {','.join(known)}")
    ap.add_argument("--csdi-config", type=Path, default=CSDI_CONFIG, help="run config of the CSDI-style users baseline (variant csdi)")
    ap.add_argument("--oversample", type=int, default=1, help="generated users per held-out test user")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--geolife", type=Path, default=GEOLIFE)
    ap.add_argument("--no-geolife", action="store_true")
    ap.add_argument("--no-synthetic", action="store_true", help="no synthetic-city tables (--variants is then ignored)")
    ap.add_argument("--traj-store", type=Path, action="append", default=[],
                    help="a users-only store of imported user-days (mobscale data import movesim|foursquare: real "
                         "trajectories mapped onto base stations): one more trajectory table, same rows as GeoLife's")
    ap.add_argument("--traj-store-rows", type=int, default=800, help="user-days used from each --traj-store (half held out)")
    ap.add_argument("--geolife-rows", type=int, default=400)
    ap.add_argument("--geolife-variants", default="traj_only,ref_posterior",
                    help="MSTDiff rows of the GeoLife table: trajectory only (traj_only) and the trajectory ablations on top "
                         f"of it, a subset of {','.join(GEOLIFE_VARIANTS)}")
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        ap.error(f"unknown variants {unknown} (known: {', '.join(known)})")
    args.geolife_variants = [v.strip() for v in args.geolife_variants.split(",") if v.strip()]
    if not args.geolife_variants or set(args.geolife_variants) - set(GEOLIFE_VARIANTS):
        ap.error(f"--geolife-variants: a subset of {','.join(GEOLIFE_VARIANTS)}, got {args.geolife_variants}")
    for st in args.traj_store:
        if not is_store(st):
            ap.error(f"--traj-store {st}: not a city store (import one with `mobscale data import movesim|foursquare ... --out STORE`)")
    if args.no_synthetic and args.no_geolife and not args.traj_store:
        ap.error("--no-synthetic with --no-geolife leaves no table to make")
    if args.no_synthetic and not args.no_geolife and not args.traj_store and not (args.geolife / "real.data").exists():
        ap.error(f"--no-synthetic: no GeoLife data at {args.geolife} (expected real.data, test.data and gps in MoveSim's format)")
    setup_logging()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = {} if args.no_synthetic else {"synthetic": synthetic_tables(args, args.out)}
    if not args.no_geolife and (args.geolife / "real.data").exists():
        res["geolife"] = geolife_tables(args, args.out)
    elif not args.no_geolife:
        log.warning("%s not found: skipping the real-trajectory table", args.geolife)
    for st in args.traj_store:
        res.setdefault("traj_stores", {})[str(st)] = trajectory_store_tables(args, st, args.out / "store_runs" / st.name.removesuffix(".zarr"),
                                                                            max_users=args.traj_store_rows)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    overrides = f"{' with --set ' + ', '.join(args.set) if args.set else ''}"
    md = ["# MSTDiff tables on mobscale data", ""]
    if "synthetic" in res:
        st = res["synthetic"]["settings"]
        csdi = (f" CSDI-style row: {st['csdi_config']}, {st['csdi_steps']} training steps, same held-out users."
                if st.get("csdi_steps") is not None else "")
        md += [f"Config {args.config}{overrides}, {st['steps']} training steps per variant, seed {args.seed}, {args.oversample} generated "
               f"user(s) per held-out user on the synthetic city.{csdi} "
               "JSD = Jensen-Shannon divergence in nats on bins shared by real and generated data; lower is better.", "",
               markdown("Table I: traffic (synthetic city, held-out users)", res["synthetic"]["traffic"], USER_TRAFFIC_METRICS),
               markdown("Table II: trajectories (synthetic city, held-out users, clean mode)", res["synthetic"]["trajectories"], TRAJECTORY_METRICS)]
    else:
        first = res["geolife"] if "geolife" in res else next(iter(res["traj_stores"].values()))
        md += [f"Config {args.config}{overrides}, {first['settings']['steps']} training steps per variant, seed {args.seed}, "
               "real trajectories only (--no-synthetic). JSD = Jensen-Shannon divergence in nats on bins shared by real and generated "
               "data; lower is better.", ""]
    if "geolife" in res:
        g = res["geolife"]
        md.append(markdown(f"Table II on GeoLife ({g['settings']['rows']} user-days split in half, {g['settings']['locations']} locations, clean mode)", g["clean"], TRAJECTORY_METRICS))
        md.append(markdown("Table II on GeoLife (MoveSim mode)", g["movesim"], TRAJECTORY_METRICS))
    for st, g in res.get("traj_stores", {}).items():
        stt = g["settings"]
        md.append(markdown(f"Table II on {st} ({stt['rows']} user-days split in half, {stt['visited_bs']} base stations visited by the "
                           f"training rows of {stt['locations']}, clean mode)", g["clean"], TRAJECTORY_METRICS))
        md.append(markdown(f"Table II on {st} (MoveSim mode)", g["movesim"], TRAJECTORY_METRICS))
    md.append(f"Wall time {res['wall_s']} s. Per-variant timings in tables.json.\n")
    (args.out / "tables.md").write_text("\n".join(md))
    (args.out / "tables.json").write_text(json.dumps(res, indent=2, default=float))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
