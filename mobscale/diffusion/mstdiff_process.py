"""The MSTDiff co-denoising process: Gaussian DDPM on wavelet coefficients + discrete diffusion on locations.

Both chains share the step index t (0-based, ``t = S-1`` noisiest) and have their own schedules (traffic:
:class:`~mobscale.diffusion.gaussian.GaussianSchedule`; trajectory:
:class:`~mobscale.diffusion.discrete.TransitionProcess`). A denoiser is any callable::

    denoise(w_t, traj, t, offset) -> (eps_hat, logits)
      w_t    (B, T) float32 noisy coefficients in band layout, or None (trajectory-only model)
      traj   (B, T) long sampled l_t, or (B, T, N) float probabilities (trajectory_input="probs"), or None
      t      (B,) long step; offset (B,) long time-of-week step of the window start, or None
      eps_hat (B, T) in band layout (or None); logits (B, T, N) over l0 per TIME step (or None)

Training (Algorithm 1, with the sampled l_t the paper's text implies and the public code skips)::

    t ~ U{0..S-1};  w_t = sqrt(abar_t) w0 + sqrt(1 - abar_t) eps;  l_t ~ Cat(Qbar_t[l0])
    L = lambda_mse MSE(eps, eps_hat) + lambda_kl KL(q(l_{t-1} | l_t, l0) || p(l_{t-1} | l_t)) + lambda_ce CE(l0, logits)

Sampling (Algorithm 2): ``w_{S-1} ~ N(0, I)``, ``l_{S-1} ~ Uniform``; for t = S-1 .. 0 one network call gives
eps_hat and logits; (1) w_{t-1} by the ancestral DDPM step; (2) p(l_{t-1} | l_t) by eq. 6 from softmax(logits),
then l_{t-1} ~ p. The outputs are w_{-1} (coefficients, band layout) and l_{-1} (location indices). The last
trajectory step takes the mode of p(l_{-1} | l_0) (``last_step="mode"``, the discrete counterpart of DDPM's
noise-free final step: sampling it re-draws every position independently from the network's p(l0 | l_0) and
scatters ~1 - max p of them; measured on the demo city it halves Distance / DailyLoc JSD and worsens G-rank) or
samples it (``"sample"``, Algorithm 2 literally).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mobscale.diffusion.discrete import TransitionProcess, adjacency_from_neighbours, rate_matrix
from mobscale.diffusion.gaussian import GaussianSchedule
from mobscale.errors import ConfigError
from mobscale.log import get_logger

log = get_logger(__name__)

Denoiser = Callable[..., tuple[torch.Tensor | None, torch.Tensor | None]]


@dataclass
class LossWeights:
    mse: float = 1.0
    kl: float = 1.0
    ce: float = 0.1


def kl_categorical(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) over the last axis (natural log); q may hold exact zeros. (...,) tensor."""
    return (torch.xlogy(q, q) - q * torch.log(p.clamp_min(1e-30))).sum(-1)


class MSTDiffProcess:
    """Joint noise process. ``traffic`` or ``trajectory`` may be None for the single-modality ablations."""

    def __init__(
        self,
        traffic: GaussianSchedule | None,
        trajectory: TransitionProcess | None,
        *,
        posterior: str = "exact",
        trajectory_input: str = "sample",
        weights: LossWeights | None = None,
        last_step: str = "mode",
        trajectory_likelihood: bool = False,
        temperature: float = 1.0,
    ):
        if traffic is None and trajectory is None:
            raise ConfigError("MSTDiff needs at least one of traffic and trajectory")
        if traffic is not None and trajectory is not None and traffic.T != trajectory.S:
            raise ConfigError(f"traffic ({traffic.T}) and trajectory ({trajectory.S}) chains must have the same number of steps")
        if posterior not in ("exact", "reference"):
            raise ConfigError(f"diffusion.posterior='{posterior}' unknown (exact, reference)")
        if trajectory_input not in ("sample", "probs"):
            raise ConfigError(f"diffusion.trajectory_input='{trajectory_input}' unknown (sample, probs)")
        self.traffic = traffic
        self.trajectory = trajectory
        self.posterior = posterior
        if last_step not in ("mode", "sample"):
            raise ConfigError(f"diffusion.trajectory_last_step='{last_step}' unknown (mode, sample)")
        self.trajectory_input = trajectory_input
        self.weights = weights or LossWeights()
        self.last_step = last_step
        self.trajectory_likelihood = trajectory_likelihood
        if not temperature > 0:
            raise ConfigError(f"diffusion.trajectory_temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    @property
    def steps(self) -> int:
        return self.traffic.T if self.traffic is not None else self.trajectory.S

    @classmethod
    def from_config(
        cls,
        diffusion_cfg,
        model_cfg,
        *,
        neighbours: np.ndarray | None,
        rates: np.ndarray | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> "MSTDiffProcess":
        """Build from ``RunConfig.diffusion`` / ``.model``. ``neighbours`` (N, K) (-1 padded) define the graph;
        ``rates`` (S,) pins the trajectory schedule (an export stores the resolved rates), else it is resolved
        from the config (``rate_scale=None`` = auto)."""
        d, m = diffusion_cfg, model_cfg
        traffic = GaussianSchedule.make(d.beta_schedule, d.steps, d.beta_start, d.beta_end) if m.use_traffic else None
        trajectory = None
        if m.use_trajectory:
            if neighbours is None:
                raise ConfigError("trajectory diffusion needs the location neighbour table (model.use_trajectory=true)")
            A = adjacency_from_neighbours(neighbours)
            if rates is None:
                trajectory = TransitionProcess.build(
                    A, m.kg_neighbours, steps=d.steps, rate_start=d.rate_start, rate_end=d.rate_end, teleport=d.teleport,
                    rate_scale=d.rate_scale, uniform_tol=d.uniform_tol, dtype=dtype,
                )
            else:
                trajectory = TransitionProcess(rate_matrix(A, m.kg_neighbours, d.teleport), np.asarray(rates), dtype=dtype)
        return cls(
            traffic, trajectory, posterior=d.posterior, trajectory_input=d.trajectory_input,
            weights=LossWeights(m.lambda_mse, m.lambda_kl, m.lambda_ce), last_step=d.trajectory_last_step,
            trajectory_likelihood=d.trajectory_likelihood, temperature=d.trajectory_temperature,
        )

    def x0_logits(self, logits: torch.Tensor, lt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's log p(l0 | l_t) (up to a constant per position) from the network's trajectory logits.

        Default: the logits themselves. With ``trajectory_likelihood``: ``logits + log q(l_t | l0)``, i.e.
        p(l0 | l_t) ∝ p~(l0 | l_t) Qbar_t[l0, l_t], D3PM's parameterisation (Austin et al. 2021, eq. 4; with
        eq. 6 it gives p(l_{t-1} | l_t) ∝ Q_t[l_{t-1}, l_t] sum_x p~(x) Qbar_{t-1}[x, l_{t-1}]). Why: the
        evidence of the token a position holds now then enters at the exact strength of step t (near certain at
        t = 0, nothing at t = S-1) instead of being learned; the plain network erases one-slot stays even when
        94% of the tokens are clean. Measured: the one-step denoising gets better, generation keeps its noise
        (results/README.md), so it is off by default. float64 out (the trajectory process's dtype)."""
        out = logits.to(self.trajectory.dtype)
        if not self.trajectory_likelihood:
            return out
        # Qbar_t is symmetric, so the column Qbar_t[:, l_t] is the row Qbar_t[l_t]
        lik = self.trajectory.q_probs(lt, t.to(lt.device)).to(out.device)
        return out + torch.log(lik.clamp_min(1e-30))

    # ------------------------------------------------------------------ training (Algorithm 1)
    def training_losses(
        self,
        denoise: Denoiser,
        w0: torch.Tensor | None,
        l0: torch.Tensor | None,
        offset: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One Monte-Carlo estimate of eq. 13 for a batch. w0: (B, T) float32 coefficients (band layout);
        l0: (B, T) long location indices. Returns (scalar loss, float logs)."""
        ref = w0 if w0 is not None else l0
        B, dev = ref.shape[0], ref.device
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        # 0. one step per sample, shared by both chains
        t = torch.randint(0, self.steps, (B,), generator=generator, device=gen_dev).to(dev)
        # 1. traffic forward marginal
        w_t = eps = None
        if self.traffic is not None:
            if w0 is None:
                raise ConfigError("this MSTDiff model has a traffic branch but the batch has no traffic ('w0')")
            eps = torch.randn(w0.shape, generator=generator, device=gen_dev).to(dev, w0.dtype)
            w_t = self.traffic.add_noise(w0, eps, t)
        # 2. trajectory forward marginal: a SAMPLED l_t
        lt = traj_in = None
        if self.trajectory is not None:
            if l0 is None:
                raise ConfigError("this MSTDiff model has a trajectory branch but the batch has no trajectory ('l0')")
            lt, probs = self.trajectory.q_sample(l0, t, generator)
            lt = lt.to(dev)
            traj_in = lt if self.trajectory_input == "sample" else probs.to(dev, torch.float32)
        # 3. one network call, eq. 13
        eps_hat, logits = denoise(w_t, traj_in, t, offset)
        loss = torch.zeros((), device=dev)
        logs: dict[str, float] = {}
        if self.traffic is not None:
            mse = F.mse_loss(eps_hat, eps)
            loss = loss + self.weights.mse * mse
            logs["mse"] = float(mse.detach())
        if self.trajectory is not None:
            logits = self.x0_logits(logits, lt, t)
            p0 = torch.softmax(logits, -1)
            if self.posterior == "exact":
                q = self.trajectory.posterior(lt, l0, t)
            else:
                q = self.trajectory.posterior_reference(l0, t)
            p = self.trajectory.reverse_probs(p0, lt, t, self.posterior)
            kl = kl_categorical(q, p).mean().to(loss.dtype)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), l0.reshape(-1))
            if self.weights.kl:
                loss = loss + self.weights.kl * kl
            if self.weights.ce:
                loss = loss + self.weights.ce * ce
            logs["kl"] = float(kl.detach())
            logs["ce"] = float(ce.detach())
            logs["acc"] = float((logits.argmax(-1) == l0).float().mean())
        logs["loss"] = float(loss.detach())
        return loss, logs

    # ------------------------------------------------------------------ sampling (Algorithm 2)
    @torch.no_grad()
    def sample(
        self,
        denoise: Denoiser,
        n: int,
        T: int,
        *,
        offset: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        progress: bool = False,
        traffic_x0: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Co-denoise ``n`` sequences of length T. Returns (w0 (n, T) float32 band layout | None,
        l0 (n, T) long | None). ``traffic_x0``: maps every step's clean traffic estimate (n, T) to a constrained
        one (e.g. capped at the data range) from which the ancestral step is then taken; None = plain steps."""
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        randn = lambda *shape: torch.randn(shape, generator=generator, device=gen_dev).to(device)  # noqa: E731
        w = randn(n, T) if self.traffic is not None else None
        l = pL = None
        if self.trajectory is not None:
            N = self.trajectory.N
            l = torch.randint(0, N, (n, T), generator=generator, device=gen_dev).to(device)
            pL = torch.full((n, T, N), 1.0 / N, device=device)
        for t in tqdm(range(self.steps - 1, -1, -1), desc="co-denoising", disable=not progress, leave=False):
            tt = torch.full((n,), t, dtype=torch.long, device=device)
            traj_in = None
            if l is not None:
                traj_in = l if self.trajectory_input == "sample" else pL
            eps_hat, logits = denoise(w, traj_in, tt, offset)
            # 1. traffic: ancestral DDPM step (no noise at t = 0)
            if w is not None:
                noise = randn(n, T) if t > 0 else None
                if traffic_x0 is None:
                    w = self.traffic.step(w, eps_hat, t, noise)
                else:
                    w = self.traffic.step_from_x0(w, traffic_x0(self.traffic.predict_x0(w, eps_hat, t)), t, noise)
            # 2. trajectory: p(l_{t-1} | l_t) = sum_x q(l_{t-1} | l_t, x) p(x | l_t)  (eq. 6), then sample
            if l is not None:
                # temperature < 1 sharpens p(l0 | l_t) before eq. 6 (sampling only; training is unaffected)
                p0 = torch.softmax(self.x0_logits(logits, l, tt) / self.temperature, -1)
                p = self.trajectory.reverse_probs(p0, l, tt, self.posterior)
                if t == 0 and self.last_step == "mode":
                    l = p.argmax(-1).to(device)
                else:
                    l = torch.multinomial(p.reshape(-1, p.shape[-1]).float(), 1, generator=generator).view(n, T).to(device)
                pL = p.to(device, torch.float32)
        return w, l
