"""Window generators of the baselines (the interface of mobscale.sample.generators, registered there in
``GENERATORS``): an export turned into "context windows -> generated densities".

* :class:`DiffusionBaselineGenerator` (csdi, dit): K = 1 stage [("grid50", "1h")], DDPM ancestral sampling, or
  DDIM with ``steps_per_stage`` steps. Refinement models (``model.cond_level``) have K = 2 stages
  [(cond_level, "1h"), ("grid50", "1h")] and only refine (``mobscale refine --level <cond_level>``).
* :class:`StatisticalGenerator` (historical, context_profile): K = 4 stages, every level at 1 h; ``generate``
  draws the finest level from the fitted statistics, ``refine=(k, coarse)`` splits level k with
  ``model.refine`` (uniform, mean_share, population, zeros).

Both return (B, K, L, P, P) linear densities (MB per pixel per hour); window b's randomness comes from
``generators[b]`` alone.
"""

from __future__ import annotations

import torch

from mobscale.errors import CheckpointError, ConfigError
from mobscale.log import get_logger
from mobscale.model.export import Export
from mobscale.sample.generators import to_device

log = get_logger(__name__)


def _window(info: dict, path_hint: str) -> tuple[int, int]:
    try:
        return int(info["patch"]), int(info["hours"])
    except KeyError as e:
        raise CheckpointError(f"{path_hint}: export extra 'data_info' lacks {e}; re-export the run") from None


class DiffusionBaselineGenerator:
    """CSDI-/DiT-style export -> windows of the 50 m level (and, for refinement models, the given coarse level)."""

    def __init__(self, export: Export, device: str = "cpu"):
        from mobscale.data.windows import Normaliser
        from mobscale.diffusion.gaussian import GaussianDiffusion
        from mobscale.model.registry import build_model

        self.export, self.kind = export, export.kind
        cfg = export.config
        self.cfg = cfg
        info = export.extra.get("data_info")
        if info is None:
            raise CheckpointError(f"{export.kind} export has no 'data_info' (was it written by mobscale train?)")
        self.model = build_model(cfg, info)
        self.model.load_state_dict(export.state_dict)
        self.model.eval().to(device)
        self.device = torch.device(device)
        self.norm = Normaliser.from_state(export.normalisation)
        self.process = GaussianDiffusion(cfg.diffusion)
        self.cond_level = cfg.model.cond_level
        # what a normalised clean value can be: traffic >= 0, and (exports since z_max) at most the training max + 1 std
        z_max = getattr(self.norm, "z_max", None)
        self.x0_range = (float(self.norm.forward(torch.zeros(()))), float("inf") if z_max is None else float(z_max))
        self.stages = ([(self.cond_level, "1h")] if self.cond_level else []) + [("grid50", "1h")]
        self.patch, self.hours = _window(info, export.kind)

    @torch.no_grad()
    def generate(self, batch: dict, generators: list[torch.Generator], steps_per_stage: int | None = None,
                 eta: float = 0.0, refine: tuple[int, torch.Tensor] | None = None, nest: bool = False) -> torch.Tensor:
        """(B, K, L, P, P) linear densities; see the module docstring."""
        cond = to_device(batch, self.device)
        B = cond["hour"].shape[0]
        shape = (B, self.hours, self.patch, self.patch)
        if self.cond_level is None:
            if refine is not None:
                raise ConfigError(
                    f"this {self.kind} model generates the 50 m level only; for a refinement baseline train it with "
                    "model.cond_level=<level> (the coarse density becomes an input channel)"
                )
        else:
            if refine is None:
                raise ConfigError(f"this {self.kind} model refines {self.cond_level} traffic into 50 m: use `mobscale refine --level {self.cond_level}`")
            k, coarse = refine
            if k != 0:
                raise ConfigError(f"this {self.kind} model refines from stage 0 ({self.cond_level}), got stage {k}")
            if tuple(coarse.shape) != shape:
                raise ConfigError(f"coarse density has shape {tuple(coarse.shape)}, expected {shape}")
            coarse = coarse.to(self.device).float()
            cond["coarse"] = self.norm.forward(coarse)
        # DDIM with m steps is this model's "fast sampler" (its only stage); None = full ancestral DDPM
        x = self.process.sample(self.model, cond, shape, generator=generators, steps=steps_per_stage, eta=eta, device=self.device,
                                x0_range=self.x0_range)
        fine = self.norm.inverse(x.float())
        if not bool(torch.isfinite(fine).all()):  # finite in the normalised space, but expm1 overflowed
            raise FloatingPointError(
                f"{self.kind}: generated traffic overflows float32 (normalised values up to {float(x.abs().max()):.3g}); "
                "the model is untrained or diverged"
            )
        out = [fine] if self.cond_level is None else [coarse, fine]
        return torch.stack(out, 1).cpu()


class StatisticalGenerator:
    """historical / context_profile export -> windows of every level at 1 h (see mobscale.model.statistical)."""

    def __init__(self, export: Export, device: str = "cpu"):
        from mobscale.data.windows import Normaliser
        from mobscale.model.registry import build_model
        from mobscale.model.statistical import STAGES

        self.export, self.kind = export, export.kind
        cfg = export.config
        self.cfg = cfg
        info = export.extra.get("data_info")
        if info is None:
            raise CheckpointError(f"{export.kind} export has no 'data_info' (was it written by mobscale train?)")
        self.model = build_model(cfg, info)
        self.model.load_state_dict(export.state_dict)
        if not self.model.fitted:
            raise CheckpointError(f"{export.kind} export holds no fitted statistics")
        # the statistics are looked up and split on the CPU: no network, nothing for an accelerator to do
        self.device = torch.device("cpu")
        self.norm = Normaliser.from_state(export.normalisation)
        self.stages = list(STAGES)
        self.patch, self.hours = _window(info, export.kind)

    @torch.no_grad()
    def generate(self, batch: dict, generators: list[torch.Generator], steps_per_stage: int | None = None,
                 eta: float = 0.0, refine: tuple[int, torch.Tensor] | None = None, nest: bool = False) -> torch.Tensor:
        """(B, 4, L, P, P) linear densities. ``steps_per_stage``, ``eta`` and ``nest`` do not apply (no sampler chain)."""
        from mobscale.model.statistical import stage_stack

        batch = to_device(batch, self.device)
        units = batch["units"]
        if refine is None:
            fine = self.model.generate(batch, generators, self.norm)
            return stage_stack(fine, units)
        k, coarse = refine
        coarse = coarse.to(self.device).float()
        fine = self.model.split(int(k), coarse, batch)
        return stage_stack(fine, units, (int(k), coarse))
