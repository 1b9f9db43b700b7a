"""A tiny Task for engine tests: epsilon-prediction on fixed random vectors with a small MLP.

It exercises what the engines must handle for real tasks without knowing them: a prepare() that writes a
file workers read in setup(), data sharded by rank, randomness drawn from the loss generator, dropout (global
RNG), a buffer, normalisation and export extras. Items are a pure function of the index (the engines'
contract). ``FailOnceToyTask`` raises once on rank 1 to exercise Ray Train's FailureConfig.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

DIM = 16
N_ITEMS = 64


class ToyData(torch.utils.data.Dataset):
    """Items ``indices`` of a fixed seeded table: x (DIM,) float32, pure function of the index."""

    def __init__(self, table: torch.Tensor, indices: list[int]):
        self.table, self.indices = table, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.table[self.indices[i]]}


class ToyNet(torch.nn.Module):
    """MLP eps(x_t, t): (B, DIM), (B,) -> (B, DIM), with dropout and a running-mean buffer."""

    def __init__(self, width: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(DIM + 1, width), torch.nn.SiLU(), torch.nn.Dropout(0.1),
            torch.nn.Linear(width, width), torch.nn.SiLU(), torch.nn.Linear(width, DIM),
        )
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen += 1
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


class ToyTask:
    """Implements mobscale.train.task.Task."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.stats: dict | None = None

    def prepare(self, run_dir: Path) -> None:
        g = torch.Generator().manual_seed(1234)
        table = torch.randn(N_ITEMS, DIM, generator=g) * 2.0 + 0.5
        torch.save(table, Path(run_dir) / "toy_table.pt")
        (Path(run_dir) / "toy_stats.json").write_text(json.dumps({"mean": float(table.mean()), "std": float(table.std())}))

    def setup(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.stats = json.loads((self.run_dir / "toy_stats.json").read_text())
        table = torch.load(self.run_dir / "toy_table.pt", weights_only=True)
        self.table = (table - self.stats["mean"]) / self.stats["std"]

    def build_model(self) -> torch.nn.Module:
        return ToyNet(self.cfg.model.width)

    def dataset(self, split: str, rank: int = 0, world: int = 1) -> torch.utils.data.Dataset:
        return ToyData(self.table, list(range(rank, N_ITEMS, world)))

    def loss(self, model, batch, generator=None):
        x0 = batch["x"]
        dev = x0.device
        t = torch.rand(x0.shape[0], generator=generator, device=dev)
        noise = torch.randn(x0.shape, generator=generator, device=dev).to(x0.dtype)
        a = (1 - t)[:, None].to(x0.dtype)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        err = (model(xt, t) - noise).float().pow(2).mean()
        return err, {"t_mean": float(t.mean())}

    def normalisation(self) -> dict:
        return {"mean": self.stats["mean"], "std": self.stats["std"]}

    def export_extra(self) -> dict:
        return {"toy": True}


class FailOnceToyTask(ToyTask):
    """Raises on rank 1 at its 7th loss call, once per run folder (a marker file remembers)."""

    FAIL_AT_CALL = 7

    def setup(self, run_dir: Path) -> None:
        super().setup(run_dir)
        self.calls = 0

    def dataset(self, split: str, rank: int = 0, world: int = 1):
        self.rank = rank
        return super().dataset(split, rank, world)

    def loss(self, model, batch, generator=None):
        self.calls += 1
        marker = self.run_dir / "toy_failed_once"
        if self.rank == 1 and self.calls == self.FAIL_AT_CALL and not marker.exists():
            marker.write_text(str(os.getpid()))
            raise RuntimeError("toy worker failure (injected once)")
        return super().loss(model, batch, generator)


class SubsetToyTask(ToyTask):
    """Few-shot style: only the last layer trains."""

    def trainable_parameters(self, model):
        from mobscale.train.engine_utils import unwrap

        return list(unwrap(model).net[-1].parameters())


class SlowToyTask(ToyTask):
    """ToyTask taking ~0.25 s per loss call, so a test can interrupt it mid-run; same numbers as ToyTask."""

    def loss(self, model, batch, generator=None):
        import time

        time.sleep(0.25)
        return super().loss(model, batch, generator)
