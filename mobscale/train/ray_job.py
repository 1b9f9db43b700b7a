"""Distributed training: Ray Train's TorchTrainer drives one process per worker; each wraps the Task's model in
DeepSpeed (ZeRO 0-3, fp32/bf16, optimizer offload; config from mobscale.train.deepspeed_cfg) or, with
``distributed.deepspeed.enabled: false``, in DDP (ray.train.torch.prepare_model).

Driver (:func:`train_ray`): validates, calls ``task.prepare(RUN)`` once, writes RUN/config.yaml, connects to
Ray (``RAY_ADDRESS`` / ``address`` = an existing cluster, e.g. the one slurm/train.sh starts; otherwise a
local one sized to the workers), runs ``TorchTrainer.fit()`` with ``RunConfig(storage_path=RUN,
name=cfg.name)``, then consolidates the last checkpoint into RUN/export (any ZeRO stage, any worker count).

Worker (:func:`worker_loop`): builds Task, model and its rank's dataset; restores ``ray.train.get_checkpoint()``
when there is one; trains ``train.steps`` optimizer steps; every ``checkpoint_every`` steps each rank writes
its part (DeepSpeed shard, RNG state; rank 0 the rest, see mobscale.train.checkpoint) into a local folder
and reports it through ``ray.train.report``, which merges all ranks into RUN/<name>/step_<8 digits>.

On a multi-node cluster RUN must be on a filesystem every node sees (it is Ray's storage path, and rank 0
writes metrics there). Data paths inside the config should be absolute for the same reason.

Resuming is re-running the same command: same storage path + name -> Ray restores the latest checkpoint.
A worker that fails is restarted from it (``FailureConfig(max_failures)``). Both continue the same loss
curve: the data order, the loss generator and the global RNGs of every rank are part of the checkpoint.

Files rank 0 writes in RUN: metrics.jsonl (rank-averaged loss per logged step), last_checkpoint.json (step
and path of the newest *persisted* checkpoint). Touching RUN/.checkpoint_request makes all ranks checkpoint at
the next step boundary (the SLURM preemption handler in mobscale.train.submit uses it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from mobscale.config import dump, load_dict
from mobscale.errors import CheckpointError
from mobscale.log import get_logger, setup_logging
from mobscale.train import checkpoint as ckpt
from mobscale.train.engine_utils import (
    MetricsLog,
    RankStreams,
    batch_to,
    check_same_run,
    configure_torch,
    load_init_weights,
    lr_schedule,
    make_ema,
    make_loader,
    make_optimizer,
    memory_mb,
    resolve_task,
    seed_model_init,
    trainable_parameters,
    unwrap,
)
from mobscale.train.loop import CHECKPOINT_REQUEST

log = get_logger(__name__)

# ============================================================================================== driver


def connect_ray(cfg, address: str | None = None) -> bool:
    """Connect to (or start) Ray. Returns True when this call started it (the caller shuts it down).

    An existing cluster: ``address`` or ``RAY_ADDRESS``. Otherwise a local single-node cluster bound to
    127.0.0.1, with exactly the CPUs/GPUs the workers ask for (Ray would otherwise claim the whole machine)
    and a small object store (training data never goes through it).
    """
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # the CLI and the cluster must agree (infra-on-cpu.md 6)
    if not address:
        # must precede `import ray`: keeps a single-node cluster on loopback instead of eth0
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    dc = cfg.distributed
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("connected to Ray cluster at %s: %s", address, ray.cluster_resources())
        return True
    ray.init(
        address="local",  # a new cluster, even if /tmp/ray/ray_current_cluster names another one on this host
        num_cpus=dc.workers * dc.cpus_per_worker,
        num_gpus=dc.workers if dc.use_gpu else 0,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        log_to_driver=True,
    )
    log.info("started a local Ray cluster: %s", ray.cluster_resources())
    return True


def train_ray(cfg, run_dir: str | Path, *, task_factory: str | None = None, init_from: str | Path | None = None, address: str | None = None) -> Path:
    """Train ``cfg`` on ``cfg.distributed.workers`` Ray Train workers into ``run_dir``; returns RUN/export.

    Re-running with the same ``run_dir`` and ``cfg.name`` resumes from the newest checkpoint.
    """
    from mobscale.train import deepspeed_cfg

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    check_same_run(run_dir, cfg)
    dc = cfg.distributed
    if dc.deepspeed.enabled:
        deepspeed_cfg.build(cfg, dc.workers)  # validate before any worker starts
    init_from = str(Path(init_from).resolve()) if init_from else None

    task = resolve_task(cfg, task_factory)
    task.prepare(run_dir)
    dump(cfg, run_dir / "config.yaml")
    (run_dir / CHECKPOINT_REQUEST).unlink(missing_ok=True)  # a stale request from a killed attempt
    if callable(getattr(task, "fit", None)):  # fitted statistics: nothing for Ray workers to do
        task.setup(run_dir)
        return ckpt.write_export(run_dir, cfg, task, task.fit(run_dir).state_dict(), step=0, engine="fit", weights="fitted")

    finished = _finished_checkpoint(run_dir, cfg)
    if finished is not None:  # re-running a completed command: no need to start workers just to find that out
        log.info("%s already trained to step %d; refreshing the export", run_dir, cfg.train.steps)
        return _export(run_dir, cfg, task, finished)

    started = connect_ray(cfg, address)
    try:
        import ray.train
        from ray.train.torch import TorchTrainer

        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"cfg": cfg.model_dump(mode="json"), "run_dir": str(run_dir), "task_factory": task_factory, "init_from": init_from},
            scaling_config=ray.train.ScalingConfig(
                num_workers=dc.workers,
                use_gpu=dc.use_gpu,
                resources_per_worker={"CPU": dc.cpus_per_worker, **({"GPU": 1} if dc.use_gpu else {})},
            ),
            run_config=ray.train.RunConfig(
                name=cfg.name,
                storage_path=str(run_dir),
                failure_config=ray.train.FailureConfig(max_failures=dc.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=dc.keep_checkpoints),
            ),
        )
        log.info("training %s on %d Ray worker(s) (%s) into %s", cfg.name, dc.workers, _engine_name(cfg), run_dir)
        result = trainer.fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    # Ray's result names the last checkpoint *this* attempt reported; a rerun that resumed from a newer one it
    # never recorded (e.g. written by workers of a killed attempt that outlived their driver) and had no steps
    # left reports nothing, so the export takes the newer of the two
    final = _newest_checkpoint(run_dir, cfg, result.checkpoint)
    if final is None:
        raise CheckpointError(f"{run_dir / cfg.name}: training finished without a checkpoint")
    with final.as_directory() as d:
        return _export(run_dir, cfg, task, Path(d))


def _finished_checkpoint(run_dir: Path, cfg) -> Path | None:
    """The newest checkpoint when it already reached train.steps, else None."""
    path = ckpt.last_path(run_dir)
    if path is None or not (path / "state.json").exists() or path.parent.name != cfg.name:
        return None
    return path if ckpt.read_state(path)["step"] >= cfg.train.steps else None


def _export(run_dir: Path, cfg, task, ckpt_dir: Path) -> Path:
    """Consolidate ``ckpt_dir`` (any engine, any world size) into RUN/export."""
    sd, info = ckpt.consolidated_state_dict(ckpt_dir, prefer_ema=cfg.train.ema is not None)
    task.setup(run_dir)
    return ckpt.write_export(run_dir, cfg, task, sd, step=info["step"], engine=_engine_name(cfg), weights=info["weights"])


def _engine_name(cfg) -> str:
    ds = cfg.distributed.deepspeed
    return f"deepspeed-zero{ds.zero_stage}-{ds.precision}" if ds.enabled else "ddp"


# ============================================================================================== worker


def worker_loop(config: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer (runs in every worker; the process group is up)."""
    import ray.train
    import ray.train.torch

    setup_logging()
    cfg = load_dict(config["cfg"], source="train_loop_config")
    run_dir = Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    configure_torch(cfg.train, device)
    tc, ds = cfg.train, cfg.distributed.deepspeed
    accum = ds.gradient_accumulation_steps
    bf16 = ds.enabled and ds.precision == "bf16"

    task = resolve_task(cfg, config.get("task_factory"))
    task.setup(run_dir)
    seed_model_init(cfg.seed)
    model = task.build_model()
    restored = _newest_checkpoint(run_dir, cfg, ray.train.get_checkpoint())
    if config.get("init_from") and restored is None:
        load_init_weights(model, config["init_from"], cfg.model.kind)
    params = trainable_parameters(task, model)
    streams = RankStreams(cfg.seed, rank, device)

    if ds.enabled:
        import deepspeed

        from mobscale.train.deepspeed_cfg import build

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        engine, _, _, sched = deepspeed.initialize(
            model=model,
            model_parameters=params,
            config=build(cfg, world, use_gpu=device.type == "cuda", n_params=sum(p.numel() for p in params)),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(tc)),
            dist_init_required=False,
        )
        wrapped, opt = engine, None
    else:
        wrapped = ray.train.torch.prepare_model(model)
        opt = make_optimizer(params, tc)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(tc))
    plain = unwrap(wrapped)
    ema = make_ema(plain, tc.ema) if rank == 0 else None  # parameters are replicated (ZeRO <= 2): one EMA

    step = 0
    if restored is not None:
        with restored.as_directory() as d:
            step = _restore(Path(d), cfg, rank, world, wrapped, plain, opt, sched, ema, streams)
        log.info("resumed from step %d (%s)", step, restored.path)

    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=step, enabled=rank == 0)

    def checkpoint(at: int, reported: dict) -> None:
        with tempfile.TemporaryDirectory(prefix=f"mobscale-ckpt-r{rank}-") as tmp:
            d = Path(tmp)
            _save(d, at, cfg, rank, world, wrapped, plain, opt, sched, ema, streams)
            ray.train.report({"step": at, **reported}, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=ckpt.step_name(at))
        if rank == 0:  # report() returns once every rank's part is persisted
            ckpt.record_last(run_dir, at, run_dir / cfg.name / ckpt.step_name(at))

    if step >= tc.steps:
        log.info("already trained to step %d (train.steps=%d)", step, tc.steps)
        return

    loader = make_loader(task, task.dataset("train", rank, world), tc, seed=cfg.seed, rank=rank, start_sample=step * tc.batch_size * accum, pin_memory=device.type == "cuda")
    batches = iter(loader)
    request = run_dir / CHECKPOINT_REQUEST
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    wrapped.train()
    keys: list[str] | None = None
    acc = None
    n_acc, t_last, s_last = 0, time.perf_counter(), step
    from tqdm.auto import tqdm

    with tqdm(total=tc.steps, initial=step, desc=f"train {cfg.name}", unit="step", disable=rank != 0, mininterval=10.0) as bar:
        while step < tc.steps:
            lr = sched.get_last_lr()[0]
            loss_sum, info_sum = 0.0, {}
            for micro in range(accum):
                batch = batch_to(next(batches), device, torch.bfloat16 if bf16 else None)
                sync = contextlib.nullcontext() if ds.enabled or micro == accum - 1 else wrapped.no_sync()
                with sync:
                    with autocast:
                        loss, info = task.loss(wrapped, batch, streams.loss)
                    if ds.enabled:
                        wrapped.backward(loss)  # scales by 1/accum itself
                        wrapped.step()  # applies the update only at the accumulation boundary
                    else:
                        (loss / accum).backward()
                loss_sum += loss.item() / accum
                for k, v in info.items():
                    info_sum[k] = info_sum.get(k, 0.0) + float(v) / accum
            if not ds.enabled:
                max_norm = tc.grad_clip if tc.grad_clip is not None else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            else:
                gn = wrapped.get_global_grad_norm()
                grad_norm = float(gn) if gn is not None else float("nan")
            if ema is not None:
                ema.update_parameters(plain)
            step += 1
            bar.update(1)

            # one small collective per step: rank-mean of the metrics + whether rank 0 saw a checkpoint request
            if keys is None:
                keys = ["loss", *sorted(info_sum)]
            vals = torch.tensor([loss_sum, *(info_sum.get(k, 0.0) for k in keys[1:]), float(rank == 0 and request.exists())], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(vals)
            vals = vals.cpu().tolist()
            if not all(map(_finite, vals[:-1])):
                raise FloatingPointError(f"{run_dir}: non-finite metrics {dict(zip(keys, vals))} at step {step}")
            means = {k: v / world for k, v in zip(keys, vals[:-1])}
            requested = vals[-1] > 0
            means["grad_norm"] = grad_norm
            acc = {k: acc.get(k, 0.0) + v for k, v in means.items()} if acc else dict(means)
            n_acc += 1
            if step % tc.log_every == 0 or step == tc.steps:
                now = time.perf_counter()
                rec = {"step": step, "lr": lr, **{k: v / n_acc for k, v in acc.items()}}
                rec["samples_per_s"] = (step - s_last) * tc.batch_size * accum * world / max(now - t_last, 1e-9)
                rec.update(memory_mb(device))  # rank 0's (the writer's) peak memory
                metrics.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4g}", lr=f"{lr:.2e}", refresh=False)
                acc, n_acc, t_last, s_last = None, 0, now, step
            if step % tc.checkpoint_every == 0 or step == tc.steps or requested:
                checkpoint(step, {"loss": means["loss"]})
                if requested and rank == 0:
                    request.unlink(missing_ok=True)
                    log.info("checkpoint of step %d written on request", step)
    del batches, loader


def _newest_checkpoint(run_dir: Path, cfg, reported):
    """The checkpoint to resume from (and, after training, to export): Ray's latest, unless
    RUN/last_checkpoint.json names a newer one.

    Ray's controller records a reported checkpoint asynchronously; a job killed right after a preemption
    checkpoint was persisted (e.g. SLURM requeue) restarts with Ray knowing only the one before. Rank 0 writes
    last_checkpoint.json only after ``ray.train.report`` returned on every rank, so the folder it names is
    complete.
    """
    import ray.train

    ours = ckpt.last_path(run_dir)
    if ours is None or ours.parent != run_dir / cfg.name or not (ours / "state.json").exists():
        return reported
    if reported is not None:
        with reported.as_directory() as d:
            if ckpt.read_state(Path(d))["step"] >= ckpt.read_state(ours)["step"]:
                return reported
    log.info("using %s, newer than the latest checkpoint Ray recorded", ours)
    return ray.train.Checkpoint.from_directory(str(ours))


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _save(d: Path, step: int, cfg, rank: int, world: int, wrapped, plain, opt, sched, ema, streams: RankStreams) -> None:
    """This rank's part of a distributed checkpoint (layout in mobscale.train.checkpoint)."""
    ds = cfg.distributed.deepspeed
    if ds.enabled:
        wrapped.save_checkpoint(str(d), tag=ckpt.DS_TAG, client_state={"step": step})  # collective
        if ds.zero_stage == 0 and rank == 0:
            ckpt.atomic_save(plain.state_dict(), d / "module.pt")
    elif rank == 0:
        ckpt.atomic_save({"model": plain.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, d / "train_state.pt")
    ckpt.save_rng(d, rank, streams.state())
    if rank == 0:
        if ema is not None:
            ckpt.atomic_save(ema.state_dict(), d / "ema.pt")
        ckpt.write_state(d, step=step, world_size=world, engine="deepspeed" if ds.enabled else "ddp", zero_stage=ds.zero_stage if ds.enabled else None, precision=ds.precision if ds.enabled else "fp32", kind=cfg.model.kind)


def _restore(d: Path, cfg, rank: int, world: int, wrapped, plain, opt, sched, ema, streams: RankStreams) -> int:
    """Load this rank's state from a merged checkpoint folder; returns its step."""
    meta = ckpt.read_state(d)
    ds = cfg.distributed.deepspeed
    engine = "deepspeed" if ds.enabled else "ddp"
    if meta["engine"] != engine or (ds.enabled and meta.get("zero_stage") != ds.zero_stage):
        raise CheckpointError(f"{d}: written by {meta['engine']} (zero_stage={meta.get('zero_stage')}), this run uses {engine} (zero_stage={ds.zero_stage if ds.enabled else None}); use --init-from RUN/export to switch")
    if meta["world_size"] != world:
        raise CheckpointError(f"{d}: written by {meta['world_size']} workers, this run has {world}; resume with --workers {meta['world_size']} or start a new run with --init-from RUN/export")
    if ds.enabled:
        path, _ = wrapped.load_checkpoint(str(d), tag=ckpt.DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"{d}: DeepSpeed found no checkpoint under tag '{ckpt.DS_TAG}'")
    else:
        state = ckpt.torch_load(d / "train_state.pt")
        plain.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    streams.load(ckpt.load_rng(d, rank))
    if ema is not None:
        if not (d / "ema.pt").exists():
            raise CheckpointError(f"{d}: has no ema.pt but train.ema={cfg.train.ema}")
        ema.load_state_dict(ckpt.torch_load(d / "ema.pt"))
    return int(meta["step"])
