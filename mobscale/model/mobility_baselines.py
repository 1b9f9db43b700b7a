"""Trajectory baselines for MSTDiff Table II: a first-order Markov chain over BS and an exploration and
preferential return (EPR) model, both fitted on training trajectories (location ids per time slot).

* :class:`MarkovChainMobility`: P(l_{t+1} = j | l_t = i) from transition counts, backed off to the global
  visit distribution with weight ``smoothing / (n_i + smoothing)`` (rows never seen leave by popularity);
  the first slot follows the empirical start distribution. Sparse counts, so N in the tens of thousands fits.
* :class:`EPRMobility` (Song et al., Nat. Phys. 2010; destinations as in d-EPR, Pappalardo et al. 2015): a
  user stays for a duration drawn from the empirical stay lengths, then explores a new location with
  probability ``rho * S^-gamma`` (S = distinct locations visited so far; a user who has seen one place can
  only explore) or returns to a visited one in proportion to its past visits. An exploration jump draws a distance from the empirical distances of
  exploration moves and picks, among unvisited locations at about that distance (ratio within 1.25), one in
  proportion to its popularity. ``rho`` and ``gamma`` are fitted by maximum likelihood on the
  explore/return decisions of the training trajectories.

Both: ``fit(traj, ...)`` with traj (U, T) int, then ``sample(n, T, seed) -> (n, T) int64``.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import scipy.sparse
from tqdm.auto import tqdm

from mobscale.errors import InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)


def _check(traj: np.ndarray, n: int | None) -> tuple[np.ndarray, int]:
    traj = np.asarray(traj)
    if traj.ndim != 2 or traj.shape[1] < 2:
        raise InputDataError(f"trajectories must be (users, time >= 2) location ids, got shape {traj.shape}")
    if not np.issubdtype(traj.dtype, np.integer):
        raise InputDataError(f"trajectories must hold integer location ids, got {traj.dtype}")
    if (traj < 0).any():
        raise InputDataError(f"trajectories hold {int((traj < 0).sum())} negative location ids")
    N = int(traj.max()) + 1 if n is None else int(n)
    if traj.max() >= N:
        raise InputDataError(f"trajectory id {int(traj.max())} >= n_locations={N}")
    return traj.astype(np.int64), N


class MarkovChainMobility:
    """First-order Markov chain over locations (see module docstring)."""

    def __init__(self, smoothing: float = 1.0):
        self.smoothing = float(smoothing)

    def fit(self, traj: np.ndarray, n_locations: int | None = None) -> "MarkovChainMobility":
        traj, N = _check(traj, n_locations)
        self.N = N
        a, b = traj[:, :-1].ravel(), traj[:, 1:].ravel()
        self.counts = scipy.sparse.csr_matrix((np.ones(a.size), (a, b)), shape=(N, N))
        self.counts.sum_duplicates()
        self.row_total = np.asarray(self.counts.sum(1)).ravel()
        self.pop = np.bincount(traj.ravel(), minlength=N).astype(np.float64)
        self.pop /= self.pop.sum()
        self.start = np.bincount(traj[:, 0], minlength=N).astype(np.float64)
        self.start /= self.start.sum()
        self._cum = np.cumsum(self.counts.data)
        return self

    def sample(self, n: int, T: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, T), dtype=np.int64)
        out[:, 0] = rng.choice(self.N, size=n, p=self.start)
        pop_cum = np.cumsum(self.pop)
        ip = self.counts.indptr
        for t in range(1, T):
            cur = out[:, t - 1]
            tot = self.row_total[cur]
            backoff = rng.random(n) * (tot + self.smoothing) >= tot  # prob smoothing / (n_i + smoothing)
            nxt = np.empty(n, dtype=np.int64)
            if backoff.any():
                nxt[backoff] = np.minimum(np.searchsorted(pop_cum, rng.random(int(backoff.sum())) * pop_cum[-1], side="right"), self.N - 1)
            row = ~backoff
            if row.any():
                c = cur[row]
                before = np.where(ip[c] > 0, self._cum[np.maximum(ip[c] - 1, 0)], 0.0)
                target = before + rng.random(c.size) * self.row_total[c]
                k = np.minimum(np.searchsorted(self._cum, target, side="right"), ip[c + 1] - 1)
                nxt[row] = self.counts.indices[k]
            out[:, t] = nxt
        return out


def _runs(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(locations, lengths) of the runs of equal consecutive values."""
    change = np.flatnonzero(np.diff(row)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [row.size]]))
    return row[starts], lengths


class EPRMobility:
    """Exploration and preferential return (see module docstring). coords: (N, 2) planar km."""

    def __init__(self, rho: float | None = None, gamma: float | None = None):
        self.rho, self.gamma = rho, gamma

    def fit(self, traj: np.ndarray, coords_km: np.ndarray) -> "EPRMobility":
        xy = np.asarray(coords_km, dtype=np.float64)
        traj, N = _check(traj, xy.shape[0])
        self.N, self.xy = N, xy
        self.pop = np.bincount(traj.ravel(), minlength=N).astype(np.float64) + 1.0
        self.start = np.bincount(traj[:, 0], minlength=N).astype(np.float64)
        self.start /= self.start.sum()
        stays, S_at, new_at, jumps = [], [], [], []
        for row in traj:
            locs, lens = _runs(row)
            stays.append(lens[:-1])  # the last run is cut by the window end
            seen = {int(locs[0])}
            for prev, loc in zip(locs[:-1], locs[1:]):
                is_new = int(loc) not in seen
                if len(seen) > 1:  # with one visited place a move is necessarily new: no decision to fit
                    S_at.append(len(seen))
                    new_at.append(is_new)
                if is_new:
                    jumps.append(float(np.hypot(*(xy[loc] - xy[prev]))))
                    seen.add(int(loc))
        stays_all = np.concatenate(stays) if stays else np.array([])
        self.stays = stays_all if stays_all.size else np.array([traj.shape[1]])
        self.jumps = np.asarray(jumps) if jumps else np.array([0.0])
        S_at, new_at = np.asarray(S_at, dtype=np.float64), np.asarray(new_at, dtype=np.float64)
        if self.rho is None or self.gamma is None:
            self.rho, self.gamma = self._fit_rho_gamma(S_at, new_at)
        log.info("EPR fit: rho=%.3f gamma=%.3f, %d moves, %d exploration jumps, median stay %.1f slots", self.rho, self.gamma, S_at.size, len(jumps), float(np.median(self.stays)))
        return self

    @staticmethod
    def _fit_rho_gamma(S: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """MLE of P(new | S) = min(1, rho S^-gamma) on Bernoulli decisions."""
        if S.size == 0:
            return 0.6, 0.21  # Song et al.'s values when there are no moves to fit on
        logS = np.log(S)

        def nll(theta):
            p = np.clip(np.exp(theta[0] - theta[1] * logS), 1e-6, 1 - 1e-6)
            return -(y * np.log(p) + (1 - y) * np.log1p(-p)).sum()

        res = scipy.optimize.minimize(nll, x0=np.array([np.log(0.6), 0.21]), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-8, "maxiter": 2000})
        return float(np.exp(res.x[0])), float(res.x[1])

    def _explore(self, cur: int, visited: dict[int, int], rng: np.random.Generator) -> int:
        r = float(rng.choice(self.jumps))
        d = np.hypot(self.xy[:, 0] - self.xy[cur, 0], self.xy[:, 1] - self.xy[cur, 1])
        free = np.ones(self.N, dtype=bool)
        free[list(visited)] = False
        if not free.any():
            return self._return(cur, visited, rng)
        lo, hi = r / 1.25, r * 1.25
        cand = np.flatnonzero(free & (d >= lo) & (d <= hi))
        if cand.size == 0:
            fi = np.flatnonzero(free)
            cand = fi[np.abs(d[fi] - r) <= np.abs(d[fi] - r).min() + 1e-9]
        w = self.pop[cand]
        return int(rng.choice(cand, p=w / w.sum()))

    @staticmethod
    def _return(cur: int, visited: dict[int, int], rng: np.random.Generator) -> int:
        keys = np.array([k for k in visited if k != cur])
        if keys.size == 0:
            return cur
        w = np.array([visited[k] for k in keys], dtype=np.float64)
        return int(rng.choice(keys, p=w / w.sum()))

    def sample(self, n: int, T: int, seed: int = 0, progress: bool = False) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, T), dtype=np.int64)
        for u in tqdm(range(n), desc="EPR users", disable=not progress, leave=False):
            cur = int(rng.choice(self.N, p=self.start))
            visited = {cur: 1}
            t = 0
            while t < T:
                stay = int(rng.choice(self.stays))
                out[u, t : t + stay] = cur
                t += stay
                if t >= T:
                    break
                if len(visited) == 1 or rng.random() < min(1.0, self.rho * len(visited) ** (-self.gamma)):
                    nxt = self._explore(cur, visited, rng)
                else:
                    nxt = self._return(cur, visited, rng)
                visited[nxt] = visited.get(nxt, 0) + 1
                cur = nxt
        return out
