"""Window generators: an exported model turned into "context windows -> generated densities".

Every traffic model family exposes the same surface to the city-scale sampler:

    gen = load_generator(EXPORT)           # weights + config + normalisation, nothing else needed
    gen.stages                             # [(level, resolution), ...] coarse -> fine; the last is the finest
    gen.patch, gen.hours                   # window size P (pixels) and L (hours)
    gen.generate(batch, generators, steps_per_stage=None, eta=0.0, refine=None, nest=False) -> (B, K, L, P, P)

``batch`` is a collated ``ContextWindows`` batch (context, units, hour, origin); ``generators`` holds one
``torch.Generator`` per window, so a window's output depends only on its own seed. The output holds, per
stage, the per-pixel, per-hour density in linear traffic units (MB per pixel per hour), piecewise constant at
the stage's level. ``refine=(k, coarse)`` starts from the given linear density of stage k (B, L, P, P) and
generates the finer stages; the coarser stages are returned as projections of the given coarse traffic. ``nest``
(ZoomDiff only) scales each stage to the previous one's unit totals inside the sampler (``DRDM.nest``).

Model families register their generator class in ``GENERATORS`` (import path, loaded lazily).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import torch

from mobscale.errors import CheckpointError
from mobscale.model.export import Export, load_export

GENERATORS = {
    "zoomdiff": "mobscale.sample.generators:ZoomDiffGenerator",
    "csdi": "mobscale.sample.baseline_generators:DiffusionBaselineGenerator",
    "dit": "mobscale.sample.baseline_generators:DiffusionBaselineGenerator",
    "historical": "mobscale.sample.baseline_generators:StatisticalGenerator",
    "context_profile": "mobscale.sample.baseline_generators:StatisticalGenerator",
}


class WindowGenerator(Protocol):
    kind: str
    stages: list[tuple[str, str]]
    patch: int
    hours: int
    export: Export

    def generate(self, batch: dict, generators: list[torch.Generator], steps_per_stage: int | None = None,
                 eta: float = 0.0, refine: tuple[int, torch.Tensor] | None = None, nest: bool = False) -> torch.Tensor: ...


def load_generator(path: str | Path, device: str = "cpu") -> WindowGenerator:
    exp = load_export(path)
    try:
        target = GENERATORS[exp.kind]
    except KeyError:
        raise CheckpointError(f"{path}: model kind '{exp.kind}' cannot generate city traffic (known: {', '.join(GENERATORS)})") from None
    mod, _, cls = target.partition(":")
    return getattr(importlib.import_module(mod), cls)(exp, device=device)


class ZoomDiffGenerator:
    """ZoomDiff: one DRDM reverse pass gives every stage's output."""

    def __init__(self, export: Export, device: str = "cpu"):
        from mobscale.data.windows import Normaliser
        from mobscale.diffusion.drdm import DRDM
        from mobscale.model.registry import build_model

        self.export = export
        self.kind = export.kind
        cfg = export.config
        self.cfg = cfg
        info = export.extra["data_info"]
        self.model = build_model(cfg, info)
        self.model.load_state_dict(export.state_dict)
        self.model.eval().to(device)
        self.device = torch.device(device)
        self.norm = Normaliser.from_state(export.normalisation)
        self.process = DRDM(cfg.diffusion)
        self.stages = [tuple(s) for s in self.process.plan.pairs]
        self.patch, self.hours = int(info["patch"]), int(info["hours"])

    def prior_fn(self, cond: dict):
        """For a model trained with a profile prior (DRDMConfig.profile_prior): the stage priors of this batch
        (DRDM.profile_prior bound to the reference's traffic of these windows), as in training; else None."""
        lin = self.model.profile(cond, self.norm)
        if lin is None:
            return None
        return lambda k, prev: self.process.profile_prior(k, prev, lin, cond["units"], self.norm)

    @torch.no_grad()
    def generate(self, batch, generators, steps_per_stage=None, eta=0.0, refine=None, nest=False):
        dev = self.device
        cond = to_device(batch, dev)
        units = cond["units"]
        B = units.shape[0]
        shape = (B, self.hours, self.patch, self.patch)
        kw = dict(generator=generators, units=units, normaliser=self.norm, steps_per_stage=steps_per_stage, eta=eta, device=dev, nest=nest)
        if refine is not None:
            k, coarse = refine
            res = self.process.sample(self.model, cond, shape, start_stage=k, coarse=self.norm.forward(coarse.to(dev)),
                                      prior_fn=self.prior_fn(cond), **kw)
            for j in range(k):  # coarser stages: projections of the given coarse traffic
                res.endpoints[j] = self.process.project(res.endpoints[k], j, units, self.norm)
        else:
            res = self.process.sample(self.model, cond, shape, prior_fn=self.prior_fn(cond), **kw)
        out = torch.stack([self.norm.inverse(res.endpoints[k].float()) for k in range(len(self.stages))], 1)
        return out.cpu()


def to_device(batch: dict, dev: torch.device) -> dict:
    """A (nested) batch dict with every tensor moved to ``dev``."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = to_device(v, dev)
        elif torch.is_tensor(v):
            out[k] = v.to(dev)
        else:
            out[k] = v
    return out
