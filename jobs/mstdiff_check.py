"""Print what a trained MSTDiff (or CSDI-style users) run generates next to its held-out and training users.

Traffic: the share of zero half-hours, upper quantiles, the mean volume and how much of it the ten largest
half-hours hold (the figures behind ``model.users.zero_gap`` and ``diffusion.traffic_clip_x0``). Trajectories
(MSTDiff with a trajectory branch), also for a first-order Markov chain fitted on the training users: moves per
user-week, distinct base stations per user-week, quantiles of the move distance (km), the mean stay (slots) and
the share of one-slot stays -- plain figures that say *why* a trajectory JSD is high (see results/README.md,
"MSTDiff"). ``--probe``: training users corrupted to diffusion step s and denoised once; how often the predicted
clean location is right, for long stays and for one-slot stays (transits), and for transits whose own token is
still in the input. Usage::

    python jobs/mstdiff_check.py RUN [--users N] [--seed S] [--traffic-clip none|max] [--last-step mode|sample] [--temperature T] [--probe]

RUN is a training folder (its export, prepared data and config); N generated users (default: as many as held out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mobscale.config import load  # noqa: E402
from mobscale.data.store import open_city  # noqa: E402
from mobscale.eval.trajectories import distinct_locations, haversine_km, run_lengths  # noqa: E402
from mobscale.log import setup_logging  # noqa: E402
from mobscale.model.mobility_baselines import MarkovChainMobility  # noqa: E402
from mobscale.sample.users import load_mstdiff, sample_users  # noqa: E402
from mobscale.train.mstdiff_task import CSDI_USERS_DATA_FILE, DATA_FILE  # noqa: E402
from mstdiff_tables import _latlon, _train_volumes  # noqa: E402

QUANTILES = (0.5, 0.9, 0.99, 0.999, 0.9999)
FAR_KM = 50.0  # a move or a slot this far from the day's median position leaves the city


def summary(m: np.ndarray) -> dict:
    flat = np.sort(m.ravel())
    return {"users": int(m.shape[0]), "zero_share": round(float(np.mean(m == 0)), 4),
            **{f"q{q}": round(float(v), 2) for q, v in zip(QUANTILES, np.quantile(m, QUANTILES))},
            "mean": round(float(m.mean()), 3), "top10_share": round(float(flat[-10:].sum() / max(flat.sum(), 1e-12)), 4)}


def mobility_summary(traj: np.ndarray, latlon: np.ndarray, far_km: float = FAR_KM) -> dict:
    """traj (users, T) base-station ids, latlon (B, 2) degrees -> moves, distinct places, move km, stays, and the
    jumps between cities: ``far_moves`` = share of moves longer than ``far_km``, ``away_days`` = share of users
    with a slot farther than ``far_km`` from their own median position (results/README.md, "where the jumps
    between cities come from")."""
    moved = traj[:, 1:] != traj[:, :-1]
    lat, lon = latlon[traj, 0], latlon[traj, 1]
    km = haversine_km(lat[:, :-1], lon[:, :-1], lat[:, 1:], lon[:, 1:])[moved]
    q = np.quantile(km, (0.1, 0.5, 0.9)) if km.size else np.full(3, np.nan)
    stays = run_lengths(traj)
    home = haversine_km(lat, lon, np.median(lat, 1, keepdims=True), np.median(lon, 1, keepdims=True))
    return {"users": int(traj.shape[0]), "moves": round(float(moved.sum(1).mean()), 2), "distinct": round(float(distinct_locations(traj).mean()), 2),
            "km_q10": round(float(q[0]), 3), "km_q50": round(float(q[1]), 3), "km_q90": round(float(q[2]), 3),
            "stay_mean": round(float(stays.mean()), 2), "one_slot_stays": round(float(np.mean(stays == 1)), 3),
            "far_moves": round(float(np.mean(km > far_km)), 3) if km.size else 0.0,
            "away_days": round(float(np.mean((home > far_km).any(1))), 3)}


def one_slot_stays(traj: np.ndarray) -> np.ndarray:
    """(users, T) -> bool (users, T): positions whose stay lasts one slot (the location differs before and after)."""
    T = traj.shape[1]
    before = np.concatenate([np.ones((traj.shape[0], 1), bool), traj[:, 1:] != traj[:, :-1]], 1)
    after = np.concatenate([traj[:, :-1] != traj[:, 1:], np.ones((traj.shape[0], 1), bool)], 1)
    return before & after if T > 1 else np.ones_like(traj, bool)


@torch.no_grad()
def denoise_probe(run: Path, prep: dict, steps: tuple[int, ...] | None = None, users: int = 64, seed: int = 0) -> dict:
    """Per diffusion step s: corrupt ``users`` training users to s, denoise once, score argmax p(l0 | l_s)."""
    cfg, model, process, _ = load_mstdiff(run / "export")
    l0 = prep["l_train"][:users].long()
    off = prep["offset_train"][:users].long()
    one = torch.as_tensor(one_slot_stays(l0.numpy()))
    g = torch.Generator().manual_seed(seed)
    S = process.steps
    steps = steps or tuple(sorted({0, 2, 5, 10, S // 2, S - 1}))
    out = {}
    for s in steps:
        t = torch.full((l0.shape[0],), s, dtype=torch.long)
        lt, _ = process.trajectory.q_sample(l0, t, g)
        w = None
        if cfg.model.use_traffic:
            w0 = prep["w_train"][:users]
            w = process.traffic.add_noise(w0, torch.randn(w0.shape, generator=g), t)
        hit = process.x0_logits(model(w, lt, t, off)[1], lt, t).argmax(-1) == l0
        kept = lt == l0
        out[int(s)] = {"clean_tokens": round(float(kept.float().mean()), 3), "stays": round(float(hit[~one].float().mean()), 3),
                       "transits": round(float(hit[one].float().mean()), 3),
                       "transits_in_input": round(float(hit[one & kept].float().mean()), 3) if bool((one & kept).any()) else float("nan")}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--traffic-clip", choices=["none", "max"], default=None, help="MSTDiff only: override diffusion.traffic_clip_x0")
    ap.add_argument("--last-step", choices=["mode", "sample"], default=None, help="MSTDiff only: override diffusion.trajectory_last_step")
    ap.add_argument("--temperature", type=float, default=None, help="MSTDiff only: override diffusion.trajectory_temperature")
    ap.add_argument("--probe", action="store_true", help="MSTDiff with trajectories: one-step denoising accuracy per diffusion step")
    args = ap.parse_args(argv)
    setup_logging()
    data = args.run / DATA_FILE if (args.run / DATA_FILE).exists() else args.run / CSDI_USERS_DATA_FILE
    if not data.exists():
        raise SystemExit(f"{args.run}: no {DATA_FILE} or {CSDI_USERS_DATA_FILE}; pass a finished MSTDiff / csdi_users training folder")
    prep = torch.load(data, weights_only=True)
    cfg = load(args.run / "config.yaml")
    has_traffic, has_traj = "traffic_test" in prep, "trajectory_test" in prep
    n = args.users or (prep["traffic_test"] if has_traffic else prep["trajectory_test"]).shape[0]
    kw = {"traffic_clip": args.traffic_clip} if args.traffic_clip else {}
    if args.last_step:
        kw["last_step"] = args.last_step
    if args.temperature is not None:
        kw["temperature"] = args.temperature
    gen = sample_users(args.run / "export", n, seed=args.seed, progress=False, **kw)
    out: dict = {}
    if has_traffic:
        out["traffic"] = {"held-out users": summary(prep["traffic_test"].numpy().astype(np.float64)),
                          "training users": summary(_train_volumes(prep, cfg)),
                          "generated": summary(gen["traffic"].values.astype(np.float64))}
    if has_traj:
        store = Path(cfg.data.store) if cfg.data.store is not None else args.run / "data" / "city.zarr"
        latlon = _latlon(store)
        train = prep["vocab"].numpy()[prep["l_train"].numpy()]
        test = prep["trajectory_test"].numpy()
        markov = MarkovChainMobility().fit(train, open_city(store).sizes["bs"]).sample(n, test.shape[1], args.seed)
        out["trajectories"] = {"held-out users": mobility_summary(test, latlon), "training users": mobility_summary(train, latlon),
                               "generated": mobility_summary(gen["trajectory"].values, latlon), "Markov chain": mobility_summary(markov, latlon)}
        if args.probe:
            out["denoising probe (step: accuracy of argmax p(l0 | l_s))"] = denoise_probe(args.run, prep, seed=args.seed)
    for part, rows in out.items():
        print(f"# {part}")
        for k, v in rows.items():
            print(f"{str(k):15s} " + "  ".join(f"{a}={b}" for a, b in v.items()))
    return out


if __name__ == "__main__":
    main()
