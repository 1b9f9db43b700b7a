"""Cross-city transfer as one run: train on city A -> export -> fine-tune on city B -> sample B -> evaluate B.

Each step is a SLURM job chained to the previous one by an ``afterok`` dependency (submitit), or, without
``--slurm``, the same steps run here in sequence. Re-running the command resumes: finished steps are skipped
(each writes its output atomically; training resumes from its checkpoints).

    python jobs/transfer.py --config configs/demo.yaml --city-a A.zarr --city-b B.zarr --out runs/transfer
        [--few-shot-steps 100] [--few-shot-set k=v ...] [--slurm --partition P --workers-per-job 2]

Without ``--city-a/--city-b`` two synthetic cities are generated (seeds 0 and 100, B with denser base stations
and more events). The fine-tuning step uses the config's ``model.trainable=transfer`` subset (ZoomDiff:
conditions, embeddings, fusion, last block) and trains on B's training split only; evaluation is on B's
held-out split (``data.windows``), with ``mobscale eval``'s metrics and report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def step_city(out: str, name: str, seed: int, size: str, days: int, extra: dict) -> str:
    from mobscale.config.data import SynthConfig
    from mobscale.data.store import is_store
    from mobscale.data.synthetic import synth_city

    p = Path(out) / "data" / f"{name}.zarr"
    if not is_store(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        h, w = map(int, size.split("x"))
        synth_city(SynthConfig(city=name, seed=seed, height=h, width=w, days=days, users=0, **extra), p)
    return str(p)


def step_train(config: str, store: str, run: str, sets: list[str], init_from: str | None = None, workers: int = 1) -> str:
    from mobscale.config import load
    from mobscale.log import setup_logging

    setup_logging()
    cfg = load(config, [f"data.store={store}", *sets])
    if workers > 1:
        from mobscale.train.ray_job import train_ray

        cfg = cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"workers": workers})})
        return str(train_ray(cfg, run, init_from=init_from))
    from mobscale.train.loop import train_local

    return str(train_local(cfg, run, init_from=init_from))


def step_sample(export: str, context: str, out: str) -> str:
    from mobscale.log import setup_logging
    from mobscale.sample.city import SampleSpec, sample_city

    setup_logging()
    from mobscale.model.export import load_export

    s = load_export(export).config.sample
    rep = sample_city(SampleSpec(export=export, context=context, out=out, seed=s.seed, steps_per_stage=s.steps_per_stage,
                                 eta=s.eta, nest_stages=s.nest_stages, overlap=s.overlap, blend=s.blend, batch_size=s.batch_size, reconcile=s.reconcile,
                                 reconcile_levels=tuple(s.reconcile_levels)), progress=False)
    return rep["out"]


def step_eval(real: str, synthetic: str, out: str) -> str:
    from mobscale.launch import main

    rc = main(["eval", "--real", real, "--synthetic", synthetic, "--out", out, "--overwrite"])
    if rc:
        raise RuntimeError(f"evaluation failed with exit code {rc}")
    return str(Path(out) / "metrics.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--city-a")
    ap.add_argument("--city-b")
    ap.add_argument("--size", default="64x64")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], help="overrides for both trainings")
    ap.add_argument("--few-shot-steps", type=int, default=100)
    ap.add_argument("--few-shot-set", action="append", default=["model.trainable=transfer"])
    ap.add_argument("--slurm", action="store_true", help="submit each step as a SLURM job chained by dependencies")
    ap.add_argument("--partition", default=None)
    ap.add_argument("--workers-per-job", type=int, default=1)
    ap.add_argument("--time-min", type=int, default=240)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = []
    city_a = a.city_a or (step_city, (str(out), "cityA", 0, a.size, a.days, {}))
    city_b = a.city_b or (step_city, (str(out), "cityB", 100, a.size, a.days, {"pixels_per_bs": 45.0, "event_rate": 0.03}))
    run_a, run_b = out / "train_A", out / "finetune_B"
    gen_b, ev_b = out / "generated_B.zarr", out / "eval_B"

    if not a.slurm:
        ca = city_a if isinstance(city_a, str) else city_a[0](*city_a[1])
        cb = city_b if isinstance(city_b, str) else city_b[0](*city_b[1])
        ea = step_train(a.config, ca, str(run_a), a.set, workers=a.workers_per_job)
        eb = step_train(a.config, cb, str(run_b), a.set + a.few_shot_set + [f"train.steps={a.few_shot_steps}"], init_from=ea, workers=a.workers_per_job)
        g = gen_b if (gen_b / "zarr.json").exists() else step_sample(eb, cb, str(gen_b))
        m = step_eval(cb, str(g), str(ev_b))
        print(json.dumps({"export_A": ea, "export_B": eb, "generated_B": str(g), "metrics": m}, indent=2))
        return

    import submitit

    ex = submitit.AutoExecutor(folder=out / "slurm_logs", cluster="slurm")
    base = dict(timeout_min=a.time_min, cpus_per_task=max(1, a.workers_per_job), mem_gb=8)
    if a.partition:
        base["slurm_partition"] = a.partition

    def submit(fn, *args, after=()):
        params = dict(base)
        after = [j for j in after if j is not None]
        if after:
            params["slurm_additional_parameters"] = {"dependency": "afterok:" + ":".join(j.job_id for j in after), "kill-on-invalid-dep": "yes"}
        ex.update_parameters(**params)
        job = ex.submit(fn, *args)
        steps.append((fn.__name__, job))
        return job

    ja = jb = None
    if not isinstance(city_a, str):
        ja = submit(city_a[0], *city_a[1])
    if not isinstance(city_b, str):
        jb = submit(city_b[0], *city_b[1])
    ca = city_a if isinstance(city_a, str) else str(out / "data" / "cityA.zarr")
    cb = city_b if isinstance(city_b, str) else str(out / "data" / "cityB.zarr")
    jt = submit(step_train, a.config, ca, str(run_a), a.set, None, a.workers_per_job, after=(ja,))
    jf = submit(step_train, a.config, cb, str(run_b), a.set + a.few_shot_set + [f"train.steps={a.few_shot_steps}"],
                str(run_a / "export"), a.workers_per_job, after=(jt, jb))
    js = submit(step_sample, str(run_b / "export"), cb, str(gen_b), after=(jf,))
    je = submit(step_eval, cb, str(gen_b), str(ev_b), after=(js,))
    for name, job in steps:
        print(f"{name}: SLURM job {job.job_id}")
    print(f"final metrics (when job {je.job_id} completes): {je.result()}")


if __name__ == "__main__":
    main()
