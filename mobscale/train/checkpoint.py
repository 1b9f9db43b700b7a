"""Training checkpoints (resumable state) and the consolidated export written at the end of a run.

Two checkpoint layouts, both loadable with ``torch.load(weights_only=True)`` for every file we write:

* **local** (``mobscale.train.loop``): ``RUN/checkpoints/step_<8 digits>.pt``, one file holding model,
  optimizer, scheduler, EMA, RNG states and step; written atomically (temp name, then rename), the newest
  ``keep`` kept.
* **distributed** (``mobscale.train.ray_job``): one directory per checkpoint, written by every rank into the
  same place and merged by Ray Train (``RUN/<name>/step_<8 digits>/``)::

      state.json            rank 0: format, step, world size, engine (ddp|deepspeed), zero stage, precision
      rng/rank_<r>.pt       every rank: its RankStreams state
      ema.pt                rank 0, when train.ema is on: the EMA module (AveragedModel state dict)
      train_state.pt        ddp: rank 0: model, optimizer, scheduler
      module.pt             deepspeed ZeRO-0: rank 0: the (replicated) module state dict
      ds/, latest           deepspeed: the engine's own sharded checkpoint (zero_pp_rank_<r>_* per rank)

  A DeepSpeed checkpoint only loads on the world size that wrote it; :func:`consolidated_state_dict` turns
  any of them into one fp32 state dict (ZeRO-1/2/3 through DeepSpeed's ``zero_to_fp32``), which is what the
  export holds, so sampling and fine-tuning work on any number of workers.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from mobscale.errors import CheckpointError
from mobscale.log import get_logger

log = get_logger(__name__)

LOCAL_FORMAT = "mobscale-checkpoint/1"
DIST_FORMAT = "mobscale-dist-checkpoint/1"
DS_TAG = "ds"
#: RUN/last_checkpoint.json: step and path of the newest persisted checkpoint (preemption handlers poll it)
LAST_CHECKPOINT = "last_checkpoint.json"
_STEP_RE = re.compile(r"^step_(\d{8})\.pt$")


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with a CheckpointError naming the file when it is unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file missing") from None
    except Exception as e:  # torch raises pickle/zip/unpickling errors of many types for damaged files
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def record_last(run_dir: Path, step: int, path: Path) -> None:
    """Write RUN/last_checkpoint.json (atomically) once the checkpoint of ``step`` at ``path`` is complete."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{LAST_CHECKPOINT}.tmp"
    tmp.write_text(json.dumps({"step": int(step), "path": str(path), "time": time.time()}))
    tmp.replace(run_dir / LAST_CHECKPOINT)


def _last(run_dir: Path) -> dict:
    try:
        rec = json.loads((Path(run_dir) / LAST_CHECKPOINT).read_text())
        return {"step": int(rec["step"]), "path": Path(rec["path"])}
    except (FileNotFoundError, json.JSONDecodeError, KeyError, ValueError, TypeError):
        return {"step": -1, "path": None}


def last_step(run_dir: Path) -> int:
    """Step in RUN/last_checkpoint.json, -1 when there is none yet."""
    return _last(run_dir)["step"]


def last_path(run_dir: Path) -> Path | None:
    """Path in RUN/last_checkpoint.json when it still exists, else None."""
    p = _last(run_dir)["path"]
    return p if p is not None and p.exists() else None


# ----------------------------------------------------------------------------------------------- local


def local_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_local(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete local checkpoint, oldest first."""
    d = local_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_RE.match(p.name))]
    return sorted(found)


def save_local(run_dir: Path, step: int, payload: dict, keep: int) -> Path:
    """Write ``payload`` as the checkpoint of ``step`` and delete all but the newest ``keep``."""
    path = local_dir(run_dir) / f"{step_name(step)}.pt"
    atomic_save({"format": LOCAL_FORMAT, "step": step, **payload}, path)
    for _, old in list_local(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_local(path: Path) -> dict:
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != LOCAL_FORMAT:
        raise CheckpointError(f"{path}: not a {LOCAL_FORMAT} checkpoint")
    return ckpt


# ----------------------------------------------------------------------------------------------- distributed


def write_state(ckpt_dir: Path, **meta) -> None:
    (Path(ckpt_dir) / "state.json").write_text(json.dumps({"format": DIST_FORMAT, **meta}, indent=2, sort_keys=True))


def read_state(ckpt_dir: Path) -> dict:
    f = Path(ckpt_dir) / "state.json"
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt_dir}: not a mobscale distributed checkpoint (no state.json)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: corrupt ({e})") from None
    if meta.get("format") != DIST_FORMAT:
        raise CheckpointError(f"{f}: format {meta.get('format')!r}, expected {DIST_FORMAT}")
    return meta


def save_rng(ckpt_dir: Path, rank: int, state: dict) -> None:
    atomic_save(state, Path(ckpt_dir) / "rng" / f"rank_{rank}.pt")


def load_rng(ckpt_dir: Path, rank: int) -> dict:
    return torch_load(Path(ckpt_dir) / "rng" / f"rank_{rank}.pt")


def ema_module_state(ema_state: dict) -> dict[str, torch.Tensor]:
    """Plain module state dict from an AveragedModel state dict (drops its counter, strips ``module.``)."""
    return {k[len("module."):]: v for k, v in ema_state.items() if k.startswith("module.")}


def consolidated_state_dict(ckpt_dir: Path, prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """One fp32 state dict of the plain module from a distributed checkpoint, whatever wrote it.

    Returns (state_dict, info) with info = state.json plus ``weights``: "ema" or "raw".
    """
    ckpt_dir = Path(ckpt_dir)
    meta = read_state(ckpt_dir)
    if prefer_ema and (ckpt_dir / "ema.pt").exists():
        return {k: v.float() if v.is_floating_point() else v for k, v in ema_module_state(torch_load(ckpt_dir / "ema.pt")).items()}, {**meta, "weights": "ema"}
    engine = meta.get("engine")
    if engine == "ddp":
        sd = torch_load(ckpt_dir / "train_state.pt")["model"]
    elif engine == "deepspeed" and meta.get("zero_stage", 0) == 0:
        sd = torch_load(ckpt_dir / "module.pt")
    elif engine == "deepspeed":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=DS_TAG)
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"{ckpt_dir}: DeepSpeed shards incomplete ({e})") from None
    else:
        raise CheckpointError(f"{ckpt_dir}/state.json: unknown engine {engine!r}")
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, {**meta, "weights": "raw"}


# ----------------------------------------------------------------------------------------------- export


def write_export(run_dir: Path, cfg, task, state_dict: dict, *, step: int, engine: str, weights: str) -> Path:
    """RUN/export: weights + the resolved config + the task's normalisation and extra metadata."""
    from mobscale.config import dump
    from mobscale.model.export import save_export

    extra = dict(task.export_extra() or {})
    ours = {"step": int(step), "source_run": str(Path(run_dir).resolve()), "engine": engine, "weights": weights}
    clash = sorted(set(extra) & set(ours))
    if clash:
        raise CheckpointError(f"{type(task).__name__}.export_extra() uses reserved keys {clash} (set by the training engine)")
    path = save_export(
        Path(run_dir) / "export",
        kind=cfg.model.kind,
        config_yaml=dump(cfg),
        state_dict=state_dict,
        normalisation=task.normalisation(),
        extra={**extra, **ours},
    )
    log.info("exported %s weights of step %d to %s", weights, step, path)
    return path
