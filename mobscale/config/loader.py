"""YAML loading with ``include:`` composition and ``--set`` overrides, then validation into RunConfig."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mobscale.errors import ConfigError

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _resolve_include(name: str, including: Path) -> Path:
    cand = (including.parent / name).resolve()
    if cand.exists():
        return cand
    cand2 = (CONFIG_ROOT / name).resolve()
    if cand2.exists():
        return cand2
    raise ConfigError(f"{including}: included fragment '{name}' not found (looked in {including.parent} and {CONFIG_ROOT})")


def compose(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read ``path`` and merge its ``include:`` fragments (recursively, in order) under its own keys."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"include cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    data = _read_yaml(path)
    includes = data.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict = {}
    for inc in includes:
        merged = _deep_merge(merged, compose(_resolve_include(inc, path), (*_seen, path)))
    return _deep_merge(merged, data)


def parse_overrides(items: list[str] | None) -> dict:
    """``["train.steps=10", "model.width=32"]`` -> nested dict; values parsed as YAML (so 10 is int)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set: malformed key '{key}'")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set: '{key}' conflicts with another override")
        node[parts[-1]] = value
    return out


def _format_validation(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors()[:8]:
        loc = ".".join(str(x) for x in err["loc"])
        lines.append(f"{loc}: {err['msg']}")
    more = "" if len(e.errors()) <= 8 else f" (+{len(e.errors()) - 8} more)"
    return f"invalid config {source}: " + "; ".join(lines) + more


def load_dict(data: dict, source: str = "<dict>"):
    """Validate a plain dict into a RunConfig, with a one-line error naming each bad key."""
    from mobscale.config.run import RunConfig

    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, source)) from None


def load(path: str | Path, overrides: list[str] | dict | None = None):
    """Load a run config: compose includes, apply ``--set`` overrides, validate."""
    data = compose(path)
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    data = _deep_merge(data, over)
    return load_dict(data, str(path))


def dump(cfg, path: str | Path | None = None) -> str:
    """Resolved config as YAML (written to ``path`` when given)."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text
