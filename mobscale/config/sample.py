"""Sampling section (used by `mobscale sample` / `refine`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mobscale.config.base import Section


class SampleConfig(Section):
    """Defaults for generation; CLI flags override them."""

    seed: int = 0
    steps_per_stage: int | None = Field(None, description="fast sampler: DDIM steps per stage; None = full ancestral")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta for the fast sampler (0 = deterministic)")
    batch_size: int = Field(16, ge=1)
    reconcile: bool = Field(
        False, description="scale the finest output top-down so its BS and cell totals equal the model's BS- and cell-level "
        "stage outputs (written levels are exact sums of their children either way; without it the root levels are the "
        "finest output's own sums, which scored better at every level, results/README.md 'Combining windows'). "
        "`mobscale refine` always reconciles to the given coarse traffic")
    num_samples: int = Field(1, ge=1)
    overlap: int = Field(4, ge=0, description="pixels of overlap between neighbouring patches")
    blend: Literal["ramp", "core"] = Field(
        "core", description="how overlapping patches combine: 'ramp' = weighted mean (no seams, but the mean of independent "
        "samples is smoother than one); 'core' = each pixel from the patch with the nearest centre (every pixel keeps one "
        "sample's spread; seams where patches meet). mobscale.sample.tiles")
