"""Single-resolution diffusion baselines (CSDI-style and DiT-style) and their Gaussian schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mobscale.config.base import Section


class GaussianConfig(Section):
    """Plain DDPM on the finest level (the baselines' noise process)."""

    kind: Literal["gaussian"] = "gaussian"
    steps: int = Field(50, ge=2, description="CSDI uses 50")
    beta_schedule: Literal["linear", "quadratic", "cosine"] = "quadratic"
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.5, gt=0, lt=1, description="CSDI: quadratic 1e-4 -> 0.5")


class CSDIModelConfig(Section):
    """CSDI-style residual network: a transformer over time and one over features (pixels of the patch)."""

    kind: Literal["csdi"] = "csdi"
    width: int = Field(32, ge=8)
    blocks: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    context_dim: int = Field(16, ge=1)


class DiTModelConfig(Section):
    """DiT-style transformer on space-time patch tokens with adaLN-Zero conditioning."""

    kind: Literal["dit"] = "dit"
    width: int = Field(64, ge=8)
    blocks: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    patch_t: int = Field(2, ge=1, description="tokens cover patch_t hours x patch_s x patch_s pixels")
    patch_s: int = Field(2, ge=1)
    context_dim: int = Field(16, ge=1)
