"""MSTDiff: joint per-user traffic (wavelets + VQ-VAE, Gaussian diffusion) and trajectory (discrete diffusion)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mobscale.config.base import Section


class MSTDiffDiffusionConfig(Section):
    """Both noise processes of MSTDiff (same step count, separate schedules)."""

    kind: Literal["mstdiff"] = "mstdiff"
    steps: int = Field(50, ge=2)
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.2, gt=0, lt=1)
    rate_start: float = Field(0.01, gt=0, description="trajectory transition rate alpha_1 (geometric schedule)")
    rate_end: float = Field(0.1, gt=0, description="trajectory transition rate alpha_S")
    posterior: Literal["exact", "reference"] = Field("exact", description="'reference' reproduces the public code's wrong posterior (ablation)")


class MSTDiffModelConfig(Section):
    kind: Literal["mstdiff"] = "mstdiff"
    width: int = Field(64, ge=8)
    heads: int = Field(4, ge=1)
    layers_per_scale: int = Field(1, ge=1)
    wavelet: str = "db1"
    wavelet_level: int = Field(3, ge=1)
    codebook_size: int = Field(128, ge=2)
    code_dim: int = Field(32, ge=1)
    commitment: float = Field(0.25, ge=0)
    kg_neighbours: int = Field(5, ge=1, description="top-K nearest KG-embedding neighbours (k in B=(A+A^T)/2K)")
    kg_max_distance_km: float | None = Field(3.0, description="distance threshold for neighbours; None = no threshold")
    kg_dim: int = Field(32, ge=2, description="TuckER embedding dimension")
    kg_epochs: int = Field(50, ge=1)
    lambda_mse: float = 1.0
    lambda_kl: float = 1.0
    lambda_ce: float = 0.1
    use_trajectory: bool = True
    use_traffic: bool = True
    freeze_vqvae: bool = True
    vq_pretrain_steps: int = Field(500, ge=0)
