"""Training and distributed-execution sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mobscale.config.base import Section


class TrainConfig(Section):
    """Optimisation settings (single process and per worker in distributed runs)."""

    steps: int = Field(2000, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="micro-batch per worker")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, description="max grad norm; None = no clipping")
    warmup_steps: int = Field(50, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    ema: float | None = Field(None, description="EMA decay of weights used for sampling; None = off")
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    deterministic: bool = Field(True, description="torch deterministic algorithms (bit-reproducible on CPU)")
    threads: int | None = Field(None, description="torch intra-op threads; None = torch default")


class DeepSpeedConfig(Section):
    """DeepSpeed options; the DeepSpeed JSON config is generated from these in one place (train/deepspeed_cfg.py)."""

    enabled: bool = Field(True, description="wrap the model with DeepSpeed (False = plain DDP)")
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["fp32", "bf16"] = "fp32"
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state and step on CPU")
    gradient_accumulation_steps: int = Field(1, ge=1)


class DistributedConfig(Section):
    """How many workers, on what, with what failure tolerance."""

    workers: int = Field(1, ge=1, description="Ray Train workers (one process each)")
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=1)
    max_failures: int = Field(1, ge=0, description="Ray Train FailureConfig: worker-group restarts from the last checkpoint")
    keep_checkpoints: int = Field(2, ge=1)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    # SLURM (used by `--nodes`): partition and limits for the submitit job
    partition: str | None = None
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_node: int | None = None
    time_min: int = Field(60, ge=1)
    mem_gb: int | None = None
    rendezvous_timeout_s: float = Field(600.0, gt=0, description="multi-node jobs: how long the Ray head waits for the other nodes (and they for it) before the job fails")
