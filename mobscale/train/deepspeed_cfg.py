"""The one place where a run config becomes a DeepSpeed JSON config.

Inputs: ``cfg.train`` (micro-batch, lr, weight decay, clipping) and ``cfg.distributed.deepspeed`` (ZeRO stage,
precision, optimizer offload, gradient accumulation), plus whether workers have GPUs. The optimizer is
DeepSpeed's AdamW with the same betas/eps as the local loop (mobscale.train.engine_utils); the lr schedule is
not in the JSON: the engines pass the shared LambdaLR so every engine follows the same curve.

Choices and why:

* ``torch_adam: true`` everywhere except ZeRO-Offload on GPU workers: on CPU it avoids JIT-compiling
  DeepSpeed's ``cpu_adam`` (~105 s) for no gain (the "offload" target *is* the CPU), and it is the plain
  ``torch.optim.AdamW``, which keeps DeepSpeed runs numerically comparable to DDP. With GPUs and offload,
  DeepSpeedCPUAdam is what makes offload fast, so it is used there.
* bf16 needs ZeRO >= 1: the export consolidates fp32 master weights with DeepSpeed's ``zero_to_fp32``, which
  reads ZeRO partitions (ZeRO-0's bf16 optimizer writes a layout it does not read). fp16 is not offered (no
  loss scaling on CPU, and bf16 needs none).
* EMA (train.ema) needs fp32 weights and ZeRO <= 2 (replicated parameters; rank 0 keeps the average).
* ZeRO buckets scale with the model (:func:`bucket_elements`) instead of DeepSpeed's fixed 500 M elements.
* ``steps_per_print`` is huge: our engine logs metrics itself; DeepSpeed's own per-step prints would interleave.
"""

from __future__ import annotations

from mobscale.errors import ConfigError
from mobscale.train.engine_utils import ADAMW_BETAS, ADAMW_EPS


#: DeepSpeed's own default bucket (elements) and our floor
_DS_DEFAULT_BUCKET = 500_000_000
_MIN_BUCKET = 2**20


def build(cfg, world_size: int, use_gpu: bool | None = None, n_params: int | None = None) -> dict:
    """DeepSpeed config dict for ``cfg`` on ``world_size`` data-parallel workers.

    ``n_params`` (trainable elements) sizes the ZeRO communication buckets; None keeps DeepSpeed's defaults.
    """
    ds = cfg.distributed.deepspeed
    tc = cfg.train
    gpu = cfg.distributed.use_gpu if use_gpu is None else use_gpu
    if ds.precision == "bf16" and ds.zero_stage == 0:
        raise ConfigError("distributed.deepspeed.precision=bf16 needs zero_stage >= 1 (fp32 master weights are consolidated from ZeRO partitions)")
    if cfg.train.ema is not None and ds.precision == "bf16":
        # the EMA follows the bf16 module weights; (1 - decay) * (w - ema) vanishes in bf16's 8-bit mantissa
        raise ConfigError("train.ema needs distributed.deepspeed.precision=fp32 (a bf16 EMA barely moves)")
    if cfg.train.ema is not None and ds.zero_stage == 3:
        raise ConfigError("train.ema is not supported with distributed.deepspeed.zero_stage=3 (parameters are partitioned); use zero_stage <= 2")
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")

    zero: dict = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        # gloo (CPU) cannot overlap reduction with backward; NCCL can
        zero.update({"contiguous_gradients": True, "overlap_comm": bool(gpu)})
        if n_params is not None:
            bucket = bucket_elements(n_params)
            zero.update({"reduce_bucket_size": bucket, "allgather_bucket_size": bucket})
            if ds.zero_stage == 3:
                zero["stage3_prefetch_bucket_size"] = bucket
    if ds.offload_optimizer:
        if ds.zero_stage == 0:
            raise ConfigError("distributed.deepspeed.offload_optimizer needs zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bool(gpu)}

    return {
        "train_micro_batch_size_per_gpu": tc.batch_size,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "train_batch_size": tc.batch_size * ds.gradient_accumulation_steps * world_size,
        "gradient_clipping": float(tc.grad_clip) if tc.grad_clip is not None else 0.0,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": tc.lr,
                "betas": list(ADAMW_BETAS),
                "eps": ADAMW_EPS,
                "weight_decay": tc.weight_decay,
                "torch_adam": not (gpu and ds.offload_optimizer),
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def bucket_elements(n_params: int) -> int:
    """ZeRO reduce/all-gather bucket: a quarter of the trainable parameters, within [1 Mi, 500 M] elements.

    DeepSpeed's fixed 500 M-element default allocates a 2 GB fp32 gradient buffer per rank whatever the model
    size; for a 17 M-parameter model that made ZeRO-2 use 3x DDP's memory and run 7x slower on CPU
    (jobs/bench_train.py). A quarter of the model keeps ZeRO-2's gradient sharding (a bucket is freed once
    reduced) at four reductions per step.
    """
    return int(min(_DS_DEFAULT_BUCKET, max(_MIN_BUCKET, n_params // 4)))
