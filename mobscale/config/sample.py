"""Sampling section (used by `mobscale sample` / `refine`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mobscale.config.base import Section


class SampleConfig(Section):
    """Defaults for generation; CLI flags override them."""

    seed: int = 0
    steps_per_stage: int | None = Field(None, description="fast sampler: DDIM steps per stage; None = full ancestral")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta for the fast sampler (0 = deterministic)")
    batch_size: int = Field(16, ge=1)
    nest_stages: bool = Field(
        False, description="ZoomDiff: scale each stage's output to the previous stage's unit totals inside the sampler, "
        "before it becomes the next stage's prior, so every stage keeps the first stage's totals (DRDM.nest). Off by default: "
        "the stages then agree, but the CRPS at cells / 100 m / 50 m was 2-7% worse on both models measured (results/README.md, "
        "'Nesting the stages inside the sampler'). Other generators have no stages to nest and ignore it")
    reconcile: bool = Field(
        True, description="scale the finest output top-down so that its totals equal the model's own stage outputs at "
        "reconcile_levels (written levels are exact sums of their children either way; without it the root levels are the "
        "finest output's own sums). `mobscale refine` always reconciles, to the given coarse traffic")
    reconcile_levels: list[Literal["bs", "cell"]] = Field(
        ["bs"], min_length=1, description="stage outputs the finest output is reconciled to, coarse -> fine. ['bs']: the "
        "BS stage output (the later stages drift in total; on the demo model 7-16% better CRPS than no reconciliation, on "
        "the better-trained models within 1.2% of the best choice at every level); ['bs', 'cell']: also the cell stage "
        "output (the earlier default; the cell stage is less accurate than the finest output's own cell sums). results/README.md, 'Combining windows and levels'")
    num_samples: int = Field(1, ge=1)
    overlap: int = Field(4, ge=0, description="pixels of overlap between neighbouring patches")
    blend: Literal["ramp", "core"] = Field(
        "core", description="how overlapping patches combine: 'ramp' = weighted mean (no seams, but the mean of independent "
        "samples is smoother than one); 'core' = each pixel from the patch with the nearest centre (every pixel keeps one "
        "sample's spread; seams where patches meet). mobscale.sample.tiles")

    @field_validator("reconcile_levels")
    @classmethod
    def _levels_in_order(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"sample.reconcile_levels {v} repeats a level")
        return sorted(v, key=["bs", "cell"].index)
