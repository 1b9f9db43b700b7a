"""The exported model: weights + resolved config + normalisation statistics, enough to sample with nothing else.

Layout of an export folder (``RUN/export``)::

    model.pt      torch.save({"format", "kind", "config_yaml", "state_dict", "normalisation", "extra_json"})
    config.yaml   the resolved run config (same text as inside model.pt, for people)
    meta.json     format, kind, parameter count, training step, source run

``model.pt`` holds only tensors, strings and numbers, so it loads with ``torch.load(weights_only=True)``
(checkpoints are untrusted input). It is a consolidated, unsharded state dict: independent of how many
workers or which ZeRO stage trained it (nanoGPT's rule: the model's arguments travel inside the checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mobscale.errors import CheckpointError

EXPORT_FORMAT = "mobscale-export/1"


@dataclass
class Export:
    kind: str
    config_yaml: str
    state_dict: dict[str, torch.Tensor]
    normalisation: dict[str, torch.Tensor | float | str]
    extra: dict = field(default_factory=dict)

    @property
    def config(self):
        """The run config, validated (mobscale.config.RunConfig)."""
        import yaml

        from mobscale.config import load_dict

        return load_dict(yaml.safe_load(self.config_yaml), source="checkpoint config")


def save_export(path: str | Path, *, kind: str, config_yaml: str, state_dict: dict, normalisation: dict, extra: dict | None = None) -> Path:
    """Write an export folder atomically (model.pt written to a temp name, then renamed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    norm = {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in normalisation.items()}
    payload = {
        "format": EXPORT_FORMAT,
        "kind": kind,
        "config_yaml": config_yaml,
        "state_dict": sd,
        "normalisation": norm,
        "extra_json": json.dumps(extra or {}, sort_keys=True),
    }
    tmp = path / ".model.pt.tmp"
    torch.save(payload, tmp)
    tmp.replace(path / "model.pt")
    (path / "config.yaml").write_text(config_yaml)
    n_params = int(sum(v.numel() for v in sd.values()))
    meta = {"format": EXPORT_FORMAT, "kind": kind, "parameters": n_params, **(extra or {})}
    (path / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return path


def load_export(path: str | Path) -> Export:
    """Load an export folder (or its model.pt) with ``weights_only=True``; clear errors when it is not one."""
    path = Path(path)
    f = path / "model.pt" if path.is_dir() else path
    if not f.exists():
        raise CheckpointError(f"{path}: no exported model here (expected {f}); train with `mobscale train --out RUN` and pass RUN/export")
    try:
        payload = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle/zip errors of many types for damaged files
        raise CheckpointError(f"{f}: cannot be read as a mobscale export ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{f}: not a {EXPORT_FORMAT} file (format={payload.get('format') if isinstance(payload, dict) else type(payload).__name__})")
    return Export(
        kind=payload["kind"],
        config_yaml=payload["config_yaml"],
        state_dict=payload["state_dict"],
        normalisation=payload["normalisation"],
        extra=json.loads(payload.get("extra_json") or "{}"),
    )
