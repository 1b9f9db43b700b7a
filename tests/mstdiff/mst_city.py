"""A tiny seeded city store for MSTDiff tests: a ring of base stations, users commuting between a home and a
work BS with random hops, bursty traffic, and a small urban KG. Written with mobscale.data.store.write_city
(so it is schema-valid); no dependency on the synthetic-city generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from mobscale.data import schema
from mobscale.data.store import write_city


def tiny_city(path: Path, *, n_bs: int = 12, n_users: int = 24, days: int = 2, seed: int = 0, traffic: bool = True, kg: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    ang = np.linspace(0, 2 * np.pi, n_bs, endpoint=False)
    by, bx = 2000 + 1500 * np.sin(ang), 2000 + 1500 * np.cos(ang)  # metres; neighbours ~800 m apart
    lat, lon = schema.metres_to_latlon(by, bx, 22.8, 108.3)
    root = xr.Dataset(
        coords={
            "bs": np.arange(n_bs, dtype=np.int32),
            "bs_x": ("bs", bx),
            "bs_y": ("bs", by),
            "bs_lat": ("bs", lat),
            "bs_lon": ("bs", lon),
        },
        attrs={
            "mobscale_schema": schema.SCHEMA_VERSION,
            "city": "tiny",
            "crs": schema.local_crs(22.8, 108.3),
            "pixel_size_m": schema.PIXEL_SIZE_M,
            "time_step_minutes": 60,
            "provenance": "tests/mstdiff/mst_city.py",
            "kind": "synthetic",
            "levels_present": "[]",
        },
    )
    S = days * 48
    slot = np.arange(S) % 48
    traj = np.empty((n_users, S), dtype=np.int32)
    vol = np.zeros((n_users, S), dtype=np.float32)
    for u in range(n_users):
        home = rng.integers(n_bs)
        work = (home + rng.integers(2, 5)) % n_bs
        loc = np.where((slot >= 18) & (slot < 36), work, home)
        hop = rng.random(S) < 0.08
        loc = np.where(hop, (loc + rng.choice([-1, 1], S)) % n_bs, loc)
        traj[u] = loc
        active = rng.random(S) < np.where(slot < 12, 0.1, 0.6)
        vol[u] = np.where(active, rng.lognormal(0.5 + 0.5 * (loc == work), 0.7), 0.0)
        vol[u, rng.integers(S)] += rng.pareto(1.5) * 20
    users = {"trajectory": (("user", "time"), traj)}
    if traffic:
        users["traffic"] = (("user", "time"), vol, {"units": "MB"})
    ds = xr.Dataset(
        users,
        coords={"user": np.arange(n_users, dtype=np.int32), "time": pd.date_range("2026-01-05", periods=S, freq="30min").values},
        attrs={"time_step_minutes": 30, "provenance": "tests/mstdiff/mst_city.py"},
    )
    if kg:
        rows = []
        for b in range(n_bs):
            rows.append((f"bs:{b}", "BaseLocateAt", f"region:{b // 3}"))
            rows.append((f"bs:{b}", "BaseBelongTo", f"area:{b % 2}"))
            rows.append((f"bs:{b}", "BaseBorderBy", f"bs:{(b + 1) % n_bs}"))
            rows.append((f"bs:{(b + 1) % n_bs}", "BaseBorderBy", f"bs:{b}"))
            rows.append((f"bs:{b}", "ServedBy", f"poi:food:{b // 4}"))
        h, r, t = zip(*rows)
        ds = ds.assign(
            kg_head=("triple", np.asarray(h, dtype=object)),
            kg_relation=("triple", np.asarray(r, dtype=object)),
            kg_tail=("triple", np.asarray(t, dtype=object)),
        )
    write_city(root, path, users=ds)
    return path


def tiny_cfg(store: Path | None, **over) -> dict:
    """A RunConfig dict training MSTDiff on the tiny city in seconds (seq_len 48: bands 6, 6, 12, 24)."""
    cfg = {
        "name": "mst-test",
        "seed": 0,
        "data": {"store": str(store) if store else None},
        "model": {
            "kind": "mstdiff", "width": 16, "heads": 2, "code_dim": 8, "codebook_size": 16, "vq_hidden": 8,
            "vq_pretrain_steps": 20, "vq_batch_size": 16, "kg_dim": 8, "kg_relation_dim": 4, "kg_epochs": 3, "kg_neighbours": 3,
            "kg_max_distance_km": 2.5, "users": {"seq_len": 48, "test_fraction": 0.25},
        },
        "diffusion": {"steps": 6},
        "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "log_every": 2, "checkpoint_every": 4, "threads": 1},
        "sample": {"batch_size": 8},
    }
    for k, v in over.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return cfg
