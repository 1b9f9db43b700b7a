"""CSDI-style denoiser (Tashiro et al. 2021) for one resolution: the 50 m grid at 1 h.

CSDI treats a sample as K features x L time steps and alternates, in every residual block, a transformer over
time (per feature) and one over features (per time step). Here the features are the P*P pixels of a patch.
Each block (CSDI's ``ResidualBlock``): add the projected step embedding; temporal transformer layer over the L
hours of each pixel; feature transformer layer over the P*P pixels of each hour; a 1x1 "mid" projection plus
the projected side information; gated activation sigmoid(gate) * tanh(filter); a 1x1 projection split into a
residual (scaled by 1/sqrt(2)) and a skip output. The skips are summed (scaled by 1/sqrt(blocks)) and mapped
to one channel by a two-layer head whose last layer starts at zero (so eps_theta = 0 at initialisation).

Side information (CSDI: time embedding + feature embedding; here also the urban context): the sinusoidal
encoding of the hour of week, a learned per-pixel embedding (the "feature embedding") and ZoomDiff's context
encoders (:class:`mobscale.model.encoders.ContextEncoder`) at 50 m, concatenated per (hour, pixel). For the
refinement variant (``model.cond_level``) the coarse level's density is a second input channel, as CSDI feeds
its observed values.

Model contract (mobscale.diffusion.gaussian.GaussianDiffusion): ``forward(x, t, cond)``
  x: (B, L, P, P) float32 noisy normalised traffic; t: (B,) int64 diffusion steps; cond: a collated
  CityWindows / ContextWindows batch with "context" (aoi (B, P, P), house_road (B, P, P), poi (B, C, P, P),
  population (B, L, P, P)) and "hour" (B, L) int64 hour of week, plus "coarse" (B, L, P, P) normalised when
  the model refines. Returns eps_theta (B, L, P, P).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mobscale.errors import ConfigError, InputDataError
from mobscale.model.encoders import ContextEncoder, sinusoidal
from mobscale.model.registry import require


def check_inputs(model: nn.Module, x: torch.Tensor, cond: dict) -> torch.Tensor | None:
    """Shape checks shared by the baselines; returns cond["coarse"] for refinement models (else None)."""
    B, L, P, P2 = x.shape
    if (L, P, P2) != (model.hours, model.patch, model.patch):
        raise InputDataError(f"input window {L} h x {P}x{P2} px does not match the model's {model.hours} h x {model.patch}x{model.patch} px")
    hour = cond["hour"]
    if tuple(hour.shape) != (B, L):
        raise InputDataError(f"cond 'hour' has shape {tuple(hour.shape)}, expected ({B}, {L})")
    if not model.refines:
        return None
    coarse = cond.get("coarse")
    if coarse is None:
        raise InputDataError("this model refines a coarse level (model.cond_level) and needs cond['coarse'] (B, L, P, P)")
    if coarse.shape != x.shape:
        raise InputDataError(f"cond 'coarse' has shape {tuple(coarse.shape)}, expected {tuple(x.shape)}")
    return coarse


class CSDIBlock(nn.Module):
    """One CSDI residual block on h: (B, L, S, C), S = P*P pixels; side: (B, L, S, side_dim); e: (B, step_dim).
    Returns (new h, skip), both (B, L, S, C)."""

    def __init__(self, width: int, side_dim: int, step_dim: int, heads: int, ff_dim: int):
        super().__init__()
        self.step_proj = nn.Linear(step_dim, width)
        # torch's encoder layer is CSDI's get_torch_trans (one layer, gelu); no dropout: the baselines are
        # small and compared at equal footing with ZoomDiff, which trains without it by default
        layer = dict(d_model=width, nhead=heads, dim_feedforward=ff_dim, dropout=0.0, activation="gelu", batch_first=True)
        self.time_layer = nn.TransformerEncoderLayer(**layer)
        self.feature_layer = nn.TransformerEncoderLayer(**layer)
        self.mid = nn.Linear(width, 2 * width)
        self.cond = nn.Linear(side_dim, 2 * width)
        self.out = nn.Linear(width, 2 * width)

    def forward(self, h: torch.Tensor, side: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, S, C = h.shape
        y = h + self.step_proj(e).view(B, 1, 1, C)
        if L > 1:  # time: one sequence of L hours per (item, pixel)
            y = self.time_layer(y.transpose(1, 2).reshape(B * S, L, C)).view(B, S, L, C).transpose(1, 2)
        if S > 1:  # features: one sequence of S pixels per (item, hour)
            y = self.feature_layer(y.reshape(B * L, S, C)).view(B, L, S, C)
        gate, filt = (self.mid(y) + self.cond(side)).chunk(2, dim=-1)
        residual, skip = self.out(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=-1)
        return (h + residual) / math.sqrt(2.0), skip


class CSDIDenoiser(nn.Module):
    """CSDI-style eps-network on (L, P, P) windows; see the module docstring for the forward contract."""

    def __init__(self, cfg, *, patch: int, hours: int, n_aoi: int, n_house_road: int, n_poi: int):
        """cfg: mobscale.config.baselines.CSDIModelConfig; patch P, hours L: the window; n_*: context vocabularies."""
        super().__init__()
        if patch < 1 or hours < 1:
            raise ConfigError(f"CSDI model: window {hours} h x {patch} px is empty")
        C = cfg.width
        self.cfg, self.patch, self.hours = cfg, patch, hours
        self.refines = cfg.cond_level is not None
        self.inp = nn.Linear(2 if self.refines else 1, C)  # CSDI's 1x1 input convolution
        self.step_mlp = nn.Sequential(nn.Linear(cfg.step_dim, cfg.step_dim), nn.SiLU(), nn.Linear(cfg.step_dim, cfg.step_dim), nn.SiLU())
        self.context = ContextEncoder(cfg.context_dim, n_aoi, n_house_road, n_poi)
        self.pixel_emb = nn.Embedding(patch * patch, cfg.spe_dim)
        side_dim = cfg.tpe_dim + cfg.spe_dim + cfg.context_dim
        self.blocks = nn.ModuleList(CSDIBlock(C, side_dim, cfg.step_dim, cfg.heads, cfg.ff_dim) for _ in range(cfg.blocks))
        self.head = nn.Sequential(nn.Linear(C, C), nn.ReLU(), nn.Linear(C, 1))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)

    def side_info(self, cond: dict, B: int) -> torch.Tensor:
        """[TPE(hour), pixel embedding, context] per (hour, pixel): (B, L, S, side_dim)."""
        L, S = self.hours, self.patch * self.patch
        ctx = self.context(cond["context"]).reshape(B, L, S, -1)
        tpe = sinusoidal(cond["hour"], self.cfg.tpe_dim).to(ctx.dtype).view(B, L, 1, -1).expand(B, L, S, -1)
        pix = self.pixel_emb.weight.to(ctx.dtype).view(1, 1, S, -1).expand(B, L, S, -1)
        return torch.cat([tpe, pix, ctx], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        coarse = check_inputs(self, x, cond)
        B, L, P, _ = x.shape
        inp = x.unsqueeze(-1) if coarse is None else torch.stack([x, coarse.to(x.dtype)], dim=-1)
        h = torch.relu(self.inp(inp)).reshape(B, L, P * P, -1)
        e = self.step_mlp(sinusoidal(t, self.cfg.step_dim).to(h.dtype))
        side = self.side_info(cond, B)
        skips = 0.0
        for blk in self.blocks:
            h, skip = blk(h, side, e)
            skips = skips + skip
        out = self.head(skips / math.sqrt(len(self.blocks)))
        return out.view(B, L, P, P)


def build(cfg, data_info: dict) -> CSDIDenoiser:
    """Build from a RunConfig (``cfg.model``: CSDIModelConfig) and the data facts of
    mobscale.model.registry.build_model ("patch", "hours", "n_aoi", "n_house_road", "n_poi")."""
    return CSDIDenoiser(
        cfg.model,
        patch=int(require(data_info, "patch")),
        hours=int(require(data_info, "hours")),
        n_aoi=int(require(data_info, "n_aoi")),
        n_house_road=int(require(data_info, "n_house_road")),
        n_poi=int(require(data_info, "n_poi")),
    )
