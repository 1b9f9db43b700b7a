"""Benchmark of the traffic evaluation: throughput of `traffic_statistics` on a Zarr city store, by worker count.

    python jobs/eval_bench.py --size 256 --days 7 --samples 2 --workers 1 2

Builds a procedural store pair (real + generated with ``--samples`` realisations) under ``--tmp`` (reused when
already there: run twice with the same --tmp so that peak RSS reflects the evaluation, not the build), then
evaluates all four levels at 1d/4h/2h/1h and prints wall time, native values read per second and peak RSS (process
high-water mark, so list the larger worker count last). Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from mobscale.data import pyramid, schema  # noqa: E402
from mobscale.data.store import open_city, write_city  # noqa: E402
from mobscale.eval.metrics import finalize_traffic, traffic_statistics  # noqa: E402


def build(size: int, days: int, samples: int | None, seed: int, block: int = 8) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    T = days * 24
    hours = np.arange(T) % 24
    base = rng.gamma(2.0, 5.0, size=(size, size)).astype(np.float32)
    daily = (1 + 0.8 * np.sin(2 * np.pi * (hours - 9) / 24)).astype(np.float32)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    pc = ((yy // block) * (size // block) + xx // block).astype(np.int32)
    n_cells = int(pc.max()) + 1
    cb = (np.arange(n_cells) // 2).astype(np.int32)
    n_bs = int(cb.max()) + 1
    reps = []
    for _ in range(samples or 1):
        g = daily[:, None, None] * base[None] * rng.lognormal(0, 0.3, size=(T, size, size)).astype(np.float32)
        reps.append(pyramid.all_levels(xr.DataArray(g, dims=("time", "y", "x")), pc, cb, n_cells, n_bs))
    data = {}
    for lvl in schema.SPATIAL_LEVELS:
        dims = schema.LEVEL_DIMS[lvl]
        if samples is None:
            data[schema.TRAFFIC_VAR[lvl]] = (dims, reps[0][lvl].values)
        else:
            data[schema.TRAFFIC_VAR[lvl]] = (("sample", *dims), np.stack([r[lvl].values for r in reps]))
    c = (np.arange(size) + 0.5) * 50.0
    ds = xr.Dataset(data | {"pixel_cell": (("y", "x"), pc)}, coords={
        "time": pd.date_range("2026-01-05", periods=T, freq="h"), "y": c, "x": c,
        "y100": c.reshape(-1, 2).mean(1), "x100": c.reshape(-1, 2).mean(1),
        "cell": np.arange(n_cells), "cell_bs": ("cell", cb), "bs": np.arange(n_bs)},
        attrs={"time_step_minutes": 60, "kind": "bench"})
    if samples is not None:
        ds = ds.assign_coords(sample=np.arange(samples))
    return ds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tmp", default=None)
    a = p.parse_args()
    tmp = Path(a.tmp or tempfile.mkdtemp(prefix="eval_bench_"))
    try:
        if not (tmp / "gen.zarr").exists():  # reuse stores left in --tmp so RSS below measures the evaluation only
            t0 = time.perf_counter()
            write_city(build(a.size, a.days, None, 0), tmp / "real.zarr", validate=False)
            write_city(build(a.size, a.days, a.samples, 1), tmp / "gen.zarr", validate=False)
            print(f"stores: {a.size}x{a.size} px, {a.days * 24} h, {a.samples} samples, written in {time.perf_counter() - t0:.1f} s")
        real, gen = open_city(tmp / "real.zarr"), open_city(tmp / "gen.zarr")
        n_values = sum(int(np.prod(real[v].shape)) for v in schema.TRAFFIC_VAR.values()) * (1 + a.samples)
        for w in a.workers:
            t0 = time.perf_counter()
            ts = traffic_statistics(real, gen, workers=w, progress=False)
            ds = finalize_traffic(ts)
            dt = time.perf_counter() - t0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rmse = float(ds["value"].sel(metric="rmse", level="grid50", resolution="1h"))
            print(f"workers={w}: {dt:.1f} s for 4 levels x 4 resolutions, {n_values / dt / 1e6:.1f} M native values/s "
                  f"(each read twice), peak RSS {rss:.0f} MB, grid50/1h rmse {rmse:.4f}")
    finally:
        if a.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
