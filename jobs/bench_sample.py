"""Benchmark of city-scale generation (prints figures; not a test).

1. Throughput in generated pixel-hours per second for 1 and 2 local workers (submitit processes) on the demo
   city, and the fraction of shard time spent writing vs generating (from the shard markers).
2. Peak resident memory of ONE shard task (a 128x128-pixel chunk tile x one window of time) on the demo city
   and on cities of growing size up to beyond the paper scale (430x430 pixels, 168 h): a task holds its own
   region, the windows touching it, the static per-pixel context, and the hourly context only while it is under
   256 MiB (cached so its shards do not re-read it); beyond that it reads the context window by window.

Usage: python jobs/bench_sample.py --export RUN/export [--city CITY.zarr] [--steps-per-stage 2] [--sizes 192x192,430x430,640x640] [--memory-only]
(the export is any traffic model export, e.g. from `mobscale train --config configs/demo.yaml`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ONE_SHARD = r"""
import json, resource, sys, time
from mobscale.sample.city import SampleSpec, make_layout, _template, load_for, generate_shard
from mobscale.data.windows import CityArrays
spec = SampleSpec(**json.loads(sys.argv[1]))
gen = load_for(spec)
lay = make_layout(spec, gen)
arr = CityArrays(spec.context, cache_bytes=256 << 20, require_traffic=False)
shard = lay.plan.shards(10**9, 128, 128, 1)[0]
t = time.perf_counter()
d = generate_shard(spec, lay, gen, shard, arr)
# VmHWM is this process's own high-water mark; ru_maxrss would also count the parent's peak, folded in at exec
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": time.perf_counter() - t, "region": list(d.shape), "peak_rss_mb": int(hwm) / 1024}))
"""


def one_shard_peak(spec: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", ONE_SHARD, json.dumps(spec)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True)
    ap.add_argument("--city", default=None, help="demo city store (default: synthesized 64x64 x 7 days)")
    ap.add_argument("--steps-per-stage", type=int, default=2)
    ap.add_argument("--sizes", default="192x192,430x430,640x640", help="cities for the one-shard memory figures (430x430 = paper scale)")
    ap.add_argument("--memory-only", action="store_true", help="only the one-shard memory figures")
    a = ap.parse_args()
    from mobscale.config.data import SynthConfig
    from mobscale.data.synthetic import synth_city
    from mobscale.log import setup_logging
    from mobscale.sample.city import SampleSpec, _state_dir, sample_city

    setup_logging("WARNING")
    tmp = Path(tempfile.mkdtemp(prefix="bench_sample_"))
    city = Path(a.city) if a.city else tmp / "demo.zarr"
    if not a.city:
        synth_city(SynthConfig(city="demo", seed=0, height=64, width=64, days=7, users=0), city, progress=False)
    from mobscale.data.store import open_city

    ds = open_city(city)
    pix_h = ds.sizes["y"] * ds.sizes["x"] * (ds.sizes["time"] * int(ds.attrs["time_step_minutes"]) // 60)
    for workers in () if a.memory_only else (1, 2):
        out = tmp / f"w{workers}.zarr"
        spec = SampleSpec(export=a.export, context=str(city), out=str(out), steps_per_stage=a.steps_per_stage, shards=2 * workers)
        t = time.perf_counter()
        rep = sample_city(spec, workers=workers, progress=False)
        wall = time.perf_counter() - t
        gen_s, write_s = rep["shard_generate_s"], rep["shard_write_s"]
        print(f"{workers} worker(s): {wall:.1f} s wall, {pix_h / wall:.0f} pixel-hours/s ({pix_h} pixel-hours); shard time "
              f"{gen_s:.1f} s generating, {write_s:.2f} s writing ({100 * write_s / max(gen_s + write_s, 1e-9):.1f}% writing); "
              f"reconcile+validate {wall - rep['generation_wall_s']:.1f} s")
    base = dict(export=a.export, steps_per_stage=a.steps_per_stage)
    r = one_shard_peak({**base, "context": str(city), "out": str(tmp / "x.zarr")})
    print(f"one shard task on the demo city ({ds.sizes['y']}x{ds.sizes['x']}): region {r['region']}, {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MiB")
    # the same 128x128 tile on cities larger than one tile. A task caches the city's hourly context (population)
    # when it is under 256 MiB (so its shards do not re-read it), so peak memory rises with the city up to that
    # cap and is flat beyond it (640x640 x 168 h = 262 MiB of population is read lazily, window by window).
    for size in a.sizes.split(","):
        h, w = map(int, size.split("x"))
        c = tmp / f"c{size}.zarr"
        synth_city(SynthConfig(city="bench", seed=1, height=h, width=w, days=7, users=0), c, progress=False)
        r = one_shard_peak({**base, "context": str(c), "out": str(tmp / "m.zarr")})
        print(f"one shard task on a {size} x 168 h city: region {r['region']}, {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MiB")
        shutil.rmtree(c)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
