"""CSDI-style denoiser for one per-user traffic series (MSTDiff Table I's single-resolution baseline).

CSDI (Tashiro et al. 2021) sees a sample as K features x L time steps and alternates, in every residual block, a
transformer over time and one over features. A user's traffic is a single series (K = 1): the feature
transformer would attend over one token and is dropped, which leaves CSDI's residual block with its time
transformer (the same block as :class:`mobscale.model.csdi.CSDIBlock` with one pixel). Per block: add the
projected step embedding; one transformer encoder layer over the T steps; a linear "mid" projection plus the
projected side information; gated activation sigmoid(gate) * tanh(filter); a linear output split into a
residual (scaled by 1/sqrt(2)) and a skip. The skips are summed (scaled by 1/sqrt(blocks)) and mapped to one
channel by a two-layer head whose last layer starts at zero (eps_theta = 0 at initialisation).

Side information (CSDI: a 128-d sinusoidal embedding of the time position; its 16-d feature embedding is a
constant for K = 1, i.e. a bias of the side projection, so it is left out): the sinusoid of the step position in
the window and, with ``model.time_of_week`` (default), the daily / weekly Fourier features of the absolute time
of week that MSTDiff's denoiser gets, so both models see the same conditioning.

Model contract (:class:`mobscale.diffusion.gaussian.GaussianDiffusion`): ``forward(x, t, cond)``
  x: (B, T) float32 noisy normalised traffic (``TrafficTransform`` space); t: (B,) int64 diffusion steps;
  cond: {"offset": (B,) int64 time-of-week step of the window start}. Returns eps_theta (B, T) float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mobscale.errors import ConfigError, InputDataError
from mobscale.model.encoders import sinusoidal
from mobscale.model.registry import require

#: periods of the time-of-week Fourier features, in days (week, day, and the day's first harmonics), as MSTDiff
FOURIER_PERIODS_DAYS = (7.0, 1.0, 0.5, 0.25, 0.125)


def time_of_week_features(tau: torch.Tensor, steps_per_day: int) -> torch.Tensor:
    """tau: (...) absolute time-of-week step -> (..., 2 * len(FOURIER_PERIODS_DAYS)) [sin | cos] float32."""
    periods = torch.tensor(FOURIER_PERIODS_DAYS, device=tau.device, dtype=torch.float32) * float(steps_per_day)
    ang = 2 * math.pi * tau.to(torch.float32)[..., None] / periods
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


class TimeBlock(nn.Module):
    """CSDI's residual block for K = 1 on h: (B, T, C), side: (B, T, side_dim), e: (B, step_dim).
    Returns (new h, skip), both (B, T, C)."""

    def __init__(self, width: int, side_dim: int, step_dim: int, heads: int, ff_dim: int):
        super().__init__()
        self.step_proj = nn.Linear(step_dim, width)
        # CSDI's get_torch_trans: one encoder layer, gelu; no dropout, like the city baselines
        self.time_layer = nn.TransformerEncoderLayer(
            d_model=width, nhead=heads, dim_feedforward=ff_dim, dropout=0.0, activation="gelu", batch_first=True
        )
        self.mid = nn.Linear(width, 2 * width)
        self.cond = nn.Linear(side_dim, 2 * width)
        self.out = nn.Linear(width, 2 * width)

    def forward(self, h: torch.Tensor, side: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.time_layer(h + self.step_proj(e)[:, None])
        gate, filt = (self.mid(y) + self.cond(side)).chunk(2, dim=-1)
        residual, skip = self.out(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=-1)
        return (h + residual) / math.sqrt(2.0), skip


class CSDIUsersDenoiser(nn.Module):
    """eps-network on (B, T) per-user series; see the module docstring for the forward contract."""

    def __init__(self, cfg, *, seq_len: int, steps_per_day: int):
        """cfg: mobscale.config.mstdiff.CSDIUsersModelConfig; seq_len T and steps_per_day of the training data."""
        super().__init__()
        if seq_len < 2 or steps_per_day < 1:
            raise ConfigError(f"csdi_users model: window of {seq_len} steps at {steps_per_day} steps per day is unusable")
        self.cfg, self.seq_len, self.steps_per_day = cfg, int(seq_len), int(steps_per_day)
        C = cfg.width
        self.inp = nn.Linear(1, C)  # CSDI's 1x1 input convolution
        self.step_mlp = nn.Sequential(nn.Linear(cfg.step_dim, cfg.step_dim), nn.SiLU(), nn.Linear(cfg.step_dim, cfg.step_dim), nn.SiLU())
        side_dim = cfg.tpe_dim + (2 * len(FOURIER_PERIODS_DAYS) if cfg.time_of_week else 0)
        self.blocks = nn.ModuleList(TimeBlock(C, side_dim, cfg.step_dim, cfg.heads, cfg.ff_dim) for _ in range(cfg.blocks))
        self.head = nn.Sequential(nn.Linear(C, C), nn.ReLU(), nn.Linear(C, 1))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)

    def side_info(self, offset: torch.Tensor, B: int, device) -> torch.Tensor:
        """(B, T, side_dim): [sinusoid of the position in the window, time-of-week Fourier features]."""
        pos = torch.arange(self.seq_len, device=device)
        side = sinusoidal(pos, self.cfg.tpe_dim)[None].expand(B, -1, -1)
        if self.cfg.time_of_week:
            tau = offset.to(device)[:, None] + pos[None]
            side = torch.cat([side, time_of_week_features(tau, self.steps_per_day)], dim=-1)
        return side

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.seq_len:
            raise InputDataError(f"csdi_users: input of shape {tuple(x.shape)}, expected (batch, {self.seq_len})")
        B = x.shape[0]
        offset = cond.get("offset") if isinstance(cond, dict) else None
        if offset is None:
            raise InputDataError("csdi_users: cond needs 'offset' (B,) int64, the time-of-week step of each window start")
        if tuple(offset.shape) != (B,):
            raise InputDataError(f"csdi_users: cond 'offset' has shape {tuple(offset.shape)}, expected ({B},)")
        h = torch.relu(self.inp(x.unsqueeze(-1)))
        e = self.step_mlp(sinusoidal(t, self.cfg.step_dim).to(h.dtype))
        side = self.side_info(offset, B, x.device).to(h.dtype)
        skips = 0.0
        for blk in self.blocks:
            h, skip = blk(h, side, e)
            skips = skips + skip
        return self.head(skips / math.sqrt(len(self.blocks))).squeeze(-1)


def build(cfg, data_info: dict) -> CSDIUsersDenoiser:
    """Build from a RunConfig (``cfg.model``: CSDIUsersModelConfig) and the data facts "seq_len" and
    "steps_per_day" (written by the training task into the export)."""
    return CSDIUsersDenoiser(cfg.model, seq_len=int(require(data_info, "seq_len")), steps_per_day=int(require(data_info, "steps_per_day")))
