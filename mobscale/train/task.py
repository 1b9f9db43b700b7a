"""The contract between a model family and the training engines.

The single-process loop (``mobscale.train.loop``) and the distributed Ray Train + DeepSpeed engine
(``mobscale.train.ray_job``) both drive a :class:`Task`; a model family (ZoomDiff, CSDI, DiT, MSTDiff)
implements one and registers it in ``mobscale.train.tasks.TASKS`` under its ``model.kind``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Task(Protocol):
    """What a model family provides to the training engines.

    Call order: ``prepare(run_dir)`` once on the driver (makes/opens data, fits normalisation on the
    training split only, writes anything workers need under run_dir); then on each worker
    ``setup(run_dir)``, ``build_model()``, ``dataset("train", rank, world)``; then ``loss`` per batch;
    ``normalisation()`` and ``export_extra()`` go into the export next to the weights.
    """

    cfg: Any

    def prepare(self, run_dir: Path) -> None: ...

    def setup(self, run_dir: Path) -> None: ...

    def build_model(self) -> torch.nn.Module: ...

    def dataset(self, split: str, rank: int = 0, world: int = 1) -> torch.utils.data.Dataset: ...

    def loss(self, model: torch.nn.Module, batch: Any, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]: ...

    def normalisation(self) -> dict[str, Any]: ...

    def export_extra(self) -> dict[str, Any]: ...
