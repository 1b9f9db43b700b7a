"""Torch operators for the hierarchy inside a window: projection onto a level (unit means) and time blocks.

These are the tensor forms of ``pyramid.density``: a field is projected onto a spatial level by replacing every
pixel with the mean over its unit (within the patch), and onto a temporal resolution by the mean over its
time block. Both are linear, idempotent projections; in linear (traffic) space the projected field is the
density of the unit totals.
"""

from __future__ import annotations

import torch


def segment_mean(x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over each unit, broadcast back to the pixels.

    x: (B, ..., P, P) float; units: (B, P, P) int64 with ids in [0, n) per sample (n <= P*P).
    Returns a tensor shaped like x, constant over each unit.
    """
    B = x.shape[0]
    P2 = units.shape[-1] * units.shape[-2]
    lead = x.shape[1:-2]
    out_dtype = x.dtype
    xf = x.reshape(B, -1, P2).float()  # (B, M, P2); accumulate in float32 even for bf16 inputs
    u = units.reshape(B, 1, P2).expand_as(xf)
    n_max = P2
    sums = torch.zeros(B, xf.shape[1], n_max, dtype=xf.dtype, device=x.device).scatter_add_(2, u, xf)
    cnt = torch.zeros(B, 1, n_max, dtype=xf.dtype, device=x.device).scatter_add_(2, units.reshape(B, 1, P2), torch.ones_like(xf[:, :1]))
    mean = sums / cnt.clamp(min=1)
    return torch.gather(mean, 2, u).reshape(B, *lead, *units.shape[-2:]).to(out_dtype)


def time_block_mean(x: torch.Tensor, block: int, dim: int = 1) -> torch.Tensor:
    """Mean over consecutive blocks of ``block`` steps along ``dim`` (length must be a multiple), broadcast back."""
    if block == 1:
        return x
    L = x.shape[dim]
    if L % block:
        raise ValueError(f"window length {L} is not a multiple of the time block {block}")
    shape = list(x.shape)
    shape[dim : dim + 1] = [L // block, block]
    m = x.reshape(shape).mean(dim=dim + 1, keepdim=True)
    return m.expand(shape).reshape(x.shape)


def project(x: torch.Tensor, units: torch.Tensor | None, block: int) -> torch.Tensor:
    """Project x (B, L, P, P) onto a (spatial level, time block): unit mean, then time-block mean."""
    if units is not None:
        x = segment_mean(x, units)
    return time_block_mean(x, block, dim=1)
