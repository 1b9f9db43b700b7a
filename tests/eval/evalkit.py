"""Tiny seeded city stores for the eval tests, built with xarray following mobscale.data.schema.

``tiny_city`` returns an in-memory Dataset (all four levels consistent, hierarchy maps, coordinates, attrs);
``generated_from`` perturbs one into a "generated" store, optionally with a leading ``sample`` dim, a ``stages``
group and a ``users`` group; ``write`` writes them with ``mobscale.data.store.write_city(validate=False)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from mobscale.data import pyramid, schema
from mobscale.data.store import write_city

LAT0, LON0 = 22.817, 108.366


def tiny_city(seed: int = 0, H: int = 8, W: int = 8, days: int = 2, step_minutes: int = 60, block: int = 4) -> xr.Dataset:
    """H x W pixels (even), cells = block x block pixel squares, 2 cells per BS; ``days`` of traffic."""
    rng = np.random.default_rng(seed)
    T = days * 1440 // step_minutes
    time = pd.date_range("2026-01-05", periods=T, freq=f"{step_minutes}min")
    hours = (np.arange(T) * step_minutes / 60.0) % 24
    daily = 1.0 + 0.8 * np.sin(2 * np.pi * (hours - 9) / 24)
    base = rng.gamma(2.0, 5.0, size=(H, W))
    g50 = (daily[:, None, None] * base[None] * rng.lognormal(0, 0.3, size=(T, H, W))).astype(np.float32)
    nbx = W // block
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    pixel_cell = ((yy // block) * nbx + xx // block).astype(np.int32)
    n_cells = int(pixel_cell.max()) + 1
    cell_bs = (np.arange(n_cells) // 2).astype(np.int32)
    n_bs = int(cell_bs.max()) + 1
    y = (np.arange(H) + 0.5) * schema.PIXEL_SIZE_M
    x = (np.arange(W) + 0.5) * schema.PIXEL_SIZE_M
    lat, _ = schema.metres_to_latlon(y, np.zeros_like(y), LAT0, LON0)
    _, lon = schema.metres_to_latlon(np.zeros_like(x), x, LAT0, LON0)
    cy = np.array([y[np.nonzero(pixel_cell == c)[0]].mean() for c in range(n_cells)])
    cx = np.array([x[np.nonzero(pixel_cell == c)[1]].mean() for c in range(n_cells)])
    by = np.array([cy[cell_bs == b].mean() for b in range(n_bs)])
    bx = np.array([cx[cell_bs == b].mean() for b in range(n_bs)])
    clat, clon = schema.metres_to_latlon(cy, cx, LAT0, LON0)
    blat, blon = schema.metres_to_latlon(by, bx, LAT0, LON0)
    da = xr.DataArray(g50, dims=("time", "y", "x"))
    lv = pyramid.all_levels(da, pixel_cell, cell_bs, n_cells, n_bs)
    ds = xr.Dataset(
        {schema.TRAFFIC_VAR[k]: v.rename(schema.TRAFFIC_VAR[k]).assign_attrs(schema.TRAFFIC_ATTRS) for k, v in lv.items()}
        | {"pixel_cell": (("y", "x"), pixel_cell)},
        coords={
            "time": time, "y": y, "x": x, "lat": ("y", lat), "lon": ("x", lon),
            "y100": y.reshape(-1, 2).mean(1), "x100": x.reshape(-1, 2).mean(1),
            "cell": np.arange(n_cells), "cell_x": ("cell", cx), "cell_y": ("cell", cy), "cell_lat": ("cell", clat),
            "cell_lon": ("cell", clon), "cell_bs": ("cell", cell_bs), "cell_sector": ("cell", np.zeros(n_cells, np.int32)),
            "bs": np.arange(n_bs), "bs_x": ("bs", bx), "bs_y": ("bs", by), "bs_lat": ("bs", blat), "bs_lon": ("bs", blon),
        },
        attrs={
            "mobscale_schema": schema.SCHEMA_VERSION, "city": f"tiny{seed}", "crs": schema.local_crs(LAT0, LON0),
            "lat0": LAT0, "lon0": LON0, "pixel_size_m": schema.PIXEL_SIZE_M, "time_step_minutes": step_minutes,
            "provenance": "tests/eval/evalkit.py", "kind": "real",
        },
    )
    return ds


def generated_from(real: xr.Dataset, seed: int = 1, n_samples: int | None = None, sigma: float = 0.2) -> xr.Dataset:
    """A "generated" store: real grid50 x log-normal noise, levels re-derived; ``n_samples`` adds a sample dim."""
    rng = np.random.default_rng(seed)
    pc, cb = real["pixel_cell"].values, real["cell_bs"].values
    g = real["traffic_grid50"].values
    reps = []
    for _ in range(n_samples or 1):
        noisy = xr.DataArray((g * rng.lognormal(0, sigma, size=g.shape)).astype(np.float32), dims=("time", "y", "x"))
        reps.append(pyramid.all_levels(noisy, pc, cb, real.sizes["cell"], real.sizes["bs"]))
    out = real.copy()
    for lvl in schema.SPATIAL_LEVELS:
        var = schema.TRAFFIC_VAR[lvl]
        if n_samples is None:
            arr = reps[0][lvl].values
            out[var] = (real[var].dims, arr, real[var].attrs)
        else:
            arr = np.stack([r[lvl].values for r in reps])
            out[var] = (("sample", *real[var].dims), arr, real[var].attrs)
    if n_samples is not None:
        out = out.assign_coords(sample=np.arange(n_samples))
    out.attrs["kind"] = "generated"
    return out


def stages_group(real: xr.Dataset, stages=(("bs", "1d"), ("cell", "4h"), ("grid100", "2h"), ("grid50", "1h")),
                 n_samples: int | None = None) -> xr.Dataset:
    """A ``stages`` group: stage_k = real density at (level, resolution) (the ideal ZoomDiff trajectory)."""
    vars_ = {}
    for k, (lvl, res) in enumerate(stages):
        d = pyramid.density(real, lvl, res)
        d = d.reindex(time=real["time"].values, fill_value=0.0)
        if n_samples is not None:
            d = d.expand_dims(sample=n_samples)
        vars_[f"stage_{k}"] = d.astype(np.float32).assign_attrs(level=lvl, time_resolution=res, units="MB")
    return xr.Dataset(vars_)


def users_group(real: xr.Dataset, n_users: int = 12, days: int = 2, seed: int = 0, n_samples: int | None = None) -> xr.Dataset:
    """Per-user 30 min traffic and BS trajectories (stay-heavy random walks over the BSs)."""
    rng = np.random.default_rng(seed)
    T = days * 48
    n_bs = real.sizes["bs"]

    def one():
        hours = (np.arange(T) * 0.5) % 24
        daily = 1.0 + 0.7 * np.sin(2 * np.pi * (hours - 10) / 24)
        traffic = (rng.gamma(1.5, 2.0, size=(n_users, 1)) * daily[None] * rng.lognormal(0, 0.5, size=(n_users, T))).astype(np.float32)
        traj = np.empty((n_users, T), np.int32)
        traj[:, 0] = rng.integers(0, n_bs, n_users)
        for t in range(1, T):
            move = rng.random(n_users) < 0.15
            traj[:, t] = np.where(move, rng.integers(0, n_bs, n_users), traj[:, t - 1])
        return traffic, traj

    time = pd.date_range(str(real["time"].values[0]), periods=T, freq="30min")
    if n_samples is None:
        tr, tj = one()
        return xr.Dataset({"traffic": (("user", "time"), tr), "trajectory": (("user", "time"), tj)},
                          coords={"user": np.arange(n_users), "time": time})
    parts = [one() for _ in range(n_samples)]
    return xr.Dataset({"traffic": (("sample", "user", "time"), np.stack([p[0] for p in parts])),
                       "trajectory": (("sample", "user", "time"), np.stack([p[1] for p in parts]))},
                      coords={"sample": np.arange(n_samples), "user": np.arange(n_users), "time": time})


def write(ds: xr.Dataset, path: Path, users: xr.Dataset | None = None, stages: xr.Dataset | None = None,
          chunks: dict | None = None) -> Path:
    extra = {schema.STAGES_GROUP: stages} if stages is not None else None
    return write_city(ds, path, users=users, extra_groups=extra, validate=False, chunks=chunks)
