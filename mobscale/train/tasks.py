"""Registry: ``model.kind`` -> the Task class that trains it (imported lazily; see mobscale.train.task)."""

from __future__ import annotations

import importlib

from mobscale.errors import ConfigError

TASKS = {
    "zoomdiff": "mobscale.train.zoomdiff_task:ZoomDiffTask",
    "csdi": "mobscale.train.zoomdiff_task:BaselineTask",
    "dit": "mobscale.train.zoomdiff_task:BaselineTask",
    "mstdiff": "mobscale.train.mstdiff_task:MSTDiffTask",
    "csdi_users": "mobscale.train.mstdiff_task:CSDIUsersTask",  # MSTDiff Table I's per-user traffic baseline
    # fitted, not trained: the engine calls task.fit(run_dir) instead of the gradient loop
    "historical": "mobscale.train.zoomdiff_task:StatisticalTask",
    "context_profile": "mobscale.train.zoomdiff_task:StatisticalTask",
}


def make_task(cfg):
    """Instantiate the Task for ``cfg.model.kind``."""
    try:
        target = TASKS[cfg.model.kind]
    except KeyError:
        raise ConfigError(f"no training task for model.kind={cfg.model.kind} (known: {', '.join(TASKS)})") from None
    mod, _, cls = target.partition(":")
    return getattr(importlib.import_module(mod), cls)(cfg)
