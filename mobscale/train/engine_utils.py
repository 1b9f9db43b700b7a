"""Pieces shared by every training engine (single process, Ray Train + DDP, Ray Train + DeepSpeed).

The engines differ only in how gradients are synchronised and how state is sharded; everything that decides
*what* is trained on and *in which order* lives here, so that a run is the same curve whichever engine drives
it and whether or not it was interrupted:

* which Task trains (``resolve_task``: the registry or a ``module:Class`` override for tests and plug-ins);
* the random streams (``RankStreams``): per rank, one generator for the loss (diffusion steps and noise), the
  global torch RNG (dropout), numpy and ``random``, all derived from ``cfg.seed`` and the rank and saved in
  every checkpoint;
* the order of samples (``ResumableSampler``): an infinite stream of per-epoch permutations that restarts
  at any number of consumed samples without replaying the data;
* the learning-rate schedule (``LrSchedule``), the AdamW hyper-parameters, EMA construction;
* the metrics file (``MetricsLog``), truncated to the resumed step so a resumed run has one curve.

Contract for tasks (beyond mobscale.train.task.Task): a dataset item must be a pure function of its index
(randomness belongs in ``Task.loss`` through the generator it is given), otherwise a resumed run cannot
reproduce the uninterrupted one. ``Task.loss`` receives the *wrapped* model (DDP / DeepSpeed engine): call it,
and use :func:`unwrap` to reach attributes.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobscale.errors import CheckpointError, ConfigError
from mobscale.log import get_logger

log = get_logger(__name__)

#: AdamW hyper-parameters not in the config; one definition so the local loop, DDP and DeepSpeed agree.
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8

#: config keys that may change between the first run and a resumed run in the same folder
RESUMABLE_CHANGES = (
    "train.steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.num_workers",
    "train.threads",
    "distributed.keep_checkpoints",
    "distributed.max_failures",
    "distributed.cpus_per_worker",
    "distributed.partition",
    "distributed.time_min",
    "distributed.mem_gb",
    "distributed.cpus_per_node",
    "distributed.gpus_per_node",
)


# ----------------------------------------------------------------------------------------------- tasks


def load_object(target: str, what: str = "object") -> Any:
    """Import ``"package.module:Name"`` and return ``Name``; ConfigError naming the target when it fails."""
    mod, sep, name = target.partition(":")
    if not sep or not mod or not name:
        raise ConfigError(f"{what} must be 'module:Name', got '{target}'")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise ConfigError(f"{what} '{target}': cannot import module '{mod}' ({e})") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigError(f"{what} '{target}': module '{mod}' has no attribute '{name}'") from None


def resolve_task(cfg, task_factory: str | None = None):
    """The Task for ``cfg``: ``task_factory`` ("module:Class", called with cfg) or the registry's make_task."""
    if task_factory:
        return load_object(task_factory, "task factory")(cfg)
    from mobscale.train.tasks import make_task

    return make_task(cfg)


def trainable_parameters(task, model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters to optimise: ``task.trainable_parameters(model)`` when the task has that hook (few-shot
    transfer trains a subset), else all of them. Parameters outside the subset get ``requires_grad=False`` so
    DDP and DeepSpeed neither wait for nor reduce their gradients."""
    hook = getattr(task, "trainable_parameters", None)
    if hook is None:
        return [p for p in model.parameters() if p.requires_grad]
    chosen = list(hook(model))
    if not chosen:
        raise ConfigError(f"{type(task).__name__}.trainable_parameters returned no parameters")
    ids = {id(p) for p in chosen}
    own = {id(q) for q in model.parameters()}
    foreign = [p for p in chosen if id(p) not in own]
    if foreign:
        raise ConfigError(f"{type(task).__name__}.trainable_parameters returned {len(foreign)} tensors that are not parameters of the model")
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in chosen)
    log.info("training %d of %d parameters (%.1f%%) per %s.trainable_parameters", n_train, n_all, 100.0 * n_train / max(n_all, 1), type(task).__name__)
    return chosen


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper or a DeepSpeed engine (both expose it as ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


# ----------------------------------------------------------------------------------------------- torch setup


def configure_torch(train_cfg, device: torch.device | None = None) -> None:
    """Threads and determinism for this process (call before building the model)."""
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    if train_cfg.deterministic:
        if device is not None and device.type == "cuda":
            # cuBLAS needs a fixed workspace to be deterministic; must be set before the first cuBLAS call
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, rank, purpose, ...): independent streams per purpose."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


_PURPOSE_LOSS, _PURPOSE_GLOBAL, _PURPOSE_DATA, _PURPOSE_LOADER = 1, 2, 3, 4


def seed_model_init(seed: int) -> None:
    """Seed the global RNGs identically on every rank right before ``build_model`` (same init everywhere)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RankStreams:
    """The random streams of one rank during training; ``state()``/``load()`` go into checkpoints.

    ``loss`` is the torch.Generator handed to ``Task.loss`` (diffusion steps, noise); the global torch, numpy and
    ``random`` RNGs are re-seeded per rank after model init (dropout differs across ranks, as it should).
    """

    def __init__(self, seed: int, rank: int, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        self.loss = torch.Generator(device=self.device)
        self.loss.manual_seed(derive_seed(seed, rank, _PURPOSE_LOSS))
        g = derive_seed(seed, rank, _PURPOSE_GLOBAL)
        torch.manual_seed(g)
        np.random.seed(g % 2**32)
        random.seed(g)

    def state(self) -> dict:
        """Tensors, ints and tuples only (loads with weights_only=True)."""
        np_state = np.random.get_state()
        out = {
            "loss": self.loss.get_state(),
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
            "random": random.getstate(),
        }
        if self.device.type == "cuda":
            out["cuda"] = torch.cuda.get_rng_state(self.device)
        return out

    def load(self, state: Mapping) -> None:
        try:
            self.loss.set_state(state["loss"])
            torch.set_rng_state(state["torch"])
            n = state["numpy"]
            np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
            random.setstate(_as_tuple(state["random"]))
            if self.device.type == "cuda" and "cuda" in state:
                torch.cuda.set_rng_state(state["cuda"], self.device)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint RNG state is incomplete or from another setup ({type(e).__name__}: {e})") from None


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------------------------- data


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Infinite index stream: epoch e of rank r is a permutation of range(n) drawn from (seed, rank, e).

    ``start`` = samples already consumed; the stream resumes exactly there (epoch = start // n, offset =
    start % n) without touching the data. Training is counted in steps, so ranks whose shards differ in
    length never disagree on how many batches they take.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, start: int = 0, shuffle: bool = True):
        if n <= 0:
            raise ConfigError(f"training dataset of rank {rank} is empty")
        self.n, self.seed, self.rank, self.start, self.shuffle = n, seed, rank, start, shuffle

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.n)
        while True:
            if self.shuffle:
                g = torch.Generator().manual_seed(derive_seed(self.seed, self.rank, _PURPOSE_DATA, epoch))
                order = torch.randperm(self.n, generator=g)[offset:].tolist()
            else:
                order = range(offset, self.n)
            yield from order
            offset, epoch = 0, epoch + 1

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 2**62


def make_loader(task, dataset, train_cfg, *, seed: int, rank: int, start_sample: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """DataLoader over ``dataset`` that yields micro-batches forever, starting after ``start_sample`` samples."""
    if not isinstance(dataset, torch.utils.data.Dataset) or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise ConfigError(
            f"{type(task).__name__}.dataset('train') must return a map-style torch Dataset with __len__ (got {type(dataset).__name__}); "
            "resumable, rank-sharded sampling needs indices"
        )
    nw = train_cfg.num_workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=train_cfg.batch_size,
        sampler=ResumableSampler(len(dataset), seed, rank, start_sample),
        num_workers=nw,
        collate_fn=getattr(task, "collate_fn", None),
        pin_memory=pin_memory,
        # its own generator: creating the iterator would otherwise draw a seed from the global RNG, which a
        # resumed run restores *before* creating it, an uninterrupted one after (dropout would then differ)
        generator=torch.Generator().manual_seed(derive_seed(seed, rank, _PURPOSE_LOADER)),
        drop_last=False,
        persistent_workers=nw > 0,
        prefetch_factor=4 if nw > 0 else None,
    )


def batch_to(batch: Any, device: torch.device, float_dtype: torch.dtype | None = None) -> Any:
    """Move every tensor of a (nested dict/list/tuple) batch to ``device``; cast floating ones to ``float_dtype``."""
    if torch.is_tensor(batch):
        if float_dtype is not None and batch.is_floating_point():
            return batch.to(device=device, dtype=float_dtype, non_blocking=True)
        return batch.to(device=device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: batch_to(v, device, float_dtype) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(batch_to(v, device, float_dtype) for v in batch))
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        return type(batch)(batch_to(v, device, float_dtype) for v in batch)
    return batch


# ----------------------------------------------------------------------------------------------- optimisation


@dataclass
class LrSchedule:
    """lr multiplier after ``step`` optimizer steps: linear warmup to 1 over ``warmup`` steps, then constant or
    cosine decay to 0 at ``total``. A plain object (not a closure) so LambdaLR's state_dict stays loadable with
    weights_only=True."""

    total: int
    warmup: int
    kind: str

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_schedule(train_cfg) -> LrSchedule:
    return LrSchedule(total=train_cfg.steps, warmup=train_cfg.warmup_steps, kind=train_cfg.lr_schedule)


def make_optimizer(params, train_cfg) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=train_cfg.lr, betas=ADAMW_BETAS, eps=ADAMW_EPS, weight_decay=train_cfg.weight_decay)


def make_ema(module: torch.nn.Module, decay: float | None):
    """EMA of the weights (and buffers) used for sampling, or None when ``train.ema`` is off."""
    if decay is None:
        return None
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"train.ema must be in (0, 1), got {decay}")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema


def memory_mb(device: torch.device) -> dict[str, float]:
    """Peak memory of this process so far: resident set (MB) and, on GPU, CUDA memory allocated (MB)."""
    import resource

    out = {"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}  # Linux reports KiB
    if device.type == "cuda":
        out["max_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# ----------------------------------------------------------------------------------------------- run folder


class MetricsLog:
    """``RUN/metrics.jsonl``: one JSON object per logged step. Opening it at ``resume_step`` drops lines from
    beyond that step (written by the interrupted attempt after its last checkpoint), so the file always holds
    one curve."""

    def __init__(self, path: Path, resume_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: beyond any checkpoint by construction
                    continue
                if rec.get("step", 0) <= resume_step:
                    kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        tmp.replace(self.path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl (helper for tests and benchmarks)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def check_same_run(run_dir: Path, cfg) -> None:
    """Refuse to resume ``run_dir`` with a different config (except the keys in RESUMABLE_CHANGES)."""
    import yaml

    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    old = _flatten(yaml.safe_load(saved.read_text()) or {})
    new = _flatten(cfg.model_dump(mode="json"))
    added = sorted(k for k in set(new) - set(old))
    if added:  # a field introduced by a newer mobscale since the run started: its default is the old behaviour
        log.warning("%s/config.yaml predates config keys %s; resuming with their current values", run_dir, ", ".join(added[:6]))
    diff = sorted(k for k in set(old) | set(new) if k in old and old[k] != new.get(k, "<absent>") and k not in RESUMABLE_CHANGES)
    if diff:
        shown = ", ".join(f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in diff[:4])
        more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
        raise ConfigError(f"{run_dir} holds a run with a different config ({shown}{more}); use another --out, or --init-from {run_dir / 'export'} to start from its weights")


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_init_weights(model: torch.nn.Module, init_from: str | Path, kind: str) -> dict:
    """Load an export's weights into ``model`` (few-shot transfer). Returns the export's extra metadata."""
    from mobscale.model.export import load_export

    exp = load_export(init_from)
    if exp.kind != kind:
        raise CheckpointError(f"--init-from {init_from}: export is a '{exp.kind}' model, this run trains '{kind}'")
    try:
        result = model.load_state_dict(exp.state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise CheckpointError(f"--init-from {init_from}: weights do not fit this model's architecture: {first[0].strip()}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)} (e.g. {result.unexpected_keys[0]})")
    if problems:
        raise CheckpointError(f"--init-from {init_from}: weights do not fit this model's architecture: {'; '.join(problems)}")
    log.info("initialised weights from %s (trained %s steps)", init_from, exp.extra.get("step", "?"))
    return exp.extra
