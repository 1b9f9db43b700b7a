"""The references every mobscale number is reported beside.

* Single-resolution diffusion baselines on the finest level ("grid50", "1h"), plain DDPM
  (:class:`GaussianConfig`): a CSDI-style network (:class:`CSDIModelConfig`) and a DiT-style one
  (:class:`DiTModelConfig`). With ``cond_level`` set they are the paper's retrained refinement baselines: the
  density of that coarse level is an extra input channel and the model refines it into the 50 m grid.
* Statistical references without gradient training (diffusion ``kind: none``, :class:`NoProcessConfig`):
  ``historical`` (per-pixel profile by time slot + resampled residuals; only meaningful when the test places
  were seen in training, i.e. ``data.windows.split_by=time``) and ``context_profile`` (traffic per person by
  AoI type and time slot, times the pixel's population; works for places with no history). Both also carry a
  refinement reference (``refine``): how ``mobscale refine`` spreads a coarse level over the 50 m pixels.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mobscale.config.base import Section

CoarseLevel = Literal["bs", "cell", "grid100"]
SlotKind = Literal["auto", "hour_of_week", "hour_of_day"]
RefineMethod = Literal["uniform", "mean_share", "population", "zeros"]


class GaussianConfig(Section):
    """Plain DDPM on the finest level (the baselines' noise process)."""

    kind: Literal["gaussian"] = "gaussian"
    steps: int = Field(50, ge=2, description="CSDI uses 50")
    beta_schedule: Literal["linear", "quadratic", "cosine"] = "quadratic"
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.5, gt=0, lt=1, description="CSDI: quadratic 1e-4 -> 0.5")
    clip_x0: float | Literal["data"] | None = Field(
        None,
        description="sampling safeguard (diffusers' clip_sample): clamp every step's clean estimate and step from "
        "it. A number c: to [-c, c] in normalised units; 'data': to the range the data can take, [forward(0), "
        "Normaliser.z_max] (traffic >= 0; training maximum + 1 std); None = off (CSDI). With abar_T ~ 3e-5 (quadratic "
        "1e-4 -> 0.5) the first clean estimates amplify noise-estimate errors ~170x",
    )

    @model_validator(mode="after")
    def _check_clip(self):
        if isinstance(self.clip_x0, float) and self.clip_x0 <= 0:
            raise ValueError(f"diffusion.clip_x0={self.clip_x0} must be positive (or 'data', or null)")
        return self


class NoProcessConfig(Section):
    """No noise process: the statistical references are fitted, not trained by gradient descent."""

    kind: Literal["none"] = "none"


class _DiffusionBaseline(Section):
    """Fields shared by the CSDI- and DiT-style networks."""

    width: int = Field(32, ge=8, description="channels of the residual stream")
    blocks: int = Field(3, ge=1, description="residual blocks")
    heads: int = Field(4, ge=1)
    context_dim: int = Field(16, ge=1, description="latent size of the context encoders (ZoomDiff's UEC encoders)")
    tpe_dim: int = Field(32, ge=2, description="sinusoidal encoding size of the hour of week")
    cond_level: CoarseLevel | None = Field(
        None,
        description="refinement baseline: condition on the hourly density of this coarse level (extra input "
        "channel); the model then refines that level into grid50 (`mobscale refine --level <cond_level>`)",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.width % self.heads:
            raise ValueError(f"model.width={self.width} must be divisible by model.heads={self.heads}")
        if self.tpe_dim % 2:
            raise ValueError(f"model.tpe_dim={self.tpe_dim} must be even (sine and cosine halves)")
        return self


class CSDIModelConfig(_DiffusionBaseline):
    """CSDI-style residual network: per block a transformer over time (the L hours of each pixel) and one over
    features (the P*P pixels of each hour), gated activation, skip connections; step embedding added per
    block; context, hour-of-week and a learned per-pixel embedding as side information."""

    kind: Literal["csdi"] = "csdi"
    spe_dim: int = Field(16, ge=1, description="learned per-pixel (feature) embedding size (CSDI: 16)")
    ff_dim: int = Field(64, ge=8, description="feed-forward size of the two transformer layers (CSDI: 64)")
    step_dim: int = Field(128, ge=2, description="diffusion-step embedding size (CSDI: 128)")


class DiTModelConfig(_DiffusionBaseline):
    """DiT-style transformer on space-time patch tokens (patch_t hours x patch_s x patch_s pixels), adaLN-Zero
    blocks conditioned on the step embedding + the pooled context; the context is also added per token."""

    kind: Literal["dit"] = "dit"
    width: int = Field(64, ge=8)
    blocks: int = Field(4, ge=1)
    patch_t: int = Field(2, ge=1, description="tokens cover patch_t hours x patch_s x patch_s pixels")
    patch_s: int = Field(2, ge=1)
    mlp_ratio: int = Field(4, ge=1)


class HistoricalModelConfig(Section):
    """Per-pixel historical profile: the mean (in the normalised, log1p space) of each pixel's traffic per time
    slot over the training period, plus noise. Needs the same places in training: ``split_by=time``."""

    kind: Literal["historical"] = "historical"
    slot: SlotKind = Field(
        "auto", description="profile time slot; auto = hour_of_week when training covers a whole week, else hour_of_day"
    )
    noise: Literal["residual", "lognormal", "none"] = Field(
        "residual",
        description="residual = resample whole training days of each pixel's log-space residuals (by hour of "
        "day; keeps their temporal and spatial correlation); lognormal = per pixel and hour of day N(mean, std) "
        "of the log-space residual; none = the profile itself",
    )
    max_residual_days: int = Field(28, ge=1, description="training days of residuals kept (the most recent ones)")
    refine: RefineMethod = Field(
        "mean_share",
        description="refinement reference for `mobscale refine`: uniform split, each pixel's mean share of its "
        "parent in the training period, population-weighted split, or all zeros",
    )


class ContextProfileModelConfig(Section):
    """Context profile for places without history: mean traffic per person by AoI type and time slot, times the
    pixel's population at that hour, plus log-normal noise fitted per AoI type and hour of day."""

    kind: Literal["context_profile"] = "context_profile"
    slot: SlotKind = Field("auto", description="as for historical")
    denominator: Literal["population", "pixel"] = Field(
        "population", description="rate per person (times the pixel's population) or per pixel (stores without population)"
    )
    noise: Literal["lognormal", "none"] = "lognormal"
    refine: RefineMethod = Field("population", description="refinement reference for `mobscale refine` (see historical)")
