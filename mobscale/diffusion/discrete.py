"""Discrete (transition-matrix) diffusion over N locations: D3PM with a symmetric rate matrix (MSTDiff III-B).

Graph -> rates (eqs. 10-11): ``A`` is the 0/1 top-K neighbour matrix, ``B = (A + A^T) / (2K)``, ``R = B -
diag(B 1)`` (rows sum to zero), plus an optional uniform teleport rate ``R += teleport (J/N - I)``. R is
symmetric, so ONE eigendecomposition ``R = V diag(lam) V^T`` gives every transition matrix of the chain::

    Q_t    = expm(alpha_t R)        = V diag(exp(alpha_t lam)) V^T
    Qbar_t = Q_0 Q_1 ... Q_t        = expm(c_t R),  c_t = alpha_0 + ... + alpha_t   (all Q_t commute)

Steps are 0-based like :mod:`mobscale.diffusion.gaussian`: ``t`` in ``[0, S)``, ``t = 0`` the least noisy
state, ``Qbar_{-1} = I`` (the clean data). Every matrix is symmetric and doubly stochastic.

Only rows and row-vector products are ever formed, ``(M, N)`` at a time with M = batch x time; no per-step
``N x N`` matrix is materialised per sample: ``Qbar_t[idx] = (V[idx] * e^{c_t lam}) V^T`` (computed once per
distinct (idx, t) pair of the batch) and ``P Qbar_t = ((P V) * e^{c_t lam}) V^T`` cost ``M N^2``. Rounding in the eigenbasis leaves tiny negative entries; every
returned row is clipped to >= 0 and renormalised, and :meth:`TransitionProcess.report` states how much mass
that removed.

Mixing: the reverse chain starts from the uniform distribution, so ``Qbar_{S-1}`` must be close to uniform.
For a connected graph the distance decays like ``exp(-gap c)`` with the spectral gap ``gap`` of R, which is
tiny for a kNN geometric graph of thousands of BS. A DISCONNECTED graph never mixes: ``Qbar`` is block
diagonal, every row stays on its own component forever, so ``l_S`` still tells which component ``l0`` was in
while sampling starts from uniform over all N (a train/sample mismatch, and components the model never sees
at large t). The teleport rate fixes both: ``Qbar_t = e^{-teleport c_t} expm(c_t R_graph) + (1 - e^{-teleport
c_t}) U``, hence ``TV(Qbar_t[i], uniform) <= exp(-teleport c_t)`` for any graph.

Posterior (D3PM): ``q(l_{t-1} | l_t, l0) ∝ (l_t Q_t^T) ⊙ (l0 Qbar_{t-1})``. Reverse step (MSTDiff eq. 6):
``p(l_{t-1} | l_t) = sum_x q(l_{t-1} | l_t, x) p(x | l_t)``; computed as ``Q_t[l_t] ⊙ (w Qbar_{t-1})`` with
``w(x) = p(x | l_t) / Qbar_t[x, l_t]`` (each x's posterior has mass ``Qbar_t[x, l_t]`` before normalising).
``x`` with ``Qbar_t[x, l_t]`` below a floor (cannot have produced ``l_t``; below the eigenbasis rounding
level) get ``w = 0``; ``x = l_t`` always survives since ``Qbar_t[k, k] >= 1/N``.

The public MSTDiff code uses ``Qbar_{t-1}[l0] Q_t`` as the "posterior": that is ``Qbar_t[l0]``, the forward
marginal, which ignores ``l_t``. It is kept as ``posterior="reference"`` for ablations.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.csgraph
import torch

from mobscale.errors import ConfigError
from mobscale.log import get_logger

log = get_logger(__name__)


def adjacency_from_neighbours(neighbours: np.ndarray, n: int | None = None) -> scipy.sparse.csr_matrix:
    """``neighbours``: (N, K) int, row i = the neighbour ids of i (-1 = none) -> A: (N, N) sparse 0/1 (eq. 10)."""
    nb = np.asarray(neighbours, dtype=np.int64)
    N = nb.shape[0] if n is None else n
    rows = np.repeat(np.arange(nb.shape[0]), nb.shape[1])
    cols = nb.ravel()
    keep = (cols >= 0) & (cols != rows)
    A = scipy.sparse.csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(N, N))
    A.data[:] = 1.0  # duplicates collapse to 1
    return A


def rate_matrix(adjacency, k: int, teleport: float = 0.0) -> np.ndarray:
    """Eqs. 10-11 (+ teleport): ``B = (A + A^T) / (2k)``, ``R = B - diag(B 1) + teleport (J/N - I)``.

    adjacency: (N, N) 0/1 (dense or scipy sparse). Returns R: (N, N) float64, symmetric, rows sum to 0.
    """
    A = adjacency.toarray() if scipy.sparse.issparse(adjacency) else np.asarray(adjacency, dtype=np.float64)
    A = (A != 0).astype(np.float64)
    np.fill_diagonal(A, 0.0)
    B = (A + A.T) / (2.0 * k)
    R = B - np.diag(B.sum(axis=1))
    if teleport > 0:
        N = R.shape[0]
        R += teleport / N
        R[np.diag_indices(N)] -= teleport
    return R


def n_components(adjacency) -> int:
    """Connected components of the undirected graph A + A^T."""
    A = scipy.sparse.csr_matrix(adjacency)
    n, _ = scipy.sparse.csgraph.connected_components(A + A.T, directed=False)
    return int(n)


def geometric_rates(steps: int, start: float, end: float) -> np.ndarray:
    """(S,) float64 rates alpha_t geometric from ``start`` to ``end`` (the public code's schedule shape)."""
    if steps < 1 or start <= 0 or end <= 0:
        raise ConfigError(f"trajectory rates need steps >= 1 and positive start/end (got {steps}, {start}, {end})")
    return np.geomspace(start, end, steps)


class TransitionProcess:
    """All transition matrices of a symmetric-rate discrete diffusion from one eigendecomposition.

    R: (N, N) symmetric rate matrix (rows sum to 0); rates: (S,) alpha_t > 0. Internally float64 by default;
    pass ``dtype=torch.float32`` for large N on accelerators (the rounding floor rises to 1e-5).
    """

    def __init__(self, R: np.ndarray, rates: np.ndarray, *, dtype: torch.dtype = torch.float64, _eig: tuple | None = None):
        R = np.asarray(R, dtype=np.float64)
        N = R.shape[0]
        if R.ndim != 2 or R.shape != (N, N) or N < 2:
            raise ConfigError(f"rate matrix must be square with N >= 2 locations, got shape {R.shape}")
        asym = float(np.abs(R - R.T).max())
        if asym > 1e-9:
            raise ConfigError(f"rate matrix is not symmetric (max |R - R^T| = {asym:.3g}); the eigenbasis shortcut needs B = (A + A^T)/2K")
        rowsum = float(np.abs(R.sum(1)).max())
        if rowsum > 1e-8:
            raise ConfigError(f"rate matrix rows must sum to 0 (max |row sum| = {rowsum:.3g})")
        if _eig is None:
            lam, V = scipy.linalg.eigh(R)
        else:
            lam, V = _eig
        #: positive eigenvalues are rounding (R is negative semi-definite); clipped, the largest is reported
        self.eig_clip = float(max(lam.max(), 0.0))
        lam = np.minimum(lam, 0.0)
        self._lam_np, self._V_np = lam, V
        self.N = N
        self.dtype = dtype
        self.floor = 1e-10 if dtype == torch.float64 else 1e-5
        self.V = torch.as_tensor(V, dtype=dtype)
        self.lam = torch.as_tensor(lam, dtype=dtype)
        self.set_rates(rates)

    # ------------------------------------------------------------------ construction
    def set_rates(self, rates: np.ndarray) -> None:
        rates = np.asarray(rates, dtype=np.float64)
        if rates.ndim != 1 or rates.size < 1 or (rates <= 0).any():
            raise ConfigError("trajectory rates must be a 1-D array of positive numbers")
        self.rates = rates
        self.S = int(rates.size)
        self.cum = np.concatenate([[0.0], np.cumsum(rates)])  # cum[t+1] = c_t; cum[0] = 0 (t = -1, clean)
        lam = self._lam_np
        self._Eq = torch.as_tensor(np.exp(rates[:, None] * lam[None]), dtype=self.dtype)  # (S, N)
        self._Ebar = torch.as_tensor(np.exp(self.cum[:, None] * lam[None]), dtype=self.dtype)  # (S+1, N)

    @classmethod
    def build(
        cls,
        adjacency,
        k: int,
        *,
        steps: int,
        rate_start: float,
        rate_end: float,
        teleport: float = 0.0,
        rate_scale: float | None = None,
        uniform_tol: float = 0.01,
        dtype: torch.dtype = torch.float64,
    ) -> "TransitionProcess":
        """Graph -> process with a geometric schedule; ``rate_scale=None`` picks the smallest scale whose
        last state is provably within ``uniform_tol`` TV of uniform (closed form with teleport, spectral gap
        without). Logs the mixing report and warns when the last state is not close to uniform."""
        A = scipy.sparse.csr_matrix(adjacency)
        N = A.shape[0]
        ncomp = n_components(A)
        R = rate_matrix(A, k, teleport)
        shape = geometric_rates(steps, rate_start, rate_end)
        lam, V = scipy.linalg.eigh(R)
        if rate_scale is None:
            if teleport > 0:
                total = math.log(1.0 / uniform_tol) / teleport
            else:
                if ncomp > 1:
                    raise ConfigError(
                        f"the KG neighbour graph has {ncomp} connected components: a graph diffusion never mixes across them "
                        "(Qbar stays block diagonal); set diffusion.teleport > 0 or a larger model.kg_max_distance_km"
                    )
                gap = float(-np.sort(lam)[-2])
                if gap <= 1e-12:
                    raise ConfigError("the KG neighbour graph has no spectral gap (numerically disconnected); set diffusion.teleport > 0")
                total = math.log(math.sqrt(N) / (2 * uniform_tol)) / gap  # TV <= sqrt(N)/2 ||.||_2 <= sqrt(N)/2 e^{-gap c}
            rate_scale = total / float(shape.sum())
        elif teleport == 0 and ncomp > 1:
            log.warning(
                "KG neighbour graph has %d components and diffusion.teleport=0: the trajectory chain cannot reach uniform "
                "(sampling starts from uniform, training never sees cross-component states)", ncomp
            )
        proc = cls(R, shape * rate_scale, dtype=dtype, _eig=(lam, V))
        proc.rate_scale = float(rate_scale)
        proc.n_components = ncomp
        rep = proc.report()
        log.info(
            "trajectory process: N=%d, %d components, teleport=%g, rates %.4g..%.4g (scale %.4g, sum %.4g); "
            "max TV(Qbar_S, uniform)=%.3g; clipped mass %.2g, eig clip %.2g",
            N, ncomp, teleport, proc.rates[0], proc.rates[-1], rate_scale, proc.cum[-1], rep["tv_max"], rep["clip_mass"], rep["eig_clip"],
        )
        if rep["tv_max"] > uniform_tol:
            log.warning(
                "trajectory chain does not reach uniform: max TV(Qbar_S row, uniform) = %.3g > uniform_tol=%g "
                "(raise diffusion.teleport or rate_scale)", rep["tv_max"], uniform_tol
            )
        return proc

    def to(self, device) -> "TransitionProcess":
        self.V, self.lam = self.V.to(device), self.lam.to(device)
        self._Eq, self._Ebar = self._Eq.to(device), self._Ebar.to(device)
        return self

    # ------------------------------------------------------------------ rows and products
    @staticmethod
    def _clip(P: torch.Tensor) -> torch.Tensor:
        P = P.clamp_min(0.0)
        return P / P.sum(-1, keepdim=True).clamp_min(torch.finfo(P.dtype).tiny)

    def _t(self, t, M: int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long, device=self.V.device)
        return t.expand(M) if t.ndim == 0 else t

    def _unique_rows(self, idx: torch.Tensor, k: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
        """Rows ``(V[idx] * E[k]) V^T`` computed once per distinct (idx, k) pair, then gathered: a user's
        trajectory repeats few locations, so a batch's B*T rows hold far fewer distinct pairs."""
        key = idx * E.shape[0] + k
        uniq, inv = torch.unique(key, return_inverse=True)
        ui, uk = uniq // E.shape[0], uniq % E.shape[0]
        return self._clip((self.V[ui] * E[uk]) @ self.V.T)[inv]

    def q_rows(self, idx: torch.Tensor, t) -> torch.Tensor:
        """Q_t[idx]: idx (M,) long, t int or (M,) long in [0, S) -> (M, N)."""
        idx = idx.to(self.V.device)
        t = self._t(t, idx.numel())
        return self._unique_rows(idx, t, self._Eq)

    def qbar_rows(self, idx: torch.Tensor, t) -> torch.Tensor:
        """Qbar_t[idx]: idx (M,), t int or (M,) in [-1, S) (-1 = identity) -> (M, N)."""
        idx = idx.to(self.V.device)
        t = self._t(t, idx.numel())
        out = self._unique_rows(idx, t + 1, self._Ebar)
        clean = t < 0
        if bool(clean.any()):
            out[clean] = torch.nn.functional.one_hot(idx[clean], self.N).to(out.dtype)
        return out

    def qbar_apply(self, P: torch.Tensor, t) -> torch.Tensor:
        """P Qbar_t: P (M, N) row vectors, t int or (M,) in [-1, S) -> (M, N) (Qbar_{-1} = I)."""
        P = P.to(device=self.V.device, dtype=self.dtype)
        t = self._t(t, P.shape[0])
        out = ((P @ self.V) * self._Ebar[t + 1]) @ self.V.T
        clean = t < 0
        if bool(clean.any()):
            out[clean] = P[clean]
        return out.clamp_min(0.0)

    def q_matrix(self, t: int) -> torch.Tensor:
        """Full Q_t (N, N) (tests and diagnostics; training never forms it)."""
        return self.q_rows(torch.arange(self.N), t)

    def qbar_matrix(self, t: int) -> torch.Tensor:
        """Full Qbar_t (N, N), t in [-1, S)."""
        return self.qbar_rows(torch.arange(self.N), t)

    # ------------------------------------------------------------------ batch-level operations (B, T)
    @staticmethod
    def _per_pos(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """t: (B,) -> (B*T,) one step per position."""
        return t.view(-1, 1).expand(shape).reshape(-1)

    def q_probs(self, l0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(l_t | l0) = Qbar_t[l0]: l0 (B, T) long, t (B,) -> (B, T, N)."""
        tt = self._per_pos(t.to(self.V.device), l0.shape)
        return self.qbar_rows(l0.reshape(-1), tt).view(*l0.shape, self.N)

    def q_sample(self, l0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw l_t ~ Cat(Qbar_t[l0]). Returns (l_t (B, T) long, probs (B, T, N))."""
        probs = self.q_probs(l0, t)
        lt = torch.multinomial(probs.reshape(-1, self.N).float(), 1, generator=generator).view(l0.shape)
        return lt.to(l0.device), probs

    def posterior(self, lt: torch.Tensor, l0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact q(l_{t-1} | l_t, l0) ∝ (l_t Q_t^T) ⊙ (l0 Qbar_{t-1}); lt, l0 (B, T), t (B,) -> (B, T, N).

        Q_t is symmetric, so the column ``Q_t[:, l_t]`` is the row ``Q_t[l_t]``.
        """
        tt = self._per_pos(t.to(self.V.device), lt.shape)
        fact1 = self.q_rows(lt.reshape(-1), tt)
        fact2 = self.qbar_rows(l0.reshape(-1), tt - 1)
        return self._clip(fact1 * fact2).view(*lt.shape, self.N)

    def posterior_reference(self, l0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The public code's "posterior" ``Qbar_{t-1}[l0] Q_t`` (= Qbar_t[l0]; ignores l_t). Ablation only."""
        tt = self._per_pos(t.to(self.V.device), l0.shape)
        prev = self.qbar_rows(l0.reshape(-1), tt - 1)
        out = ((prev @ self.V) * self._Eq[tt]) @ self.V.T
        return self._clip(out).view(*l0.shape, self.N)

    def reverse_probs(self, p0: torch.Tensor, lt: torch.Tensor, t: torch.Tensor, posterior: str = "exact") -> torch.Tensor:
        """p_theta(l_{t-1} | l_t) from p0 = p_theta(l0 | l_t): (B, T, N) probabilities; lt (B, T); t (B,).

        ``exact``: eq. 6, ``sum_x q(l_{t-1} | l_t, x) p0(x)``. ``reference``: ``p0 Qbar_t`` (public code).
        At t = 0 the exact form returns p0 itself (Qbar_{-1} = I).
        """
        B, T, N = p0.shape
        tt = self._per_pos(t.to(self.V.device), lt.shape)
        P = p0.reshape(-1, N).to(self.dtype)
        if posterior == "reference":
            return self._clip(self.qbar_apply(P, tt)).view(B, T, N)
        if posterior != "exact":
            raise ConfigError(f"diffusion.posterior='{posterior}' unknown (exact, reference)")
        flat = lt.reshape(-1).to(self.V.device)
        qk = self.qbar_rows(flat, tt)  # Qbar_t[l_t] = column l_t of the symmetric Qbar_t: (M, N) over x
        w = torch.where(qk >= self.floor, P / qk.clamp_min(self.floor), torch.zeros_like(P))
        m = self.qbar_apply(w, tt - 1)
        return self._clip(self.q_rows(flat, tt) * m).view(B, T, N)

    # ------------------------------------------------------------------ diagnostics
    def report(self, max_rows: int = 512) -> dict:
        """How close ``Qbar_{S-1}`` rows are to uniform (TV on up to ``max_rows`` evenly spaced rows) and how
        much negative mass clipping removed (over those rows at the first, middle and last step)."""
        idx = torch.as_tensor(np.unique(np.linspace(0, self.N - 1, min(self.N, max_rows)).round().astype(np.int64)), device=self.V.device)
        clip = 0.0
        rowsum = 0.0
        last = None
        for t in sorted({0, self.S // 2, self.S - 1}):
            raw = (self.V[idx] * self._Ebar[t + 1]) @ self.V.T
            clip = max(clip, float((-raw.clamp_max(0.0)).sum(-1).max()))
            rowsum = max(rowsum, float((raw.sum(-1) - 1).abs().max()))
            if t == self.S - 1:
                last = self._clip(raw)
        tv = 0.5 * (last - 1.0 / self.N).abs().sum(-1)
        return {
            "tv_max": float(tv.max()),
            "tv_mean": float(tv.mean()),
            "clip_mass": clip,
            "rowsum_err": rowsum,
            "eig_clip": self.eig_clip,
            "rows_checked": int(idx.numel()),
            "total_rate": float(self.cum[-1]),
        }
