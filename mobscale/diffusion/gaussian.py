"""Gaussian DDPM/DDIM schedule math (no networks here).

The surface follows diffusers' schedulers: ``add_noise`` (forward marginal), ``step`` (one ancestral reverse
step from an epsilon estimate), ``ddim_step`` (deterministic/eta-controlled jump between two steps), and
``timesteps(n)`` (the subsequence a fast sampler visits). Indices are 0-based: step t in [0, T) has
abar[t] = prod_{i<=t} (1 - beta_i); t = 0 is the least noisy step, t = T-1 the noisiest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def make_betas(kind: str, steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Beta schedule (float64): ``linear``, ``quadratic`` (CSDI: linear in sqrt(beta)) or ``cosine`` (Nichol &
    Dhariwal, abar(t) = cos^2(((t/T)+s)/(1+s) * pi/2), betas clipped to beta_end)."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if kind == "quadratic":
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    if kind == "cosine":
        s = 0.008
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = 1 - f[1:] / f[:-1]
        return betas.clamp(min=beta_start, max=beta_end)
    raise ValueError(f"unknown beta schedule '{kind}' (linear, quadratic, cosine)")


@dataclass
class GaussianSchedule:
    """Precomputed coefficients of one DDPM chain of ``T`` steps (float64 tensors, moved to float32 on use)."""

    betas: torch.Tensor

    def __post_init__(self):
        b = self.betas.to(torch.float64)
        if torch.any(b <= 0) or torch.any(b >= 1):
            raise ValueError("betas must lie in (0, 1)")
        self.betas = b
        self.alphas = 1.0 - b
        self.abar = torch.cumprod(self.alphas, 0)
        self.abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        # posterior q(x_{t-1} | x_t, x_0) variance (DDPM eq. 7); sigma at t=0 is 0 (final step is the mean)
        self.posterior_var = b * (1 - self.abar_prev) / (1 - self.abar)

    @classmethod
    def make(cls, kind: str, steps: int, beta_start: float, beta_end: float) -> "GaussianSchedule":
        return cls(make_betas(kind, steps, beta_start, beta_end))

    @property
    def T(self) -> int:
        return int(self.betas.numel())

    @staticmethod
    def _at(v: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """v[t] broadcast to ``like``'s shape (t: int or (B,) long)."""
        if isinstance(t, int):
            return torch.as_tensor(v[t], dtype=like.dtype, device=like.device)
        out = v.to(like.device)[t].to(like.dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Forward marginal x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        a = self._at(self.abar, t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_x0(self, xt: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        a = self._at(self.abar, t, xt)
        return (xt - (1 - a).sqrt() * eps) / a.sqrt()

    def step(self, xt: torch.Tensor, eps: torch.Tensor, t: int, noise: torch.Tensor | None) -> torch.Tensor:
        """One ancestral DDPM step x_t -> x_{t-1} (DDPM eq. 11 / ZoomDiff eq. 5); at t = 0 no noise is added."""
        a_t = float(self.alphas[t])
        ab_t = float(self.abar[t])
        mean = (xt - (1 - a_t) / math.sqrt(1 - ab_t) * eps) / math.sqrt(a_t)
        if t == 0 or noise is None:
            return mean
        return mean + math.sqrt(float(self.posterior_var[t])) * noise

    def ddim_step(self, xt: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM jump x_t -> x_{t_prev} (t_prev < t; t_prev = -1 means the clean endpoint). eta=0: deterministic."""
        ab_t = float(self.abar[t])
        ab_p = 1.0 if t_prev < 0 else float(self.abar[t_prev])
        x0 = (xt - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        sigma = eta * math.sqrt((1 - ab_p) / (1 - ab_t) * (1 - ab_t / ab_p)) if t_prev >= 0 else 0.0
        dir_xt = math.sqrt(max(1 - ab_p - sigma**2, 0.0)) * eps
        out = math.sqrt(ab_p) * x0 + dir_xt
        if sigma > 0 and noise is not None:
            out = out + sigma * noise
        return out

    def timesteps(self, n: int | None = None) -> list[int]:
        """Descending step indices visited by a sampler: all T steps, or ``n`` evenly spaced ones (DDIM)."""
        if n is None or n >= self.T:
            return list(range(self.T - 1, -1, -1))
        if n < 1:
            raise ValueError("need at least one sampling step")
        idx = torch.linspace(0, self.T - 1, n).round().long().unique().tolist()
        return sorted(idx, reverse=True)
