"""Benchmark of the city store (prints figures; not a test).

1. Paper-scale synthetic city (default 430x430 pixels, 7 days hourly, ~3k BS, 2k users) written by streaming
   time chunks: wall time and peak resident memory of the generating process.
2. Read throughput of the grid50 traffic through xarray/Dask (``open_city(...).load()`` and a lazy reduction)
   against the raw read speed of the same bytes (the chunk files read with plain file I/O, i.e. what the disk
   and page cache deliver before decoding).

Usage: python jobs/bench_store.py [--size 430x430] [--days 7] [--users 2000] [--out /tmp/bench_city.zarr]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _peak_rss_mb_child(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB on Linux
    return dt, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="430x430")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--out", default="/tmp/bench_city.zarr")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "mobscale.launch", "data", "synth", "--city", "paper", "--seed", "1", "--size", a.size,
           "--days", str(a.days), "--users", str(a.users), "--out", str(out)]
    dt, peak = _peak_rss_mb_child(cmd)
    nbytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"synth {a.size} x {24 * a.days} h, {a.users} users: {dt:.1f} s, peak RSS {peak:.0f} MiB, store {nbytes / 2**20:.1f} MiB on disk")

    import numpy as np

    from mobscale.data.store import open_city

    ds = open_city(out)
    print(f"  BS {ds.sizes['bs']}, cells {ds.sizes['cell']}, pixels {ds.sizes['y']}x{ds.sizes['x']}")
    var = out / "traffic_grid50"
    files = [f for f in var.rglob("*") if f.is_file()]
    raw_bytes = sum(f.stat().st_size for f in files)
    decoded = ds["traffic_grid50"].nbytes
    for f in files:  # warm the page cache so both paths read from memory
        f.read_bytes()
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        for f in files:
            with open(f, "rb") as fh:
                fh.read()
    raw_s = (time.perf_counter() - t0) / reps
    import zarr

    t0 = time.perf_counter()
    for _ in range(reps):
        zarr.open_array(var, mode="r")[:]
    zarr_s = (time.perf_counter() - t0) / reps
    # Opening a store reads the metadata of every variable once (~30 arrays); it is timed apart from reading so
    # the read figures compare the same work (zarr direct also opens its one array inside its loop).
    t0 = time.perf_counter()
    for _ in range(reps):
        ds = open_city(out)
    open_s = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        arr = ds["traffic_grid50"].values
    xr_s = (time.perf_counter() - t0) / reps
    # larger Dask chunks (4 store chunks along time each): fewer tasks, the same bytes
    ds_big = open_city(out, chunks={"time": 96})
    t0 = time.perf_counter()
    for _ in range(reps):
        ds_big["traffic_grid50"].values
    xr_big_s = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        tot = float(ds["traffic_grid50"].sum().compute())
    red_s = (time.perf_counter() - t0) / reps
    print(f"raw read of the chunk files: {raw_bytes / 2**20:.1f} MiB in {raw_s:.3f} s = {raw_bytes / 2**20 / raw_s:.0f} MiB/s (compressed bytes)")
    print(f"zarr-python direct read (decode, no xarray/Dask): {decoded / 2**20 / zarr_s:.0f} MiB/s decoded")
    print(f"xarray/Dask load (decode included): {decoded / 2**20:.1f} MiB in {xr_s:.3f} s = {decoded / 2**20 / xr_s:.0f} MiB/s decoded, "
          f"{100 * zarr_s / xr_s:.0f}% of the zarr direct read, {100 * raw_s / xr_s:.1f}% of the page-cache file read")
    print(f"xarray/Dask load with Dask chunks of 96 h (4 store chunks): {decoded / 2**20 / xr_big_s:.0f} MiB/s decoded, "
          f"{100 * zarr_s / xr_big_s:.0f}% of the zarr direct read")
    print(f"opening the store (metadata of every variable): {open_s * 1e3:.0f} ms")
    print(f"lazy Dask reduction (sum): {red_s:.3f} s = {raw_bytes / 2**20 / red_s:.0f} MiB/s of stored bytes; total {tot:.4g}")
    assert np.isfinite(arr).all()
    if not a.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
