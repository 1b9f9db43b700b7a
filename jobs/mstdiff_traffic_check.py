"""Print what a trained MSTDiff (or CSDI-style users) run generates next to its held-out and training users: the
share of zero half-hours, upper quantiles, the mean volume and how much of it the ten largest half-hours hold.

These are the figures behind the traffic encoding (``model.users.zero_gap``, ``diffusion.traffic_clip_x0``; see
results/README.md, "MSTDiff"). Usage::

    python jobs/mstdiff_traffic_check.py RUN [--users N] [--seed S] [--traffic-clip none|max]

RUN is a training folder (its export and prepared data); N generated users (default: as many as held out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mobscale.config import load  # noqa: E402
from mobscale.log import setup_logging  # noqa: E402
from mobscale.sample.users import sample_users  # noqa: E402
from mobscale.train.mstdiff_task import CSDI_USERS_DATA_FILE, DATA_FILE  # noqa: E402
from mstdiff_tables import _train_volumes  # noqa: E402

QUANTILES = (0.5, 0.9, 0.99, 0.999, 0.9999)


def summary(m: np.ndarray) -> dict:
    flat = np.sort(m.ravel())
    return {"users": int(m.shape[0]), "zero_share": round(float(np.mean(m == 0)), 4),
            **{f"q{q}": round(float(v), 2) for q, v in zip(QUANTILES, np.quantile(m, QUANTILES))},
            "mean": round(float(m.mean()), 3), "top10_share": round(float(flat[-10:].sum() / max(flat.sum(), 1e-12)), 4)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--traffic-clip", choices=["none", "max"], default=None, help="MSTDiff only: override diffusion.traffic_clip_x0")
    args = ap.parse_args(argv)
    setup_logging()
    data = args.run / DATA_FILE if (args.run / DATA_FILE).exists() else args.run / CSDI_USERS_DATA_FILE
    if not data.exists():
        raise SystemExit(f"{args.run}: no {DATA_FILE} or {CSDI_USERS_DATA_FILE}; pass a finished MSTDiff / csdi_users training folder")
    prep = torch.load(data, weights_only=True)
    cfg = load(args.run / "config.yaml")
    test = prep["traffic_test"].numpy().astype(np.float64)
    kw = {"traffic_clip": args.traffic_clip} if args.traffic_clip else {}
    gen = sample_users(args.run / "export", args.users or test.shape[0], seed=args.seed, progress=False, **kw)["traffic"].values
    out = {"held-out users": summary(test), "training users": summary(_train_volumes(prep, cfg)), "generated": summary(gen.astype(np.float64))}
    for k, v in out.items():
        print(f"{k:15s} " + "  ".join(f"{a}={b}" for a, b in v.items()))
    return out


if __name__ == "__main__":
    main()
