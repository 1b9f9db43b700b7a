"""ZoomDiff: the staged DRDM process and its shared denoising network."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mobscale.config.base import Section

SpatialLevel = Literal["bs", "cell", "grid100", "grid50"]
TemporalRes = Literal["1d", "4h", "2h", "1h"]


class DRDMConfig(Section):
    """Denoising Refinement Diffusion (ZoomDiff Sec. IV-B..D).

    Stages run coarse -> fine. ``spatial`` and ``temporal`` list the resolution levels (coarse -> fine);
    ``rgp`` turns them into K stages with step boundaries N = N_0 > N_1 > ... > N_K = 0:

    * ``uniform``: each dimension's levels split the N steps evenly on their own; the stage boundaries are
      the union of both sets of boundaries (so K can exceed max(|S|, |T|));
    * ``fine_greedy``: K = max(|S|, |T|) equal stages; the shorter dimension reaches its finest level early
      and stays there (paper's S3T4 example: (1d,cell) (4h,100m) (2h,50m) (1h,50m));
    * ``coarse_greedy``: K = max(|S|, |T|); the shorter dimension stays coarse longest.

    Schedules (paper Table III; all 8 combinations valid):
    * ``noise``: CN = one continuous schedule over all N steps; SN = the schedule restarts in every stage,
      so the signal coefficient is ~1 at every stage node (noise-free intermediate outputs).
    * ``adding``: CA = every stage noises the finest data; SA = stage k noises its own level x_k.
    * ``denoising``: CD = the reverse chain continues across stage boundaries; SD = each stage restarts from
      its own starting noise.

    Prior noise (eqs. 10-13): for stage k > 1, eps_prior = (x_n - sqrt(abar) z_{k-1}) / sqrt(1 - abar), the
    noise implied if the clean data were the coarser stage z_{k-1} (the training target of stage k-1 in
    training, the previous stage's generated endpoint in sampling). The network output eps_theta is fused
    with it: ``fusion=mlp`` (paper: per-pixel MLP of latent dimension ``fusion_dim`` = D on
    [eps_theta, eps_prior]), ``mix`` (fixed (1-lambda) eps_theta + lambda eps_prior, NPDiff), ``add`` (eq. 13
    literally: eps_theta + P with P = sqrt(abar/(1-abar)) z_{k-1}, eq. 10), or ``none`` (w/o PN).
    """

    kind: Literal["drdm"] = "drdm"
    spatial: list[SpatialLevel] = Field(default_factory=lambda: ["bs", "cell", "grid100", "grid50"])
    temporal: list[TemporalRes] = Field(default_factory=lambda: ["1d", "4h", "2h", "1h"])
    steps: int = Field(200, ge=2, description="total diffusion steps N across all stages")
    rgp: Literal["uniform", "fine_greedy", "coarse_greedy"] = "fine_greedy"
    noise: Literal["SN", "CN"] = "SN"
    adding: Literal["SA", "CA"] = "SA"
    denoising: Literal["SD", "CD"] = "SD"
    beta_schedule: Literal["linear", "quadratic", "cosine"] = "quadratic"
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(
        0.5, gt=0, lt=1,
        description="per-stage (SN) or global (CN) final beta; with 20 steps per stage, quadratic 1e-4 -> 0.5 ends at "
        "abar = 0.015 (near pure noise, as sampling from N(0, I) assumes); 0.2 would end at 0.22",
    )
    fusion: Literal["mlp", "mix", "add", "none"] = "mlp"
    fusion_dim: int = Field(32, ge=1, description="latent dimension D of the fusion MLP (paper: converges at 32)")
    fusion_lambda: float = Field(0.5, ge=0, le=1, description="weight of eps_prior for fusion=mix")
    stage_start: Literal["noise", "prior"] = Field(
        "prior",
        description="SD start of stage k>1: 'noise' = N(0, I) (public code), 'prior' = forward marginal of the "
        "previous endpoint at the stage's last step (matches training when abar_end > 0)",
    )
    project_stages: bool = Field(True, description="project each stage output onto its level (piecewise constant)")
    profile_prior: Literal["none", "context_profile", "historical"] = Field(
        "none",
        description="a statistical reference (mobscale.model.statistical, noise-free) fitted on the training split as "
        "the prior H of eq. 7 (x0 = H + residual). none = the paper: stage 0 has no prior and stage k's prior is "
        "stage k-1. With a reference, stage 0's prior is the reference projected to its level, and (profile_split) "
        "stage k's prior is stage k-1 spread over stage k's units and time blocks by the reference's shares, so the "
        "network learns the departure from the reference instead of the whole traffic. historical needs "
        "data.windows.split_by=time (it only knows the fitted places); context_profile works on new places and "
        "cities. Not in the paper; measured in results/README.md",
    )
    profile_split: bool = Field(
        True,
        description="with profile_prior: stage k > 0's prior is stage k-1 split by the reference's shares (true) or "
        "stage k-1 itself as in the paper (false: the reference then only gives stage 0 its prior)",
    )

    @model_validator(mode="after")
    def _check(self):
        if not self.spatial or not self.temporal:
            raise ValueError("drdm.spatial and drdm.temporal need at least one level each")
        order_s = ["bs", "cell", "grid100", "grid50"]
        order_t = ["1d", "4h", "2h", "1h"]
        if [order_s.index(s) for s in self.spatial] != sorted(order_s.index(s) for s in self.spatial) or len(set(self.spatial)) != len(self.spatial):
            raise ValueError(f"drdm.spatial must be distinct and ordered coarse -> fine ({order_s})")
        if [order_t.index(t) for t in self.temporal] != sorted(order_t.index(t) for t in self.temporal) or len(set(self.temporal)) != len(self.temporal):
            raise ValueError(f"drdm.temporal must be distinct and ordered coarse -> fine ({order_t})")
        if self.steps < 2 * max(len(self.spatial), len(self.temporal)):
            raise ValueError("drdm.steps too small for the number of stages")
        if self.profile_prior != "none" and self.fusion == "none":
            raise ValueError(f"drdm.profile_prior={self.profile_prior} acts through the prior noise, which fusion=none "
                             "switches off (w/o PN): choose fusion mlp, mix or add, or profile_prior=none")
        return self


class ZoomDiffModelConfig(Section):
    """The shared denoiser: context encoders, StPE and factorised space-time blocks."""

    kind: Literal["zoomdiff"] = "zoomdiff"
    width: int = Field(32, ge=8, description="channels of the residual stream")
    blocks: int = Field(3, ge=1, description="space-time blocks (temporal attention + spatial attention + MLP)")
    heads: int = Field(4, ge=1)
    context_dim: int = Field(16, ge=1, description="latent dimension of each context encoder (combined by addition)")
    tpe_dim: int = Field(128, ge=2, description="sinusoidal temporal positional encoding size (paper: 128)")
    spe_dim: int = Field(128, ge=1, description="learnable spatial encoding size per resolution level (paper: 128)")
    use_tpe: bool = True
    tpe_periodic: int = Field(
        0, ge=0, le=12,
        description="add this many daily harmonics (sin/cos of 2 pi k h / 24, k = 1..n) and two weekly ones to the TPE. "
        "0 = the paper's TPE only (eq. 6: 128-d sinusoidal of the hour of week, whose frequencies miss the 24 h period "
        "exactly); measured in results/README.md",
    )
    use_spe: bool = True
    use_context: bool = True
    prior_input: bool = Field(
        True,
        description="the backbone also sees the previous stage's endpoint z_{k-1} as an input channel (zero at "
        "stage 0). The paper feeds the prior only to the per-pixel fusion MLP after the backbone; with it also "
        "at the input the backbone can use the coarse traffic spatially (measured in docs/results; false = paper)",
    )
    dropout: float = Field(0.0, ge=0, lt=1)
    trainable: Literal["all", "transfer"] = Field(
        "all",
        description="parameters trained: all, or the few-shot transfer subset (context encoders, positional, step "
        "and stage embeddings, prior fusion, last block and output head; the paper's Table VII protocol)",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.width % self.heads:
            raise ValueError(f"model.width={self.width} must be divisible by model.heads={self.heads}")
        if self.tpe_dim % 2:
            raise ValueError(f"model.tpe_dim={self.tpe_dim} must be even (sine and cosine halves)")
        return self
