"""Sampling section (used by `mobscale sample` / `refine`)."""

from __future__ import annotations

from pydantic import Field

from mobscale.config.base import Section


class SampleConfig(Section):
    """Defaults for generation; CLI flags override them."""

    seed: int = 0
    steps_per_stage: int | None = Field(None, description="fast sampler: DDIM steps per stage; None = full ancestral")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta for the fast sampler (0 = deterministic)")
    batch_size: int = Field(16, ge=1)
    reconcile: bool = Field(True, description="make every coarser level exactly the sum of its children")
    num_samples: int = Field(1, ge=1)
    overlap: int = Field(4, ge=0, description="pixels of overlap between neighbouring patches (blended)")
