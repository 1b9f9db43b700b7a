"""ZoomDiff's shared denoiser (paper Sec. IV-B4): one network for every DRDM stage.

Input per item: the noisy stage state x (L, P, P), the global diffusion step n, the stage index k, and the
batch's conditions. The conditions (UEC context + StPE) are summed in a ``width``-d embedding and coarsened
to the stage's resolution (mean over its spatial units and time blocks, the operator of the targets), then
added to the embedded x. A stack of factorised space-time blocks mixes across time (attention over the L
steps of each pixel) and across space (attention over the P*P pixels of each step), each sub-layer modulated
by the step + stage embedding (adaLN-Zero, DiT-style: every block starts as the identity). The output layer
maps back to one channel: eps_theta (L, P, P).

Prior-noise fusion (``fusion="mlp"``, paper Sec. V-D1): a per-pixel MLP of latent size D on [eps_theta,
eps_prior], told the step and stage, added as a residual to eps_theta (zero-initialised, so training starts
from the "w/o PN" model). It runs inside ``forward`` so that one call of the (DDP / DeepSpeed-wrapped) model
does all the learned work; the noise math that produces eps_prior stays in mobscale.diffusion.drdm.

Model contract (mobscale.diffusion.drdm.Denoiser): ``forward(x, n, stage, cond, eps_prior=None)``
  x: (B, L, P, P) float32; n, stage: (B,) int64; cond: the batch dict with "context" (aoi, house_road, poi,
  population; see encoders.ContextEncoder), "units" (B, 4, P, P) int64 and "hour" (B, L) int64;
  eps_prior: (B, L, P, P) or None. Returns (B, L, P, P): eps_theta, or the fused estimate when eps_prior is
  given (items without a prior are returned unfused: cond["has_prior"] (B,) bool when the process sets it,
  else those with stage == 0).

Profile prior (DRDMConfig.profile_prior): the fitted statistical reference lives in ``stat_prior`` as buffers, so
it travels with the weights in checkpoints and exports; :meth:`profile` evaluates it on a batch (the noise math
that turns it into each stage's prior stays in mobscale.diffusion.drdm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mobscale.config.zoomdiff import ZoomDiffModelConfig
from mobscale.data.schema import SPATIAL_LEVELS, STANDARD_RESOLUTIONS, TEMPORAL_RESOLUTIONS
from mobscale.errors import ConfigError, InputDataError
from mobscale.model.encoders import ContextEncoder, SpatioTemporalPE, coarsen, sinusoidal
from mobscale.model.registry import require


class Attention(nn.Module):
    """Multi-head self-attention over the second-to-last axis of (N, S, W) (SDPA: flash kernels on GPU)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ConfigError(f"model.width={width} is not divisible by model.heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        N, S, W = h.shape
        q, k, v = self.qkv(h).view(N, S, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(a.transpose(1, 2).reshape(N, S, W))


def _modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return h * (1 + scale) + shift


class SpaceTimeBlock(nn.Module):
    """Temporal attention, spatial attention and an MLP on h: (B, L, S, W), S = P*P, each pre-normed and
    modulated by e: (B, W) (shift, scale, gate per sub-layer; gates start at 0)."""

    def __init__(self, width: int, heads: int, dropout: float, mlp_ratio: int = 4):
        super().__init__()
        self.norm_t = nn.LayerNorm(width, elementwise_affine=False)
        self.attn_t = Attention(width, heads, dropout)
        self.norm_s = nn.LayerNorm(width, elementwise_affine=False)
        self.attn_s = Attention(width, heads, dropout)
        self.norm_m = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_ratio * width, width))
        self.mod = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))
        nn.init.zeros_(self.mod[1].weight)
        nn.init.zeros_(self.mod[1].bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        B, L, S, W = h.shape
        m = self.mod(e).view(B, 1, 1, 9, W).unbind(3)
        # time: sequences of L steps, one per (item, pixel)
        u = _modulate(self.norm_t(h), m[0], m[1]).transpose(1, 2).reshape(B * S, L, W)
        h = h + m[2] * self.attn_t(u).view(B, S, L, W).transpose(1, 2)
        # space: sequences of S pixels, one per (item, step)
        u = _modulate(self.norm_s(h), m[3], m[4]).reshape(B * L, S, W)
        h = h + m[5] * self.attn_s(u).view(B, L, S, W)
        return h + m[8] * self.mlp(_modulate(self.norm_m(h), m[6], m[7]))


class PriorFusion(nn.Module):
    """Learned fusion of eps_theta and eps_prior per pixel in a D-dim latent (paper: converges at D = 32):
    eps_hat = eps_theta + g([eps_theta, eps_prior], e), g zero at initialisation."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.inp = nn.Linear(2, dim)
        self.cond = nn.Linear(width, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, eps_theta: torch.Tensor, eps_prior: torch.Tensor, e: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """has: (B,) bool, the items that have a prior (fused); the others are returned unfused."""
        B = eps_theta.shape[0]
        f = torch.stack([eps_theta, eps_prior], dim=-1)  # (B, L, P, P, 2)
        h = F.silu(self.inp(f) + self.cond(e).view(B, 1, 1, 1, -1))
        fused = eps_theta + self.out(F.silu(self.hidden(h))).squeeze(-1)
        return torch.where(has.view(B, 1, 1, 1), fused, eps_theta)


class ZoomDiffDenoiser(nn.Module):
    """The shared denoiser; see the module docstring for the forward contract.

    stages: [(spatial level, temporal resolution)] of the DRDM plan, coarse -> fine (the stage index the
    process passes selects one); patch: P; n_aoi, n_house_road, n_poi: context vocabulary sizes; fusion /
    fusion_dim: DRDMConfig.fusion and .fusion_dim.
    """

    def __init__(self, cfg: ZoomDiffModelConfig, *, stages: list[tuple[str, str]], patch: int, n_aoi: int, n_house_road: int, n_poi: int, fusion: str = "none", fusion_dim: int = 32,
                 profile_prior: str = "none", has_population: bool = True):
        super().__init__()
        if not stages:
            raise ConfigError("ZoomDiff model needs at least one stage")
        for lvl, res in stages:
            if lvl not in SPATIAL_LEVELS or res not in STANDARD_RESOLUTIONS:
                raise ConfigError(f"ZoomDiff model: unknown stage ({lvl}, {res})")
        W = cfg.width
        self.cfg, self.patch = cfg, patch
        self.stage_pairs = [tuple(p) for p in stages]
        levels = list(dict.fromkeys(lvl for lvl, _ in stages))  # distinct spatial levels, plan order: one SPE each
        # per-stage lookup tables (buffers: they move with the model, and are not trained)
        self.register_buffer("stage_level", torch.tensor([SPATIAL_LEVELS.index(l) for l, _ in stages]), persistent=False)
        self.register_buffer("stage_spe", torch.tensor([levels.index(l) for l, _ in stages]), persistent=False)
        self.register_buffer(
            "stage_block", torch.tensor([TEMPORAL_RESOLUTIONS[r] // TEMPORAL_RESOLUTIONS["1h"] for _, r in stages]), persistent=False
        )
        self.inp = nn.Linear(1, W)
        self.prior_inp = nn.Linear(1, W) if cfg.prior_input else None
        self.context = ContextEncoder(cfg.context_dim, n_aoi, n_house_road, n_poi) if cfg.use_context else None
        self.context_proj = nn.Linear(cfg.context_dim, W) if cfg.use_context else None
        self.pe = SpatioTemporalPE(W, patch, len(levels), cfg.tpe_dim, cfg.spe_dim, cfg.use_tpe, cfg.use_spe, cfg.tpe_periodic) if (cfg.use_tpe or cfg.use_spe) else None
        self.step_dim = max(32, 2 * (W // 2))
        self.step_mlp = nn.Sequential(nn.Linear(self.step_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.stage_emb = nn.Embedding(len(stages), W)
        self.blocks = nn.ModuleList(SpaceTimeBlock(W, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        self.norm_out = nn.LayerNorm(W, elementwise_affine=False)
        self.mod_out = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.out = nn.Linear(W, 1)
        for lin in (self.mod_out[1], self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.fusion = PriorFusion(W, fusion_dim) if fusion == "mlp" else None
        self.stat_prior = None
        if profile_prior != "none":
            from mobscale.config.baselines import ContextProfileModelConfig, HistoricalModelConfig
            from mobscale.model.statistical import StatisticalModel

            # noise-free: the prior is the reference's mean; the diffusion supplies the variation around it
            pcfg = (HistoricalModelConfig(noise="none", refine="uniform") if profile_prior == "historical" else
                    ContextProfileModelConfig(noise="none", refine="uniform", denominator="population" if has_population else "pixel"))
            self.stat_prior = StatisticalModel(pcfg)

    @torch.no_grad()
    def profile(self, batch: dict, normaliser) -> torch.Tensor | None:
        """The profile prior's traffic for a batch of windows (context, units, hour, origin): (B, L, P, P) linear
        density at the finest level, on the batch's device; None for a model without one. ``normaliser``: the
        run's Normaliser (the historical profile is a mean in its space)."""
        if self.stat_prior is None:
            return None
        B = batch["hour"].shape[0]
        return self.stat_prior.generate(batch, [None] * B, normaliser).to(batch["hour"].device)

    @property
    def K(self) -> int:
        return len(self.stage_pairs)

    def conditions(self, cond: dict, stage: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        """Context + StPE embedded to width and coarsened to each item's stage: (B, L, P, P, W)."""
        B, L, P, _ = shape
        W = self.cfg.width
        units = cond["units"]
        if units.shape[-3:] != (len(SPATIAL_LEVELS), P, P):
            raise InputDataError(f"cond 'units' has shape {tuple(units.shape)}, expected (B, {len(SPATIAL_LEVELS)}, {P}, {P})")
        h = torch.zeros(B, L, P, P, W, device=units.device, dtype=self.inp.weight.dtype)
        if self.context is not None:
            h = h + self.context_proj(self.context(cond["context"]))
        if self.pe is not None:
            hour = cond["hour"]
            if hour.shape != (B, L):
                raise InputDataError(f"cond 'hour' has shape {tuple(hour.shape)}, expected ({B}, {L})")
            h = h + self.pe(hour, self.stage_spe[stage], P)
        rows = torch.arange(B, device=units.device)
        return coarsen(h, units[rows, self.stage_level[stage]], self.stage_block[stage])

    def embed_step(self, n: torch.Tensor, stage: torch.Tensor) -> torch.Tensor:
        """Step + stage embedding e: (B, W)."""
        return self.step_mlp(sinusoidal(n, self.step_dim).to(self.stage_emb.weight.dtype)) + self.stage_emb(stage)

    def forward(self, x: torch.Tensor, n: torch.Tensor, stage: torch.Tensor, cond: dict, eps_prior: torch.Tensor | None = None) -> torch.Tensor:
        B, L, P, P2 = x.shape
        if P != self.patch or P2 != self.patch:
            raise InputDataError(f"input patch {P}x{P2} does not match the model's {self.patch}x{self.patch}")
        if int(stage.min()) < 0 or int(stage.max()) >= self.K:
            raise ValueError(f"stage index outside [0, {self.K})")
        e = self.embed_step(n, stage)
        h = self.inp(x.unsqueeze(-1)) + self.conditions(cond, stage, (B, L, P, P))
        if self.prior_inp is not None and cond.get("prior_z") is not None:
            h = h + self.prior_inp(cond["prior_z"].to(h.dtype).unsqueeze(-1))
        h = h.reshape(B, L, P * P, -1)
        for blk in self.blocks:
            h = blk(h, e)
        shift, scale = self.mod_out(e).view(B, 1, 1, 2, -1).unbind(3)
        eps_theta = self.out(_modulate(self.norm_out(h), shift, scale)).view(B, L, P, P)
        if eps_prior is None:
            return eps_theta
        if self.fusion is None:
            raise ConfigError("eps_prior given to a ZoomDiff model built without the learned fusion (diffusion.fusion != 'mlp')")
        has = cond.get("has_prior") if isinstance(cond, dict) else None
        return self.fusion(eps_theta, eps_prior, e, stage > 0 if has is None else has.to(stage.device))


def build(cfg, data_info: dict) -> ZoomDiffDenoiser:
    """Build from a RunConfig (``cfg.model``: ZoomDiffModelConfig, ``cfg.diffusion``: DRDMConfig) and the
    data facts of mobscale.model.registry.build_model."""
    stages = require(data_info, "stages")
    return ZoomDiffDenoiser(
        cfg.model,
        stages=[tuple(s) for s in stages],
        patch=int(require(data_info, "patch")),
        n_aoi=int(require(data_info, "n_aoi")),
        n_house_road=int(require(data_info, "n_house_road")),
        n_poi=int(require(data_info, "n_poi")),
        fusion=cfg.diffusion.fusion,
        fusion_dim=cfg.diffusion.fusion_dim,
        profile_prior=cfg.diffusion.profile_prior,
        has_population=bool(data_info.get("has_population", True)),
    )
