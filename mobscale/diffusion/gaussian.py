"""Gaussian DDPM/DDIM schedule math, and the plain single-resolution process of the baselines (no networks here).

The surface follows diffusers' schedulers: ``add_noise`` (forward marginal), ``step`` (one ancestral reverse
step from an epsilon estimate), ``ddim_step`` (deterministic/eta-controlled jump between two steps), and
``timesteps(n)`` (the subsequence a fast sampler visits). Indices are 0-based: step t in [0, T) has
abar[t] = prod_{i<=t} (1 - beta_i); t = 0 is the least noisy step, t = T-1 the noisiest.

:class:`GaussianDiffusion` (CSDI- and DiT-style baselines) wraps one schedule with DDPM's simple training loss
and two samplers (ancestral, DDIM), drawing noise per item from a list of generators when given one. DRDM
(mobscale.diffusion.drdm) builds its staged chains from :class:`GaussianSchedule` directly.
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

    def posterior_mean(self, xt: torch.Tensor, x0: torch.Tensor, t: int) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x0) (DDPM eq. 7); equals :meth:`step`'s mean when x0 = predict_x0(xt, eps, t)."""
        ab_t, ab_p, b_t = float(self.abar[t]), float(self.abar_prev[t]), float(self.betas[t])
        return (math.sqrt(ab_p) * b_t / (1 - ab_t)) * x0 + (math.sqrt(float(self.alphas[t])) * (1 - ab_p) / (1 - ab_t)) * xt

    def step_from_x0(self, xt: torch.Tensor, x0: torch.Tensor, t: int, noise: torch.Tensor | None) -> torch.Tensor:
        """One ancestral step x_t -> x_{t-1} taken from a clean estimate x0 (e.g. a clipped one): the posterior
        mean plus its noise; at t = 0 (or without noise) the mean, as :meth:`step`."""
        mean = self.posterior_mean(xt, x0, t)
        if t == 0 or noise is None:
            return mean
        return mean + math.sqrt(float(self.posterior_var[t])) * noise

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


# ------------------------------------------------------------------------------------------ the process


def randn_per_item(shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, I) of ``shape`` (B, ...). ``generator`` may be a list of B generators: item b's noise then comes
    from generator b alone, so a window's result does not depend on which windows share its batch."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in generator])
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


class GaussianDiffusion:
    """Plain DDPM on one resolution (the CSDI- and DiT-style baselines): training loss and samplers.

    The network is any callable ``denoiser(x_t, t, cond) -> eps`` with x_t: (B, ...) float32, t: (B,) int64
    step indices in [0, T) and cond passed through unchanged; it returns the noise estimate shaped like x_t.
    All randomness comes from the explicit generators, so a fixed seed is bit-reproducible on CPU.
    """

    def __init__(self, cfg):
        """cfg: mobscale.config.baselines.GaussianConfig (kind, steps, beta_schedule, beta_start, beta_end, clip_x0)."""
        if cfg.beta_end <= cfg.beta_start and cfg.beta_schedule != "cosine":
            raise ValueError(f"diffusion.beta_end={cfg.beta_end} must exceed beta_start={cfg.beta_start}")
        self.cfg = cfg
        self.schedule = GaussianSchedule.make(cfg.beta_schedule, cfg.steps, cfg.beta_start, cfg.beta_end)

    @property
    def T(self) -> int:
        return self.schedule.T

    def training_loss(self, denoiser, x0: torch.Tensor, cond, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """DDPM's simple loss on one batch: t ~ U[0, T), eps ~ N(0, I), mean || eps_theta(x_t, t) - eps ||^2.

        x0: (B, ...) normalised clean data. Returns (loss, {"loss": float}).
        """
        B = x0.shape[0]
        t = torch.randint(0, self.T, (B,), generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        est = denoiser(self.schedule.add_noise(x0, eps, t), t, cond)
        if est.shape != x0.shape:
            raise ValueError(f"denoiser returned shape {tuple(est.shape)} for input {tuple(x0.shape)}")
        loss = (est - eps).pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def sample(self, denoiser, cond, shape: tuple[int, ...], *, generator: torch.Generator | list[torch.Generator] | None = None,
               steps: int | None = None, eta: float = 0.0, device: torch.device | str | None = None, progress: bool = False,
               x0_range: tuple[float, float] | None = None) -> torch.Tensor:
        """Draw x0 of ``shape`` (B, ...) in the normalised space.

        steps: None = every step, ancestral (DDPM); n = DDIM over n evenly spaced steps (eta = 0 deterministic,
        eta = 1 ancestral-like variance). generator: one generator, or a list of B (one noise stream per item).
        With ``cfg.clip_x0`` every step's clean estimate is clamped, to [-c, c] for a number c or to ``x0_range``
        (lo, hi) for "data", and the step is taken from it (ancestral: the posterior mean of the clamped estimate;
        DDIM: the noise implied by it).
        """
        from tqdm.auto import tqdm

        dev = torch.device(device) if device is not None else torch.device("cpu")
        sched = self.schedule
        ts = sched.timesteps(steps) if steps is not None else list(range(self.T - 1, -1, -1))
        clip = self.cfg.clip_x0
        if clip == "data":
            if x0_range is None:
                raise ValueError("diffusion.clip_x0='data' needs the data range: sample(..., x0_range=(lo, hi))")
            lo, hi = float(x0_range[0]), float(x0_range[1])
        elif clip is not None:
            lo, hi = -float(clip), float(clip)
        x = randn_per_item(shape, generator, dev)
        B = shape[0]
        for i, t in enumerate(tqdm(ts, desc="DDPM sampling", unit="step", disable=not progress, leave=False)):
            t_b = torch.full((B,), t, dtype=torch.long, device=dev)
            eps = denoiser(x, t_b, cond)
            if clip is not None:
                x0 = sched.predict_x0(x, eps, t).clamp(lo, hi)
                if steps is None:
                    x = sched.step_from_x0(x, x0, t, randn_per_item(shape, generator, dev) if t > 0 else None)
                    continue
                eps = (x - math.sqrt(float(sched.abar[t])) * x0) / math.sqrt(1 - float(sched.abar[t]))
            if steps is None:  # ancestral; the step from t = 0 is the posterior mean = the clean estimate
                x = sched.step(x, eps, t, randn_per_item(shape, generator, dev) if t > 0 else None)
            else:
                t_prev = ts[i + 1] if i + 1 < len(ts) else -1
                noise = randn_per_item(shape, generator, dev) if eta > 0 and t_prev >= 0 else None
                x = sched.ddim_step(x, eps, t, t_prev, eta, noise)
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0, 0])
            raise FloatingPointError(f"DDPM sampling produced non-finite values (first at batch item {bad}); the model diverged")
        return x
