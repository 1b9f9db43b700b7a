"""Typed, validated run configuration.

A run config is YAML. It may ``include:`` fragments (paths relative to the including file, or to the
``configs/`` folder) which are deep-merged in order; the file's own keys override them; then ``--set
key.sub=value`` overrides (values parsed as YAML) are applied; finally the whole thing is validated into a
:class:`RunConfig` (pydantic, ``extra="forbid"``). Every run writes its resolved config next to its outputs.
"""

from __future__ import annotations

from mobscale.config.loader import dump, load, load_dict, parse_overrides
from mobscale.config.run import RunConfig

__all__ = ["RunConfig", "load", "load_dict", "dump", "parse_overrides"]
