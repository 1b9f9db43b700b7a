"""Model registry: ``model.kind`` -> the function that builds the network.

``build_model(cfg, data_info)`` is the one entry point the training tasks, the sampler and transfer use.
``data_info`` carries the facts about the data a network is shaped by (saved with the export so sampling
rebuilds the same network); the keys a builder reads:

  "patch":        P, patch side in 50 m pixels
  "hours":        L, window length in finest (1 h) steps
  "stages":       [[spatial level, temporal resolution], ...] of the DRDM plan, coarse -> fine (ZoomDiff)
  "n_aoi", "n_house_road", "n_poi": context vocabulary sizes (categories / POI channels)

csdi / dit read "patch", "hours" and the vocabularies; the statistical kinds (historical, context_profile) read
nothing: their statistics' shapes come from the data they are fitted on (or the state dict they load).
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from mobscale.errors import ConfigError

#: kind -> "module:function(cfg, data_info) -> nn.Module" (imported lazily)
MODELS: dict[str, str] = {
    "zoomdiff": "mobscale.model.zoomdiff:build",
    "csdi": "mobscale.model.csdi:build",
    "dit": "mobscale.model.dit:build",
    "mstdiff": "mobscale.model.mstdiff:build",
    "csdi_users": "mobscale.model.csdi_users:build",  # reads "seq_len", "steps_per_day"
    # fitted statistics (unfitted until StatisticalModel.fit or load_state_dict)
    "historical": "mobscale.model.statistical:build",
    "context_profile": "mobscale.model.statistical:build",
}


def require(data_info: dict, key: str) -> Any:
    """data_info[key], or a ConfigError naming the missing key."""
    try:
        return data_info[key]
    except KeyError:
        raise ConfigError(f"data_info lacks '{key}' (has: {', '.join(sorted(data_info)) or 'nothing'})") from None


def build_model(cfg, data_info: dict) -> nn.Module:
    """The network for ``cfg.model.kind``, shaped by ``data_info``."""
    kind = cfg.model.kind
    try:
        target = MODELS[kind]
    except KeyError:
        raise ConfigError(f"no model registered for model.kind={kind} (known: {', '.join(MODELS)})") from None
    mod, _, fn = target.partition(":")
    return getattr(importlib.import_module(mod), fn)(cfg, data_info)
