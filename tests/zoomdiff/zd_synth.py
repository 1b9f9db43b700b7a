"""Tiny seeded stand-ins for ZoomDiff tests: hierarchical units, consistent stage targets, a context batch,
and an oracle denoiser that knows the true noise.

Stage targets are built the way DRDM reads them: the finest density (linear, positive) projected in linear
space onto each stage's (spatial units, time blocks) with mobscale.data.ops, then normalised. So projecting
the finest normalised target onto stage k (in linear space) gives target k back exactly.
"""

from __future__ import annotations

import torch

from mobscale.data import ops
from mobscale.data.windows import Normaliser
from mobscale.diffusion.drdm import DRDM


def make_units(B: int, P: int, g: torch.Generator) -> torch.Tensor:
    """(B, 4, P, P) int64 unit ids within the patch for (bs, cell, grid100, grid50), labels shuffled per item."""
    yy, xx = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    bs = ((yy + xx) >= P).long()  # two triangular BS areas
    cell = bs * 4 + (yy // (P // 2)) * 2 + (xx // (P // 2))  # sectors nested in the BS areas
    g100 = (yy // 2) * (P // 2) + xx // 2
    g50 = yy * P + xx
    out = []
    for _ in range(B):
        rows = []
        for lvl in (bs, cell, g100, g50):
            _, inv = torch.unique(lvl, return_inverse=True)
            perm = torch.randperm(int(inv.max()) + 1, generator=g)
            rows.append(perm[inv])
        out.append(torch.stack(rows))
    return torch.stack(out)


def make_batch(process: DRDM, B: int = 2, L: int = 4, P: int = 8, seed: int = 0, normaliser: Normaliser | None = None) -> dict:
    """A batch dict like a collated CityWindows item, plus "x": (B, K, L, P, P) normalised targets."""
    g = torch.Generator().manual_seed(seed)
    norm = normaliser or Normaliser("log1p", scale=1.0, mean=0.7, std=0.6)
    units = make_units(B, P, g)
    fine = torch.exp(torch.randn(B, L, P, P, generator=g) * 0.8)  # positive, heavy-ish tail (linear MB)
    lin = []
    for s in process.plan.stages:
        u = None if s.level == "grid50" else units[:, s.level_index]
        lin.append(ops.project(fine, u, s.block))
    targets = torch.stack(lin, 1)
    cond = {
        "context": {
            "aoi": torch.randint(0, 8, (B, P, P), generator=g),
            "house_road": torch.randint(0, 7, (B, P, P), generator=g),
            "poi": torch.poisson(torch.full((B, 21, P, P), 0.5), generator=g),
            "population": torch.rand(B, L, P, P, generator=g) * 50,
        },
        "units": units,
        "hour": (torch.arange(L) + 24 * torch.arange(B)[:, None]) % 168,
        "origin": torch.zeros(B, 3, dtype=torch.long),
        "targets": targets,
        "x": norm.forward(targets),
    }
    return cond


class Oracle:
    """A denoiser that knows the data: returns the eps_theta for which the process's fused estimate is the
    true noise of x given the clean data the process trains stage k on (SA: target k, CA: finest)."""

    def __init__(self, process: DRDM, x: torch.Tensor):
        self.p, self.x = process, x
        self.calls = 0
        self.saw_prior = False

    def __call__(self, x_n, n, stage, cond, eps_prior):
        self.calls += 1
        p, B = self.p, x_n.shape[0]
        rows = torch.arange(B)
        x0 = self.x[rows, stage] if p.cfg.adding == "SA" else self.x[:, -1]
        a = p.abar[n].view(B, 1, 1, 1)
        eps = ((x_n.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).float()
        fusion = p.cfg.fusion
        if eps_prior is not None:
            self.saw_prior = True
        if fusion in ("none", "mlp"):
            return eps  # for mlp the "model" returns the fused estimate itself
        z = self.x[rows, (stage - 1).clamp(min=0)]
        has = (stage > 0).view(B, 1, 1, 1)
        if fusion == "add":
            P_ = (a / (1 - a)).sqrt().float() * z
            return torch.where(has, eps - P_, eps)
        lam = p.cfg.fusion_lambda
        eps_prior_o = ((x_n.double() - a.sqrt() * z.double()) / (1 - a).sqrt()).float()
        return torch.where(has, (eps - lam * eps_prior_o) / (1 - lam), eps)


def segment_spread(x: torch.Tensor, units_lvl: torch.Tensor, block: int) -> float:
    """Largest (max - min) of x (B, L, P, P, ...) inside any (time block x unit) segment (0: piecewise constant)."""
    B, L, P = x.shape[:3]
    C = x[0, 0, 0, 0].numel()
    tb = (torch.arange(L) // block).view(1, L, 1)
    ids = (tb * P * P + units_lvl.reshape(B, 1, P * P)).reshape(B, -1, 1).expand(B, L * P * P, C)
    flat = x.detach().reshape(B, L * P * P, C)
    hi = torch.full_like(flat, -torch.inf).scatter_reduce(1, ids, flat, "amax", include_self=False)
    lo = torch.full_like(flat, torch.inf).scatter_reduce(1, ids, flat, "amin", include_self=False)
    return float((hi.gather(1, ids) - lo.gather(1, ids)).max())
