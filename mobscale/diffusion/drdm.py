"""DRDM: the staged diffusion process of ZoomDiff (paper Sec. IV-B..D). Noise math only, no networks.

One trajectory of N steps is cut into K stages, coarse -> fine. Stage k (0-based here; the paper counts from
1) owns the global steps ``lo_k <= n < hi_k`` with ``hi_0 = N`` and ``lo_{K-1} = 0``; its clean state is the
traffic at the stage's (spatial level, temporal resolution), given as a per-pixel density on the 50 m grid so
that every stage has the same tensor shape ``(L, P, P)`` (coarse stages are piecewise constant over their
units and time blocks). The reverse process (RRDP) walks the stages in order and yields every stage's clean
endpoint: the multi-scale result.

Conventions fixed here (the paper's equations are partly inconsistent; mobscale.config.zoomdiff.DRDMConfig
states the interpretation we adopt):

* Schedules are diffusers-style DDPM chains (:class:`mobscale.diffusion.gaussian.GaussianSchedule`): step t
  has ``abar[t] = prod_{i<=t} (1 - beta_i)``, t = 0 the least noisy step; stepping from t = 0 returns the
  clean estimate. ``noise="CN"`` uses one chain over all N steps (global index t = n). ``noise="SN"`` gives
  every stage its own chain of ``hi - lo`` steps (local index t = n - lo): beta restarts at ``beta_start``
  at the bottom of every stage (the discrete form of eq. 15), so the lowest step of a stage has
  ``abar = 1 - beta_start`` and the stage *node* (the state after that step) is noise-free: its signal
  coefficient is exactly 1 and, with an exact noise estimate, it equals the stage's data exactly.
* Forward (HNaP, eq. 11): ``x_n = sqrt(abar) x0 + sqrt(1 - abar) eps`` with ``x0`` = the stage's own level
  (``adding="SA"``) or the finest level (``"CA"``).
* Prior noise (eq. 10, as DRDMConfig reads it): for a stage k > 0 with coarser clean data z (the stage-(k-1)
  target in training, the previous generated endpoint in sampling), ``eps_prior = (x_n - sqrt(abar) z) /
  sqrt(1 - abar)`` and ``P = sqrt(abar / (1 - abar)) z``; both are 0 at stage 0. The noise estimate of the
  reverse step (Sigma of eq. 13) is the network output fused with the prior: ``fusion="none"`` (w/o PN)
  eps_theta; ``"add"`` eps_theta + P (eqs. 12-13 literally); ``"mix"`` (1 - lambda) eps_theta + lambda
  eps_prior (NPDiff); ``"mlp"`` a learned per-pixel fusion computed *inside the network* (so one forward call
  does everything, which DDP / DeepSpeed ZeRO-3 need), to which this module hands ``eps_prior``.
* Training (eq. 12): loss = mean || Sigma - eps ||^2 over pixels, with n uniform on [0, N).
* Reverse (RRDP, eq. 13): ancestral DDPM steps (or DDIM jumps with ``steps_per_stage``) inside each stage.
  A stage's endpoint is the clean estimate at its lowest visited step (``predict_x0``; under SN that is what
  the chain steps to anyway, under CN it is the Tweedie estimate of the noisy node, which the paper extracts
  raw). Stage starts: ``denoising="CD"`` hands the state over (CN: the chain state, one step below the
  node; SN: the clean endpoint itself, which the next stage's top step reads as its noisy input, as the
  paper's [SN, SA, CD] row does); ``"SD"`` restarts every stage from ``stage_start``: ``"noise"`` N(0, I),
  or ``"prior"`` the forward marginal of the previous endpoint at the stage's top step.
* Projection (``project_stages``): each endpoint is replaced by its unit mean over the stage's spatial units
  and time blocks, taken in linear traffic space (inverse-normalise, :func:`mobscale.data.ops.project`,
  normalise again), so intermediate outputs are exactly piecewise constant at their level. The projected
  endpoint is what the next stage uses as its prior.

The network is any callable ``denoiser(x, n, stage, cond, eps_prior) -> eps`` with x: (B, L, P, P) float,
n and stage: (B,) int64 (global step and stage index), cond: whatever the caller passes through (the
batch), eps_prior: (B, L, P, P) or None. It returns eps_theta, or -- when ``eps_prior`` is given, which
happens only for ``fusion="mlp"`` -- the fused estimate, leaving items with stage == 0 unfused.

All randomness comes from the explicit ``torch.Generator`` given to each call, so a fixed seed is
bit-reproducible on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from tqdm.auto import tqdm

from mobscale.config.zoomdiff import DRDMConfig
from mobscale.data import ops
from mobscale.data.schema import SPATIAL_LEVELS, STANDARD_RESOLUTIONS, TEMPORAL_RESOLUTIONS
from mobscale.diffusion.gaussian import GaussianSchedule
from mobscale.errors import ConfigError
from mobscale.log import get_logger

log = get_logger(__name__)

#: steps of the finest (1 h) series in one block of each temporal resolution
BLOCK_STEPS = {r: TEMPORAL_RESOLUTIONS[r] // TEMPORAL_RESOLUTIONS["1h"] for r in STANDARD_RESOLUTIONS}


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, n: torch.Tensor, stage: torch.Tensor, cond: Any, eps_prior: torch.Tensor | None) -> torch.Tensor: ...


class Transform(Protocol):
    """Elementwise map between linear traffic density and the model's normalised space."""

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def inverse(self, x: torch.Tensor) -> torch.Tensor: ...


# ------------------------------------------------------------------------------------------ stage plan


@dataclass(frozen=True)
class Stage:
    """Stage ``index`` (0 = coarsest) owns global steps lo <= n < hi; its clean state is (level, resolution)."""

    index: int
    level: str
    resolution: str
    lo: int
    hi: int

    @property
    def steps(self) -> int:
        return self.hi - self.lo

    @property
    def level_index(self) -> int:
        """Position of the spatial level in ``units`` rows ("bs", "cell", "grid100", "grid50")."""
        return SPATIAL_LEVELS.index(self.level)

    @property
    def block(self) -> int:
        """Finest (1 h) steps per time block of the stage's resolution."""
        return BLOCK_STEPS[self.resolution]


@dataclass(frozen=True)
class StagePlan:
    """The K stages of one DRDM run, coarse -> fine, and their step boundaries N = N_0 > ... > N_K = 0."""

    stages: tuple[Stage, ...]
    steps: int

    @property
    def K(self) -> int:
        return len(self.stages)

    @property
    def boundaries(self) -> list[int]:
        """[N_0 = N, N_1, ..., N_K = 0]: the paper's {N}_K, N_k being the node where stage k (1-based) ends."""
        return [self.stages[0].hi] + [s.lo for s in self.stages]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """[(spatial level, temporal resolution)] per stage: the ``stages`` list a CityWindows dataset takes."""
        return [(s.level, s.resolution) for s in self.stages]

    def stage_of(self, n: int) -> int:
        if not 0 <= n < self.steps:
            raise ValueError(f"diffusion step {n} outside [0, {self.steps})")
        for s in self.stages:
            if s.lo <= n < s.hi:
                return s.index
        raise AssertionError("stage plan does not cover every step")  # make_plan guarantees coverage

    def last_stage_at(self, level: str, resolution: str | None = None) -> int:
        """Index of the finest stage whose spatial level is ``level`` (and resolution, when given): where a
        refinement from traffic known at that level starts."""
        hits = [s.index for s in self.stages if s.level == level and (resolution is None or s.resolution == resolution)]
        if not hits:
            raise ConfigError(
                f"no DRDM stage at level {level}" + (f"/{resolution}" if resolution else "") + f" (stages: {self.pairs})"
            )
        return hits[-1]


def _round_half_up(num: int, den: int) -> int:
    """floor(num / den + 1/2) in integers (Python's round() rounds half to even)."""
    return (2 * num + den) // (2 * den)


def _even_bounds(steps: int, parts: int) -> list[int]:
    """[steps, ..., 0]: ``parts`` near-equal segments, boundaries rounded half up (600/4 -> 450, 300, 150)."""
    return [_round_half_up(steps * (parts - j), parts) for j in range(parts + 1)]


def make_plan(spatial: list[str], temporal: list[str], steps: int, rgp: str) -> StagePlan:
    """Stages from the resolution lists (coarse -> fine), the total steps N and the RGP (paper Sec. IV-D).

    * ``fine_greedy``: K = max(|S|, |T|) equal stages; the shorter list advances one level per stage until it
      is at its finest (S3T4, N=600: boundaries 450/300/150, (1d,cell) (4h,grid100) (2h,grid50) (1h,grid50)).
    * ``coarse_greedy``: K = max(|S|, |T|); the shorter list stays at its coarsest until its levels fill the
      last stages.
    * ``uniform``: each list splits N evenly on its own; the stages are the union of both sets of
      boundaries, each stage at the levels whose segments contain it.
    """
    if not spatial or not temporal:
        raise ConfigError("drdm: spatial and temporal need at least one level each")
    for lvl in spatial:
        if lvl not in SPATIAL_LEVELS:
            raise ConfigError(f"drdm.spatial: unknown level '{lvl}' (choose from {', '.join(SPATIAL_LEVELS)})")
    for res in temporal:
        if res not in BLOCK_STEPS:
            raise ConfigError(f"drdm.temporal: unknown resolution '{res}' (choose from {', '.join(BLOCK_STEPS)})")
    S, T = len(spatial), len(temporal)
    if rgp in ("fine_greedy", "coarse_greedy"):
        K = max(S, T)
        bounds = _even_bounds(steps, K)

        def idx(k: int, m: int) -> int:
            return min(k, m - 1) if rgp == "fine_greedy" else max(0, k - (K - m))

        pairs = [(spatial[idx(k, S)], temporal[idx(k, T)]) for k in range(K)]
    elif rgp == "uniform":
        bs, bt = _even_bounds(steps, S), _even_bounds(steps, T)
        bounds = sorted(set(bs) | set(bt), reverse=True)

        def seg(b: list[int], lo: int) -> int:  # segment j with b[j+1] <= lo < b[j]
            return next(j for j in range(len(b) - 1) if b[j + 1] <= lo < b[j])

        pairs = [(spatial[seg(bs, bounds[k + 1])], temporal[seg(bt, bounds[k + 1])]) for k in range(len(bounds) - 1)]
    else:
        raise ConfigError(f"drdm.rgp: unknown '{rgp}' (uniform, fine_greedy, coarse_greedy)")
    stages = tuple(Stage(k, lvl, res, bounds[k + 1], bounds[k]) for k, (lvl, res) in enumerate(pairs))
    for s in stages:
        if s.steps < 2:
            raise ConfigError(
                f"drdm: stage {s.index} ({s.resolution}, {s.level}) gets {s.steps} step(s) of N={steps} "
                f"(boundaries {[stages[0].hi] + [t.lo for t in stages]}); raise drdm.steps"
            )
    return StagePlan(stages, steps)


# ------------------------------------------------------------------------------------------ the process


@dataclass
class SampleResult:
    """Output of the reverse process, in the model's normalised space.

    endpoints: {stage index: (B, L, P, P)} for every stage the run produced (for a refinement, the provided
    coarse stage and every finer one); final: the last stage's endpoint (the finest traffic).
    """

    endpoints: dict[int, torch.Tensor]
    plan: StagePlan

    @property
    def final(self) -> torch.Tensor:
        return self.endpoints[self.plan.K - 1]


class DRDM:
    """The staged process for one DRDMConfig: coefficients, training loss and the reverse process.

    Tensor arguments: targets (B, K, L, P, P) float32, the normalised density of every stage in plan order;
    units (B, 4, P, P) int64, per pixel its unit index within the patch for ("bs", "cell", "grid100",
    "grid50"); cond: passed unchanged to the denoiser.
    """

    def __init__(self, cfg: DRDMConfig):
        self.cfg = cfg
        self.plan = make_plan(list(cfg.spatial), list(cfg.temporal), cfg.steps, cfg.rgp)
        N, K = cfg.steps, self.plan.K
        if cfg.noise == "SN":
            self.chains = [GaussianSchedule.make(cfg.beta_schedule, s.steps, cfg.beta_start, cfg.beta_end) for s in self.plan.stages]
            self.offsets = [s.lo for s in self.plan.stages]
        else:
            g = GaussianSchedule.make(cfg.beta_schedule, N, cfg.beta_start, cfg.beta_end)
            self.chains = [g] * K
            self.offsets = [0] * K
        stage_of = torch.empty(N, dtype=torch.long)
        abar = torch.empty(N, dtype=torch.float64)
        betas = torch.empty(N, dtype=torch.float64)
        for s in self.plan.stages:
            sched, off = self.chains[s.index], self.offsets[s.index]
            stage_of[s.lo : s.hi] = s.index
            abar[s.lo : s.hi] = sched.abar[s.lo - off : s.hi - off]
            betas[s.lo : s.hi] = sched.betas[s.lo - off : s.hi - off]
        #: (N,) per global step: its stage, abar and beta of the chain it belongs to (float64)
        self.stage_of_step = stage_of
        self.abar = abar
        self.betas = betas
        log.debug("DRDM %s/%s/%s, N=%d, stages %s at boundaries %s", cfg.noise, cfg.adding, cfg.denoising, N, self.plan.pairs, self.plan.boundaries)
        # A chain that starts from N(0, I) must end (in the forward direction) near pure noise, or sampling starts
        # from a different distribution than training saw (the public code's segments end at abar ~ 0.09; with
        # sqrt(abar) = 0.45 we measured the generated mean traffic at half the real one).
        tops = [float(self.abar[s.hi - 1]) for s in self.plan.stages] if cfg.noise == "SN" else [float(self.abar[-1])]
        self.top_signal = max(tops) ** 0.5
        if self.top_signal > 0.2:
            log.warning("DRDM: the noisiest step keeps sqrt(abar) = %.2f of the signal (beta_schedule=%s, beta_end=%g, %d steps "
                        "per chain); sampling from N(0, I) there is biased: raise diffusion.beta_end or diffusion.steps",
                        self.top_signal, cfg.beta_schedule, cfg.beta_end, min(s.steps for s in self.plan.stages))

    # ------------------------------------------------------------------ coefficients

    @property
    def K(self) -> int:
        return self.plan.K

    @property
    def N(self) -> int:
        return self.cfg.steps

    def _coef(self, n: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(abar_n) and sqrt(1 - abar_n) per item, shaped (B, 1, 1, 1) like ``like``."""
        a = self.abar.to(like.device)[n]
        shape = (-1,) + (1,) * (like.ndim - 1)
        return a.sqrt().to(like.dtype).view(shape), (1 - a).sqrt().to(like.dtype).view(shape)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Forward marginal (eq. 11, prior-free form): x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps; n: (B,)."""
        sa, s1a = self._coef(n, x0)
        return sa * x0 + s1a * eps

    def has_prior(self, stage: torch.Tensor, prior0: bool = False) -> torch.Tensor:
        """(B,) bool: items whose stage has a prior H: every stage after the first, and stage 0 too when a
        profile prior (DRDMConfig.profile_prior) is given."""
        return torch.ones_like(stage, dtype=torch.bool) if prior0 else stage > 0

    def _project_lin(self, lin: torch.Tensor, k: int, units: torch.Tensor) -> torch.Tensor:
        s = self.plan.stages[k]
        return ops.project(lin, None if s.level == "grid50" else units[:, s.level_index], s.block)

    def profile_prior(self, k: int, prev: torch.Tensor | None, profile: torch.Tensor, units: torch.Tensor,
                      normaliser: Transform) -> torch.Tensor:
        """The prior H of stage k from a reference profile (DRDMConfig.profile_prior), normalised (B, L, P, P).

        profile: (B, L, P, P) the reference's traffic at the finest level, linear density. Stage 0: the profile
        projected onto stage 0's level. Stage k > 0 (``cfg.profile_split``): the coarser clean stage ``prev``
        (normalised; the stage-(k-1) target in training, the previous endpoint in sampling) spread over stage k's
        units and time blocks by the profile's shares, i.e. prev x P_k(profile) / P_{k-1}(profile) in linear space,
        projected onto stage k's level (P_j = unit and block mean of stage j; a unit whose profile is 0 keeps the
        coarse value: a uniform split). It keeps the coarse totals where the levels nest and hands the network
        the reference's within-unit shape, so it only learns the departure from it. Without the split: prev.
        """
        proj = {j: self._project_lin(profile, j, units) for j in ((0,) if k == 0 else (k - 1, k))}
        return self._profile_prior(k, prev, proj, units, normaliser)

    def _profile_prior(self, k: int, prev: torch.Tensor | None, proj: dict[int, torch.Tensor], units: torch.Tensor,
                       normaliser: Transform) -> torch.Tensor:
        """:meth:`profile_prior` with the profile already projected onto the stages it needs (``proj[j]`` = P_j)."""
        if k == 0:
            return normaliser.forward(proj[0])
        if prev is None:
            raise ValueError(f"profile_prior: stage {k} needs the coarser stage")
        if not self.cfg.profile_split:
            return prev
        fine, coarse = proj[k], proj[k - 1]
        share = torch.where(coarse > 0, fine / coarse.clamp(min=1e-30), torch.ones_like(fine))
        return normaliser.forward(self._project_lin(normaliser.inverse(prev) * share, k, units))

    def profile_priors(self, targets: torch.Tensor, profile: torch.Tensor, units: torch.Tensor, normaliser: Transform) -> torch.Tensor:
        """(B, K, L, P, P) training priors of every stage from the normalised ``targets`` (B, K, L, P, P): stage 0
        from the profile, stage k from target k-1 (see :meth:`profile_prior`). Each stage's projection of the
        profile is computed once (this runs on every training batch)."""
        proj = {j: self._project_lin(profile, j, units) for j in range(self.K)}
        return torch.stack([self._profile_prior(k, targets[:, k - 1] if k else None, proj, units, normaliser) for k in range(self.K)], 1)

    def prior_terms(self, x_n: torch.Tensor, z: torch.Tensor, n: torch.Tensor, stage: torch.Tensor,
                    has: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps_prior, P) of eq. 10 for items at ``stage`` with coarser clean data ``z``; 0 where an item has no
        prior (``has`` (B,) bool, default stage > 0).

        eps_prior = (x_n - sqrt(abar) z) / sqrt(1 - abar): the noise x_n implies if its clean data were z.
        P = sqrt(abar / (1 - abar)) z, so that eps_prior = (x_n / sqrt(1 - abar)) - P.
        """
        sa, s1a = self._coef(n, x_n)
        has = (stage > 0 if has is None else has).view((-1,) + (1,) * (x_n.ndim - 1))
        eps_prior = torch.where(has, (x_n - sa * z) / s1a, torch.zeros_like(x_n))
        P = torch.where(has, sa / s1a * z, torch.zeros_like(x_n))
        return eps_prior, P

    def estimate_eps(self, denoiser: Denoiser, x_n: torch.Tensor, n: torch.Tensor, stage: torch.Tensor, cond: Any, z: torch.Tensor | None,
                     prior0: bool = False) -> torch.Tensor:
        """Sigma of eq. 13: the network's noise estimate fused with the prior of ``z`` per ``cfg.fusion``.

        x_n: (B, L, P, P); n, stage: (B,) int64; z: (B, L, P, P) coarser clean data (ignored where stage == 0
        unless ``prior0``: then z of stage-0 items is their stage-0 prior H; None when every item is at stage 0
        and there is no stage-0 prior).
        """
        fusion = self.cfg.fusion
        has = self.has_prior(stage, prior0 and z is not None)

        def net(eps_prior: torch.Tensor | None) -> torch.Tensor:
            out = denoiser(x_n, n, stage, cond, eps_prior)
            if out.shape != x_n.shape:
                raise ValueError(f"denoiser returned shape {tuple(out.shape)} for input {tuple(x_n.shape)}")
            return out

        if fusion == "none":
            return net(None)
        if z is None:
            if bool((stage > 0).any()):
                raise ValueError("estimate_eps: items beyond stage 0 need the coarser stage z for the prior")
            return net(None)
        hv = has.view((-1,) + (1,) * (x_n.ndim - 1))
        if isinstance(cond, dict):
            # the previous stage's endpoint (or the stage-0 prior) as an input the backbone may use (models with
            # prior_input); zero where an item has no prior. Absent with fusion=none, so the w/o-PN ablation cuts
            # every link between stages. "has_prior" tells the learned fusion which items to fuse.
            cond = {**cond, "prior_z": torch.where(hv, z, torch.zeros_like(z)), "has_prior": has}
        eps_prior, P = self.prior_terms(x_n, z, n, stage, has)
        if fusion == "mlp":
            return net(eps_prior)
        eps_theta = net(None)
        if fusion == "add":
            return eps_theta + P
        if fusion == "mix":
            lam = self.cfg.fusion_lambda
            return torch.where(hv, (1 - lam) * eps_theta + lam * eps_prior, eps_theta)
        raise ConfigError(f"drdm.fusion: unknown '{fusion}'")

    # ------------------------------------------------------------------ training (HNaP, eq. 12)

    def training_inputs(self, targets: torch.Tensor, n: torch.Tensor, eps: torch.Tensor,
                        priors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(stage, x_n, z) for items at global steps n: (B,), noise eps: (B, L, P, P).

        x0 is the item's stage target (SA) or the finest target (CA); z the prior's clean data: the stage-(k-1)
        target (for stage-0 items the stage-0 target, which the prior terms ignore), or with ``priors`` (B, K, L,
        P, P) (a profile prior, :meth:`profile_priors`) the item's own stage's prior; None when the plan has a
        single stage and there are no priors.
        """
        if targets.ndim != 5 or targets.shape[1] != self.K:
            raise ValueError(f"targets must be (B, K={self.K}, L, P, P), got {tuple(targets.shape)}")
        B = targets.shape[0]
        stage = self.stage_of_step.to(targets.device)[n]
        rows = torch.arange(B, device=targets.device)
        x0 = targets[rows, stage] if self.cfg.adding == "SA" else targets[:, -1]
        x_n = self.add_noise(x0, eps, n)
        z = targets[rows, (stage - 1).clamp(min=0)] if self.K > 1 else None
        if priors is not None:
            if priors.shape != targets.shape:
                raise ValueError(f"priors must be (B, K, L, P, P) = {tuple(targets.shape)}, got {tuple(priors.shape)}")
            z = priors[rows, stage].to(x_n.dtype)
        return stage, x_n, z

    def training_loss(self, denoiser: Denoiser, targets: torch.Tensor, cond: Any, generator: torch.Generator | None = None,
                      priors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 12 on one batch: n ~ U[0, N) per item, eps ~ N(0, I); returns (mean squared error, metrics).

        targets: (B, K, L, P, P) normalised stage densities; priors: (B, K, L, P, P) normalised prior H of every
        stage from a profile prior (DRDMConfig.profile_prior, :meth:`profile_priors`), or None (the paper: stage
        k's prior is target k-1, stage 0 has none). metrics: "loss" and, for every stage k,
        "loss_stage{k}" = (sum of the per-item losses at stage k) / (B p_k), p_k = steps_k / N the chance of
        drawing stage k. Every key is present in every batch (0 when no item drew stage k), and the plain
        mean over batches, micro-batches and ranks is an unbiased estimate of the stage's mean loss, which is
        how the training engines average metrics.
        """
        B = targets.shape[0]
        dev = targets.device
        n = torch.randint(0, self.N, (B,), generator=generator, device=dev)
        eps = torch.randn(targets[:, 0].shape, generator=generator, device=dev, dtype=targets.dtype)
        stage, x_n, z = self.training_inputs(targets, n, eps, priors)
        est = self.estimate_eps(denoiser, x_n, n, stage, cond, z, prior0=priors is not None)
        per_item = (est - eps).pow(2).flatten(1).mean(1)
        loss = per_item.mean()
        with torch.no_grad():
            sums = torch.zeros(self.K, dtype=torch.float64, device=dev).index_add_(0, stage, per_item.detach().double())
            share = torch.tensor([s.steps / self.N for s in self.plan.stages], dtype=torch.float64, device=dev)
            per_stage = (sums / (B * share)).tolist()
            metrics = {"loss": float(loss), **{f"loss_stage{k}": v for k, v in enumerate(per_stage)}}
        return loss, metrics

    # ------------------------------------------------------------------ reverse process (RRDP, eq. 13)

    def visited_steps(self, k: int, steps_per_stage: int | None = None) -> list[int]:
        """Descending local indices (into stage k's chain) the reverse process visits in stage k: all of them,
        or ``steps_per_stage`` evenly spaced ones including the stage's top and bottom steps (DDIM)."""
        s, off = self.plan.stages[k], self.offsets[k]
        lo, hi = s.lo - off, s.hi - off
        if steps_per_stage is None or steps_per_stage >= s.steps:
            return list(range(hi - 1, lo - 1, -1))
        if steps_per_stage < 1:
            raise ValueError("steps_per_stage must be >= 1")
        if steps_per_stage == 1:
            return [hi - 1]
        idx = torch.linspace(lo, hi - 1, steps_per_stage, dtype=torch.float64).round().long().unique().tolist()
        return sorted(idx, reverse=True)

    def reverse_step(self, x: torch.Tensor, sigma: torch.Tensor, k: int, t: int, noise: torch.Tensor | None) -> torch.Tensor:
        """Eq. 13, one ancestral step of stage k's chain at local index t with the fused estimate ``sigma``."""
        return self.chains[k].step(x, sigma, t, noise)

    def project(self, x: torch.Tensor, k: int, units: torch.Tensor, normaliser: Transform | None = None) -> torch.Tensor:
        """Project x (B, L, P, P) onto stage k's level: unit mean over its spatial units (within the patch) and
        time blocks, in linear space when ``normaliser`` is given. Exactly piecewise constant afterwards."""
        s = self.plan.stages[k]
        lin = normaliser.inverse(x) if normaliser is not None else x
        u = None if s.level == "grid50" else units[:, s.level_index]
        out = ops.project(lin, u, s.block)
        return normaliser.forward(out) if normaliser is not None else out

    def nest(self, x: torch.Tensor, parent: torch.Tensor, k: int, units: torch.Tensor, normaliser: Transform | None = None) -> torch.Tensor:
        """Scale stage k's output x (B, L, P, P) so that its means over stage k-1's units and time blocks equal
        ``parent`` (stage k-1's output, piecewise constant at that level), in linear space when ``normaliser`` is
        given. Where x sums to zero (or below) over a parent unit, the unit gets the parent's value flat. The
        result is projected back onto stage k's level, so it stays piecewise constant there; the parent's means
        are then kept exactly wherever stage k's units nest in stage k-1's (time blocks always do; cells in base
        stations and 50 m pixels in anything do; a 100 m square may straddle two cells).

        Why: the total drifts along the trajectory (each stage is a separate denoising from a noisy start, and
        its log-space spread turns into more or less mass through expm1), so without this the stage outputs are
        not sums of one another; with it every stage keeps the totals of the first one generated (or of the
        given coarse traffic when refining) and its own pattern within each parent unit, and the next stage's
        prior carries those totals."""
        if k < 1:
            raise ValueError("nest: stage 0 has no parent stage")
        lin = normaliser.inverse(x) if normaliser is not None else x
        plin = normaliser.inverse(parent) if normaliser is not None else parent
        agg = self.project(lin, k - 1, units)  # no normaliser: a plain mean of the linear values
        ok = agg > 0
        out = torch.where(ok, lin * (plin / torch.where(ok, agg, torch.ones_like(agg))), plin)
        out = self.project(out, k, units)
        return normaliser.forward(out) if normaliser is not None else out

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        cond: Any,
        shape: tuple[int, int, int, int],
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
        units: torch.Tensor | None = None,
        normaliser: Transform | None = None,
        project: bool | None = None,
        steps_per_stage: int | None = None,
        eta: float = 0.0,
        start_stage: int | None = None,
        coarse: torch.Tensor | None = None,
        prior_fn: Callable[[int, torch.Tensor | None], torch.Tensor] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        nest: bool = False,
    ) -> SampleResult:
        """Run the reverse process and return every stage's endpoint.

        shape: (B, L, P, P). units: (B, 4, P, P) int64, needed when projecting (``project`` defaults to
        ``cfg.project_stages``); normaliser: the data's Transform so the projection averages linear traffic
        (None: average in the given space). steps_per_stage: None = every step, ancestral (eq. 13); m = DDIM
        jumps over m evenly spaced steps per stage (eta = 0 deterministic, 1 ~ ancestral variance).
        Refinement: ``start_stage`` = k and ``coarse`` (B, L, P, P) the normalised density at stage k's
        level; stage k's endpoint is taken to be ``coarse`` and only the finer stages are generated.
        prior_fn: for a model trained with a profile prior (DRDMConfig.profile_prior): ``prior_fn(k, prev)`` ->
        the normalised prior H of stage k (B, L, P, P) given the previous endpoint ``prev`` (None at stage 0),
        e.g. :meth:`profile_prior` bound to the batch's profile; stage 0 then has a prior too, used as the later
        stages use theirs (prior noise, prior input, start). None: the paper (stage k's prior is endpoint k-1).
        device: where the noise is drawn (default: that of ``coarse``, else ``units``, else CPU); the
        generator must live there too. ``generator`` may be a list of B generators (one noise stream per
        sample), which makes each sample independent of its batch companions. nest: scale every stage's
        output to the previous one's unit totals (:meth:`nest`; needs projection) before it becomes the next
        stage's prior, so all stages share the first stage's (or the given coarse traffic's) totals.
        """
        cfg, plan = self.cfg, self.plan
        project = cfg.project_stages if project is None else project
        if project and units is None:
            raise ValueError("sample: projection onto the stage levels needs units (B, 4, P, P)")
        if nest and not project:
            raise ValueError("sample: nest needs the stage outputs projected onto their levels (project=True)")
        if (start_stage is None) != (coarse is None):
            raise ValueError("sample: refinement needs both start_stage and coarse")
        if device is not None:
            dev = torch.device(device)
        else:
            dev = coarse.device if coarse is not None else units.device if units is not None else torch.device("cpu")
        B = shape[0]
        if coarse is not None:
            if not 0 <= start_stage < self.K - 1:
                raise ValueError(f"sample: start_stage must be in [0, {self.K - 1}) to leave a finer stage to generate, got {start_stage}")
            if tuple(coarse.shape) != tuple(shape):
                raise ValueError(f"sample: coarse has shape {tuple(coarse.shape)}, expected {tuple(shape)}")

        def prior_of(k: int, prev: torch.Tensor | None) -> torch.Tensor | None:
            if prior_fn is None:
                return prev
            h = prior_fn(k, prev)
            if tuple(h.shape) != tuple(shape):
                raise ValueError(f"sample: prior_fn gave shape {tuple(h.shape)} for stage {k}, expected {tuple(shape)}")
            return h.to(device=dev, dtype=torch.float32)
        ddim = steps_per_stage is not None

        def randn() -> torch.Tensor:
            if isinstance(generator, (list, tuple)):  # one stream per sample: a window's result does not
                if len(generator) != B:  # depend on which other windows share its batch
                    raise ValueError(f"sample: {len(generator)} generators for a batch of {B}")
                return torch.stack([torch.randn(shape[1:], generator=g, device=dev, dtype=torch.float32) for g in generator])
            return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32)

        endpoints: dict[int, torch.Tensor] = {}
        z: torch.Tensor | None = None  # the previous stage's (projected) endpoint
        carry: torch.Tensor | None = None  # CN + CD: the chain state handed to the next stage
        first = 0
        if coarse is not None:
            z = coarse.to(device=dev, dtype=torch.float32)
            endpoints[start_stage] = z
            first = start_stage + 1
        total = sum(len(self.visited_steps(k, steps_per_stage)) for k in range(first, self.K))
        bar = tqdm(total=total, desc="DRDM sampling", unit="step", disable=not progress, leave=False)
        for k in range(first, self.K):
            sched, off = self.chains[k], self.offsets[k]
            ts = self.visited_steps(k, steps_per_stage)
            # 1. the state at the top of stage k
            z = prior_of(k, z)  # this stage's prior: the previous endpoint, or a profile prior built on it
            if k == 0:
                # with a profile prior and SD 'prior' starts, stage 0 starts like every other stage: from the
                # forward marginal of its prior at the top step (which is near N(0, I) anyway)
                x = sched.add_noise(z, randn(), ts[0]) if z is not None and cfg.stage_start == "prior" else randn()
            elif cfg.denoising == "SD" or carry is None and cfg.noise == "CN":
                # SD restarts; a CN + CD refinement has no chain state yet, so it starts from the forward
                # marginal of the provided coarse data, as 'prior' does
                if cfg.denoising == "SD" and cfg.stage_start == "noise":
                    x = randn()
                else:
                    x = sched.add_noise(z, randn(), ts[0])
            elif cfg.noise == "SN":
                x = z  # CD under SN: the clean endpoint is handed over unchanged
            else:
                x = carry
            # 2. denoise through the stage
            stage_t = torch.full((B,), k, dtype=torch.long, device=dev)
            endpoint = None
            for i, t in enumerate(ts):
                n_t = torch.full((B,), t + off, dtype=torch.long, device=dev)
                sigma = self.estimate_eps(denoiser, x, n_t, stage_t, cond, z, prior0=prior_fn is not None)
                last = i == len(ts) - 1
                if last:
                    endpoint = sched.predict_x0(x, sigma, t)
                if not last:
                    x = sched.ddim_step(x, sigma, t, ts[i + 1], eta, randn() if eta > 0 else None) if ddim else sched.step(x, sigma, t, randn())
                elif cfg.noise == "CN" and cfg.denoising == "CD" and k + 1 < self.K:
                    # the single chain continues into stage k+1 (whose top step is t_next)
                    t_next = self.visited_steps(k + 1, steps_per_stage)[0]
                    carry = sched.ddim_step(x, sigma, t, t_next, eta, randn() if eta > 0 else None) if ddim else sched.step(x, sigma, t, randn())
                bar.update(1)
            # 3. the stage's output: projected onto its level, checked, and the next stage's prior
            if project:
                endpoint = self.project(endpoint, k, units.to(dev), normaliser)
            if nest and k - 1 in endpoints:
                endpoint = self.nest(endpoint, endpoints[k - 1], k, units.to(dev), normaliser)
            if not bool(torch.isfinite(endpoint).all()):
                bad = int((~torch.isfinite(endpoint)).flatten(1).any(1).nonzero()[0, 0])
                s = plan.stages[k]
                raise FloatingPointError(f"DRDM stage {k} ({s.resolution}, {s.level}) produced non-finite values (first at batch item {bad}); the model diverged")
            endpoints[k] = endpoint
            z = endpoint
        bar.close()
        return SampleResult(endpoints, plan)

    def refine(self, denoiser: Denoiser, cond: Any, coarse: torch.Tensor, start_stage: int, **kw) -> SampleResult:
        """Generate the stages finer than ``start_stage`` from known coarse traffic (paper Sec. VI-A, zero-shot):
        ``coarse`` (B, L, P, P) is the normalised density at stage ``start_stage``'s level (see
        :meth:`StagePlan.last_stage_at`). Keyword arguments as :meth:`sample`."""
        return self.sample(denoiser, cond, tuple(coarse.shape), start_stage=start_stage, coarse=coarse, device=coarse.device, **kw)

