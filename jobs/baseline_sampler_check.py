"""Print what a single-resolution diffusion baseline (CSDI- or DiT-style export) generates for a few windows of a
city, next to the real traffic of the same windows, under three samplers.

Why: in Table VII the 600-step DiT-style model's city was 5.6x the real total (results/README.md, "Cross-city
transfer ... current defaults"). These figures say whether that is the sampler (its x0 clamp to the data range) or
the network: the configured sampler, the same network with DDIM (50 steps, eta 0, same clamp) and with no clamp at
all (CSDI's ancestral sampler exactly). Per sampler: the generated / real mean, the median and 99% quantile of the
pixel-hours (real ones in brackets), the share of pixel-hours above the real 99.9% quantile (0.1% for a calibrated
sampler), and the single-sample MAE beside all-zeros' MAE. Usage::

    python jobs/baseline_sampler_check.py EXPORT STORE [--windows N] [--seed S]

N windows (default 16) at random whole-window times and positions of STORE (which must hold traffic).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def windows(arr, patch: int, hours: int, n: int, seed: int) -> list:
    from mobscale.data.windows import Window

    rng = np.random.default_rng(seed)
    return [Window(int(rng.integers(0, arr.T // hours) * hours), int(rng.integers(0, arr.H - patch + 1)), int(rng.integers(0, arr.W - patch + 1)))
            for _ in range(n)]


def check(export: str, store: str, n: int = 16, seed: int = 0) -> dict[str, dict[str, float]]:
    """Figures per sampler (see the module docstring), as a dict; also printed."""
    from mobscale.data.windows import CityArrays, ContextWindows
    from mobscale.errors import ConfigError
    from mobscale.sample.generators import load_generator

    gen = load_generator(export)
    if gen.kind not in ("csdi", "dit") or gen.cond_level is not None:
        raise ConfigError(f"{export}: a generating CSDI- or DiT-style export is needed, got kind '{gen.kind}'")
    arr = CityArrays(store, cache_bytes=1 << 30, require_traffic=True)
    P, L = gen.patch, gen.hours
    wins = windows(arr, P, L, n, seed)
    ds = ContextWindows(arr, wins, P, L)
    batch = torch.utils.data.default_collate([ds[i] for i in range(n)])
    real = np.stack([arr.grid50(w.t0, L, w.y0, w.x0, P) for w in wins]).astype(np.float64)
    q999 = float(np.percentile(real, 99.9))
    clip0 = gen.process.cfg.clip_x0
    samplers = {"configured": (clip0, None), "DDIM 50, eta 0, same clamp": (clip0, 50), "no clamp (CSDI's sampler)": (None, None)}
    out: dict[str, dict[str, float]] = {}
    print(f"{export} on {n} windows of {store}: real mean {real.mean():.4g}, zeros MAE {real.mean():.4g}; x0 clamp {clip0} {gen.x0_range}")
    for name, (clip, steps) in samplers.items():
        gen.process.cfg.clip_x0 = clip
        t0 = time.perf_counter()
        try:
            g = gen.generate(batch, [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)], steps_per_stage=steps).numpy()[:, -1]
        except FloatingPointError as e:
            print(f"  {name:28s} failed: {e}")
            continue
        g = g.astype(np.float64)
        d = {"mean_ratio": g.mean() / real.mean(), "median": float(np.median(g)), "median_real": float(np.median(real)),
             "q99": float(np.percentile(g, 99)), "q99_real": float(np.percentile(real, 99)), "above_real_q999": float((g > q999).mean()),
             "mae": float(np.abs(g - real).mean()), "zeros_mae": float(real.mean())}
        out[name] = d
        print(f"  {name:28s} mean ratio {d['mean_ratio']:6.2f}  median {d['median']:8.3g} ({d['median_real']:.3g})  q99 {d['q99']:8.4g} "
              f"({d['q99_real']:.4g})  above real q99.9 {100 * d['above_real_q999']:5.2f}%  MAE {d['mae']:8.4g}  ({time.perf_counter() - t0:.0f} s)")
    gen.process.cfg.clip_x0 = clip0
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export")
    ap.add_argument("store")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from mobscale.log import setup_logging

    setup_logging()
    torch.set_num_threads(1)
    check(a.export, a.store, a.windows, a.seed)


if __name__ == "__main__":
    main()
