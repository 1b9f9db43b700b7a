"""Training throughput and memory figures (prints a table; no assertions).

    python jobs/bench_train.py [--config C] [--task module:Class] [--steps 30] [--width 2048] [--workers 1 2]

1. samples/s per worker, DDP and DeepSpeed ZeRO-2, for each worker count (Ray Train, CPU workers here):
   from RUN/metrics.jsonl, the first logged interval (warm-up) excluded;
2. peak resident memory of a worker (rank 0's max RSS; on GPU also peak CUDA memory) for DDP vs ZeRO-2;
3. loader throughput vs step throughput in one process: samples/s of the DataLoader alone (train.num_workers
   from the config, and 0) against samples/s of forward+backward+step on an already loaded batch. Training
   never waits on data when the loader is faster than the step.

Default task: the toy of tests/distributed (a wide MLP, so optimizer state is big enough for ZeRO-2's memory
sharding to show); pass --config and --task (or set MOBSCALE_TASK_FACTORY) for a real model family.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
TOY_DIR = str(REPO / "tests" / "distributed")


def toy_config(width: int, steps: int) -> dict:
    return {
        "name": "bench",
        "seed": 0,
        "model": {"kind": "zoomdiff", "width": width},
        "train": {"steps": steps, "batch_size": 16, "lr": 1e-3, "warmup_steps": 0, "log_every": max(1, steps // 6), "checkpoint_every": 10**6},
        "distributed": {"workers": 1, "deepspeed": {"enabled": False}},
    }


def ray_figures(base: dict, task: str, workers: list[int]) -> list[dict]:
    from mobscale.config import load_dict
    from mobscale.train.engine_utils import read_metrics
    from mobscale.train.ray_job import train_ray

    rows = []
    for w in workers:
        for engine, ds in (("ddp", {"enabled": False}), ("zero2", {"enabled": True, "zero_stage": 2})):
            raw = {**base, "distributed": {**base.get("distributed", {}), "workers": w, "deepspeed": ds}}
            with tempfile.TemporaryDirectory(prefix="mobscale-bench-") as tmp:
                t0 = time.perf_counter()
                train_ray(load_dict(raw), Path(tmp) / "run", task_factory=task)
                wall = time.perf_counter() - t0
                recs = read_metrics(Path(tmp) / "run" / "metrics.jsonl")
            timed = recs[1:] or recs
            sps = sum(r["samples_per_s"] for r in timed) / len(timed)
            rows.append({"workers": w, "engine": engine, "samples/s": sps, "samples/s/worker": sps / w,
                         "rss_mb": max(r.get("max_rss_mb", float("nan")) for r in recs), "gpu_mb": max(r.get("max_gpu_mb", 0.0) for r in recs), "wall_s": wall})
            print(f"  {engine:6s} x{w}: {sps:9.1f} samples/s ({sps / w:8.1f} per worker), rank-0 peak RSS {rows[-1]['rss_mb']:7.0f} MB, wall {wall:5.1f} s", flush=True)
    return rows


def loader_vs_step(base: dict, task_factory: str, batches: int) -> dict:
    import torch

    from mobscale.config import load_dict
    from mobscale.train.engine_utils import make_loader, make_optimizer, resolve_task, seed_model_init

    cfg = load_dict(base)
    out = {}
    with tempfile.TemporaryDirectory(prefix="mobscale-bench-") as tmp:
        task = resolve_task(cfg, task_factory)
        task.prepare(Path(tmp))
        task.setup(Path(tmp))
        ds = task.dataset("train", 0, 1)
        for nw in sorted({0, cfg.train.num_workers}):
            loader = make_loader(task, ds, cfg.train.model_copy(update={"num_workers": nw}), seed=0, rank=0, start_sample=0)
            it = iter(loader)
            next(it)  # worker start-up is not throughput
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            out[f"loader_nw{nw}"] = batches * cfg.train.batch_size / (time.perf_counter() - t0)
            del it, loader
        seed_model_init(0)
        model = task.build_model()
        opt = make_optimizer(model.parameters(), cfg.train)
        batch = next(iter(make_loader(task, ds, cfg.train.model_copy(update={"num_workers": 0}), seed=0, rank=0, start_sample=0)))
        gen = torch.Generator().manual_seed(0)
        for i in range(batches + 2):
            if i == 2:  # two warm-up steps
                t0 = time.perf_counter()
            loss, _ = task.loss(model, batch, gen)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        out["step"] = batches * cfg.train.batch_size / (time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="run config YAML (default: the toy task's)")
    p.add_argument("--task", default=os.environ.get("MOBSCALE_TASK_FACTORY"), help="module:Class (default: registry for --config, toy otherwise)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--width", type=int, default=2048, help="toy model width (hidden units)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, default=50, help="batches timed for loader vs step")
    p.add_argument("--loader-only", action="store_true", help="only the loader-vs-step figures (no Ray runs)")
    args = p.parse_args()

    if args.config:
        import yaml

        from mobscale.config import load

        base = yaml.safe_load(load(args.config).model_dump_json())
        base["train"].update(steps=args.steps, log_every=max(1, args.steps // 6), checkpoint_every=10**6)
        task = args.task
    else:
        base = toy_config(args.width, args.steps)
        task = args.task or "toy_task:ToyTask"
        sys.path.insert(0, TOY_DIR)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [TOY_DIR, os.environ.get("PYTHONPATH", "")] if p)

    import torch

    from mobscale.log import setup_logging

    setup_logging("WARNING")
    torch.set_num_threads(1)
    print(f"task {task or 'registry'}, model width {base['model'].get('width')}, batch {base['train']['batch_size']}/worker, {args.steps} steps, torch threads 1")
    print("loader vs step (one process):", flush=True)
    lv = loader_vs_step(base, task, args.batches)
    for k, v in lv.items():
        print(f"  {k:12s} {v:10.1f} samples/s")
    print(f"  loader/step ratio (num_workers=0): {lv['loader_nw0'] / lv['step']:.1f}x", flush=True)
    if args.loader_only:
        return
    print("Ray Train (CPU workers, gloo):", flush=True)
    rows = ray_figures(base, task, args.workers)
    print("\nworkers engine  samples/s  per-worker  rank0-RSS-MB  wall-s")
    for r in rows:
        print(f"{r['workers']:7d} {r['engine']:6s} {r['samples/s']:10.1f} {r['samples/s/worker']:11.1f} {r['rss_mb']:13.0f} {r['wall_s']:7.1f}")


if __name__ == "__main__":
    main()
