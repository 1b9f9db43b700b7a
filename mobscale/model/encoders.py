"""ZoomDiff's environment-aware conditions (paper Sec. IV-A): urban-context encoders, the spatiotemporal
positional encoding, and the coarsening of both to a stage's resolution.

Context (UEC): ``c = f1(house_road) + f2(aoi) + f3(poi) + f4(population)`` (the paper's ⊕ is addition), each
f_i mapping to ``context_dim``: embeddings for the two categorical layers, small MLPs on log1p counts for POI
(per pixel) and population (per pixel and time step). StPE: a 128-d sinusoidal TPE of the hour of week (eq. 6)
and a 128-d learnable SPE per spatial level over patch-relative positions (registered parameters, so they are
trained and saved, and transfer across cities of any size).

Coarsening uses :mod:`mobscale.data.ops`, the operator that defines the stage targets: mean over each unit of
the stage's spatial level (within the patch) and over its time blocks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mobscale.data import ops
from mobscale.errors import InputDataError


def sinusoidal(t: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Eq. 6: [sin(t / base^(2i/dim)), cos(t / base^(2i/dim))]_{i < dim/2}, sines first.

    t: (...) int or float; returns (..., dim) float32 (dim even).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even size, got {dim}")
    i = torch.arange(dim // 2, device=t.device, dtype=torch.float32)
    freq = torch.exp(-math.log(base) * 2.0 * i / dim)
    ang = t.to(torch.float32).unsqueeze(-1) * freq
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def harmonics(hour: torch.Tensor, daily: int) -> torch.Tensor:
    """(..., 2 * (daily + 2)): sin/cos of 2 pi k h / 24 for k = 1..daily and of 2 pi k h / 168 for k = 1, 2."""
    h = hour.to(torch.float32).unsqueeze(-1)
    ang = torch.cat([2 * math.pi * h * torch.arange(1, daily + 1, device=h.device) / 24.0,
                     2 * math.pi * h * torch.arange(1, 3, device=h.device) / 168.0], dim=-1)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


def _check_codes(name: str, codes: torch.Tensor, n: int) -> None:
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= n:
        raise InputDataError(f"context '{name}' holds category code {lo if lo < 0 else hi}, outside [0, {n}) the model was built for")


class ContextEncoder(nn.Module):
    """UEC encoder: context dict -> (B, L, P, P, dim) float, the sum of the four mapped layers.

    context: "aoi" (B, P, P) int64, "house_road" (B, P, P) int64, "poi" (B, C, P, P) float32 counts,
    "population" (B, L, P, P) float32 people present.
    """

    def __init__(self, dim: int, n_aoi: int, n_house_road: int, n_poi: int):
        super().__init__()
        self.n_aoi, self.n_house_road, self.n_poi = n_aoi, n_house_road, n_poi
        self.aoi = nn.Embedding(n_aoi, dim)
        self.house_road = nn.Embedding(n_house_road, dim)
        self.poi = _mlp(n_poi, dim)
        self.population = _mlp(1, dim)

    def forward(self, context: dict[str, torch.Tensor]) -> torch.Tensor:
        aoi, hr, poi, pop = context["aoi"], context["house_road"], context["poi"], context["population"]
        _check_codes("aoi", aoi, self.n_aoi)
        _check_codes("house_road", hr, self.n_house_road)
        if poi.shape[1] != self.n_poi:
            raise InputDataError(f"context 'poi' has {poi.shape[1]} categories, the model was built for {self.n_poi}")
        static = self.aoi(aoi) + self.house_road(hr) + self.poi(torch.log1p(poi.clamp(min=0)).movedim(1, -1))  # (B, P, P, d)
        dyn = self.population(torch.log1p(pop.clamp(min=0)).unsqueeze(-1))  # (B, L, P, P, d)
        return dyn + static.unsqueeze(1)


class SpatioTemporalPE(nn.Module):
    """StPE: TPE (B, L, tpe_dim) of the hour of week and SPE (spe_dim, P, P) per spatial level, both projected
    to ``width`` (linear maps commute with the coarsening means, so projecting first is exact and cheaper).
    """

    def __init__(self, width: int, patch: int, n_levels: int, tpe_dim: int = 128, spe_dim: int = 128, use_tpe: bool = True,
                 use_spe: bool = True, periodic: int = 0):
        super().__init__()
        self.tpe_dim, self.use_tpe, self.use_spe = tpe_dim, use_tpe, use_spe
        # optional exact daily/weekly harmonics of the hour of week (not in the paper; see tpe_periodic)
        self.periodic = periodic
        self.periodic_proj = nn.Linear(2 * (periodic + 2), width) if periodic and use_tpe else None
        # a registered parameter (trained, saved and loaded with the model), one table per spatial level
        self.spe = nn.Parameter(torch.randn(n_levels, patch, patch, spe_dim) * 0.02)
        self.tpe_proj = nn.Linear(tpe_dim, width)
        self.spe_proj = nn.Linear(spe_dim, width)

    def forward(self, hour: torch.Tensor, spe_index: torch.Tensor, patch: int) -> torch.Tensor:
        """hour: (B, L) int64 hour of week; spe_index: (B,) which level's SPE; returns (B, L, P, P, width)."""
        B, L = hour.shape
        if patch != self.spe.shape[1]:
            raise InputDataError(f"patch {patch}x{patch} does not match the {self.spe.shape[1]}x{self.spe.shape[1]} spatial encoding the model was built for")
        out = torch.zeros(B, L, patch, patch, self.tpe_proj.out_features, device=hour.device, dtype=self.spe.dtype)
        if self.use_tpe:
            out = out + self.tpe_proj(sinusoidal(hour, self.tpe_dim).to(out.dtype)).view(B, L, 1, 1, -1)
            if self.periodic_proj is not None:
                out = out + self.periodic_proj(harmonics(hour, self.periodic).to(out.dtype)).view(B, L, 1, 1, -1)
        if self.use_spe:
            out = out + self.spe_proj(self.spe[spe_index]).unsqueeze(1)
        return out


def coarsen(h: torch.Tensor, units: torch.Tensor | None, blocks: torch.Tensor) -> torch.Tensor:
    """Mean of features over each item's spatial units and time blocks, broadcast back.

    h: (B, L, P, P, C) float; units: (B, P, P) int64 unit ids within the patch per item (None: every pixel its
    own unit); blocks: (B,) int64 time-block length per item (1 = hourly). Items may differ in both (a
    training batch mixes stages). Returns (B, L, P, P, C).
    """
    x = h.movedim(-1, 1)  # (B, C, L, P, P): ops work on (B, ..., P, P)
    if units is not None:
        x = ops.segment_mean(x, units)
    out = x
    for b in blocks.unique().tolist():
        if b == 1:
            continue
        sel = (blocks == b).view(-1, 1, 1, 1, 1)
        out = torch.where(sel, ops.time_block_mean(x, int(b), dim=2), out)
    return out.movedim(1, -1)
