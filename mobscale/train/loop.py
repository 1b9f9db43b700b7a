"""Single-process training of a Task (``mobscale train --engine local``).

One process, no Ray, no process group: AdamW with warmup + cosine/constant lr, gradient clipping, gradient
accumulation (``distributed.deepspeed.gradient_accumulation_steps``, so a local run takes the same optimizer
steps as a distributed one with the same global batch), optional EMA. Everything random is seeded from
``cfg.seed`` (mobscale.train.engine_utils), so with ``train.deterministic`` two runs with one seed are
bit-identical on CPU.

Run folder::

    RUN/config.yaml       resolved config (a second run in the same folder must match it)
    RUN/metrics.jsonl     one record per logged step: step, loss, lr, grad_norm, samples_per_s, peak memory,
                          task metrics
    RUN/checkpoints/      step_<8 digits>.pt (model, optimizer, scheduler, EMA, RNG, step), newest N kept
    RUN/export/           the exported model (mobscale.model.export), written at the end

Re-running the same command resumes from the newest checkpoint and continues the same loss curve
(metrics.jsonl is cut back to the checkpoint's step first). Touching ``RUN/.checkpoint_request`` makes the
loop write a checkpoint at the next step boundary (used by preemption handlers).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mobscale.config import dump
from mobscale.errors import CheckpointError
from mobscale.log import get_logger
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
)

log = get_logger(__name__)

CHECKPOINT_REQUEST = ".checkpoint_request"


def train_local(cfg, run_dir: str | Path, *, task_factory: str | None = None, init_from: str | Path | None = None) -> Path:
    """Train ``cfg`` in this process into ``run_dir``; resume when it holds checkpoints. Returns RUN/export."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_same_run(run_dir, cfg)
    device = torch.device("cuda") if cfg.distributed.use_gpu and torch.cuda.is_available() else torch.device("cpu")
    configure_torch(cfg.train, device)
    tc = cfg.train
    accum = cfg.distributed.deepspeed.gradient_accumulation_steps

    task = resolve_task(cfg, task_factory)
    task.prepare(run_dir)
    dump(cfg, run_dir / "config.yaml")
    (run_dir / CHECKPOINT_REQUEST).unlink(missing_ok=True)  # a stale request from a killed attempt
    task.setup(run_dir)
    if callable(getattr(task, "fit", None)):  # fitted statistics (historical, context_profile): no gradient loop
        model = task.fit(run_dir)
        return ckpt.write_export(run_dir, cfg, task, model.state_dict(), step=0, engine="fit", weights="fitted")

    seed_model_init(cfg.seed)
    model = task.build_model().to(device)
    existing = ckpt.list_local(run_dir)
    if init_from and not existing:
        load_init_weights(model, init_from, cfg.model.kind)
    params = trainable_parameters(task, model)
    opt = make_optimizer(params, tc)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(tc))
    ema = make_ema(model, tc.ema)
    streams = RankStreams(cfg.seed, rank=0, device=device)

    step = 0
    if existing:
        step, path = existing[-1]
        state = ckpt.load_local(path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(f"{path}: has no EMA state but train.ema={tc.ema}")
            ema.load_state_dict(state["ema"])
        streams.load(state["rng"])
        log.info("resuming %s from step %d (%s)", run_dir, step, path.name)
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=step)

    def save(at: int) -> Path:
        return ckpt.save_local(
            run_dir,
            at,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "rng": streams.state(),
            },
            keep=cfg.distributed.keep_checkpoints,
        )

    if step < tc.steps:
        loader = make_loader(task, task.dataset("train", 0, 1), tc, seed=cfg.seed, rank=0, start_sample=step * tc.batch_size * accum, pin_memory=device.type == "cuda")
        batches = iter(loader)
        request = run_dir / CHECKPOINT_REQUEST
        model.train()
        acc: dict[str, float] = {}
        n_acc, t_last, s_last = 0, time.perf_counter(), step
        with tqdm(total=tc.steps, initial=step, desc=f"train {cfg.name}", unit="step", dynamic_ncols=True) as bar:
            while step < tc.steps:
                lr = sched.get_last_lr()[0]
                loss_sum, info_sum = 0.0, {}
                for _ in range(accum):
                    batch = batch_to(next(batches), device)
                    loss, info = task.loss(model, batch, streams.loss)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{run_dir}: non-finite loss {loss.item()} at step {step + 1}")
                    (loss / accum).backward()
                    loss_sum += loss.item() / accum
                    for k, v in info.items():
                        info_sum[k] = info_sum.get(k, 0.0) + float(v) / accum
                max_norm = tc.grad_clip if tc.grad_clip is not None else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                bar.update(1)

                for k, v in {"loss": loss_sum, "grad_norm": grad_norm, **info_sum}.items():
                    acc[k] = acc.get(k, 0.0) + v
                n_acc += 1
                if step % tc.log_every == 0 or step == tc.steps:
                    now = time.perf_counter()
                    rec = {"step": step, "lr": lr, **{k: v / n_acc for k, v in acc.items()}}
                    rec["samples_per_s"] = (step - s_last) * tc.batch_size * accum / max(now - t_last, 1e-9)
                    rec.update(memory_mb(device))
                    metrics.write(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4g}", lr=f"{lr:.2e}")
                    acc, n_acc, t_last, s_last = {}, 0, now, step
                requested = request.exists()
                if step % tc.checkpoint_every == 0 or step == tc.steps or requested:
                    path = save(step)
                    ckpt.record_last(run_dir, step, path)
                    if requested:
                        request.unlink(missing_ok=True)
                        log.info("checkpoint %s written on request", path.name)
        del batches, loader  # stop DataLoader workers before export
    elif not (run_dir / "export" / "model.pt").exists():
        log.info("%s already trained to step %d; writing the export", run_dir, step)
    else:
        log.info("%s already trained to step %d (train.steps=%d); refreshing the export", run_dir, step, tc.steps)

    if ema is not None:
        weights, sd = "ema", ckpt.ema_module_state(ema.state_dict())
    else:
        weights, sd = "raw", model.state_dict()
    return ckpt.write_export(run_dir, cfg, task, sd, step=step, engine="local", weights=weights)
