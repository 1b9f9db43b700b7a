"""Mergeable statistics: statistics -> merge -> metric (the weatherbench2 / weatherbench-X pattern).

Every metric of mobscale.eval is a function of a few *statistics* that are sums (or minima / maxima) over data
units. A statistic is computed on one block of data, blocks are merged with :meth:`Mergeable.merge`, and the metric
is read off the merged statistic. So a city-scale store is evaluated block by block (lazily, through Dask) and the
result does not depend on how the data was cut, nor on which worker saw which block: merging is exact (integer
counts, minima, maxima) or exact up to float64 summation order (sums).

How blocks are cut: the drivers split *space* (units: pixels, cells, BSs, users) and give every block the whole
time axis. Everything here merges over any partition of the units. Statistics that need the whole time axis of a
unit (first differences along time, per-unit time means, daily Fourier coefficients, the T x T Gram matrix of the
RV coefficient) are reduced to per-block sums over that block's units, which keeps every statistic O(1) or O(T^2)
in memory whatever the number of units. The purely additive ones (:class:`Extrema`, :class:`Counts`,
:class:`ErrorMoments`, :class:`DailySpectrum` with a global time offset) also merge over time blocks.

Shapes: a block of one array is ``x: (T, U) float64`` (time x units of the block); paired statistics take a real
and a generated block of the same shape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from mobscale.eval.distributions import Bins, daily_coefficients, daily_harmonics, harmonic_weights
from mobscale.log import get_logger

log = get_logger(__name__)

SUM = {"merge": "sum"}
MIN = {"merge": "min"}
MAX = {"merge": "max"}
SAME = {"merge": "same"}  # parameters that must agree (bins, period); merging differing ones is a bug

M = TypeVar("M")


def merge_values(a: Any, b: Any, how: str = "sum", name: str = "value") -> Any:
    """Merge two statistic values: Mergeable -> .merge, dict -> key-wise, list/tuple -> element-wise, else by ``how``."""
    if a is None and b is None:
        return None
    if isinstance(a, Mergeable):
        return a.merge(b)
    if isinstance(a, dict):
        if set(a) != set(b):
            raise ValueError(f"{name}: cannot merge statistics over different keys {sorted(a)} vs {sorted(b)}")
        return {k: merge_values(a[k], b[k], how, f"{name}[{k!r}]") for k in a}
    if isinstance(a, (list, tuple)):  # element-wise (never `+`, which would concatenate)
        if type(a) is not type(b) or len(a) != len(b):
            raise ValueError(f"{name}: cannot merge {type(a).__name__} of {len(a)} with {type(b).__name__} of {len(b)}")
        out = [merge_values(x, y, how, f"{name}[{i}]") for i, (x, y) in enumerate(zip(a, b))]
        return out if isinstance(a, list) else tuple(out)
    if how == "sum":
        return a + b
    if how == "min":
        return np.minimum(a, b)
    if how == "max":
        return np.maximum(a, b)
    if how == "same":
        if not np.array_equal(np.asarray(a), np.asarray(b)):
            raise ValueError(f"{name}: cannot merge statistics with different parameters ({a!r} vs {b!r})")
        return a
    raise ValueError(f"{name}: unknown merge rule '{how}'")


class Mergeable:
    """Dataclass mixin: ``merge`` combines two instances field by field, by each field's ``metadata['merge']``
    (sum | min | max | same; nested Mergeables, dicts and lists merge recursively). Returns a new instance."""

    def merge(self: M, other: M) -> M:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(self).__name__} with {type(other).__name__}")
        kw = {}
        for f in fields(self):  # type: ignore[arg-type]
            kw[f.name] = merge_values(getattr(self, f.name), getattr(other, f.name), f.metadata.get("merge", "sum"),
                                      f"{type(self).__name__}.{f.name}")
        return type(self)(**kw)


def merge_all(parts: Iterable[M]) -> M:
    """Left fold of ``merge`` over ``parts`` (at least one)."""
    it = iter(parts)
    try:
        out = next(it)
    except StopIteration:
        raise ValueError("merge_all: nothing to merge") from None
    for p in it:
        out = merge_values(out, p)
    return out


# ---------------------------------------------------------------- single-array statistics


@dataclass
class Extrema(Mergeable):
    """Minimum, maximum and count of the values seen (count 0 = nothing seen; lo=+inf, hi=-inf)."""

    lo: float = field(default=np.inf, metadata=MIN)
    hi: float = field(default=-np.inf, metadata=MAX)
    n: int = field(default=0, metadata=SUM)

    @classmethod
    def of(cls, x: np.ndarray) -> "Extrema":
        x = np.asarray(x)
        if x.size == 0:
            return cls()
        return cls(float(np.min(x)), float(np.max(x)), int(x.size))


@dataclass
class Counts(Mergeable):
    """Histogram on fixed shared bins: ``counts (n,) int64``."""

    bins: Bins = field(metadata=SAME)
    counts: np.ndarray = field(metadata=SUM)

    @classmethod
    def of(cls, bins: Bins, x: np.ndarray) -> "Counts":
        return cls(bins, bins.counts(x))

    @classmethod
    def empty(cls, bins: Bins) -> "Counts":
        return cls(bins, np.zeros(bins.n, dtype=np.int64))


@dataclass
class Gram(Mergeable):
    """Uncentred time Gram matrix G = sum over units of x_u x_u^T, ``g: (T, T) float64``.

    Column-centring (each unit's series minus its time mean) is H G H with H = I - 11^T / T, so the centred RV
    coefficient needs nothing else; G is additive over any partition of the units.
    """

    g: np.ndarray = field(metadata=SUM)
    n_units: int = field(default=0, metadata=SUM)

    @classmethod
    def of(cls, x: np.ndarray) -> "Gram":
        x = np.asarray(x, dtype=np.float64)
        return cls(x @ x.T, int(x.shape[1]))

    def centred(self) -> np.ndarray:
        g = self.g
        # H G H without forming H: subtract row and column means, add back the grand mean
        return g - g.mean(axis=0, keepdims=True) - g.mean(axis=1, keepdims=True) + g.mean()


@dataclass
class DailySpectrum(Mergeable):
    """Sum over units of the daily Fourier coefficients X_h (see distributions), for unpaired comparisons.

    ``period`` steps per day, ``n_steps`` whole-day steps used (rows beyond are ignored), ``harmonics (H,)``,
    ``coef_sum (H,) complex128``, ``n_units``. The mean over units of the daily component is the component of the
    mean series (linearity), so two populations of different sizes compare through ``coef_sum / n_units``.
    """

    period: int = field(metadata=SAME)
    n_steps: int = field(metadata=SAME)
    harmonics: np.ndarray = field(metadata=SAME)
    coef_sum: np.ndarray = field(metadata=SUM)
    n_units: int = field(default=0, metadata=SUM)

    @classmethod
    def of(cls, x: np.ndarray, period: int, harmonics: int | None, t0: int = 0, n_steps: int | None = None,
           count_units: bool = True) -> "DailySpectrum":
        """x: (T, U) block starting at global step t0; ``n_steps`` = whole-day length of the full series."""
        h = daily_harmonics(period, harmonics)
        total = n_steps if n_steps is not None else (x.shape[0] // period) * period
        keep = max(0, min(x.shape[0], total - t0))
        coef = daily_coefficients(x[:keep], period, h, t0).sum(axis=1) if keep else np.zeros(len(h), np.complex128)
        return cls(period, total, h, coef, int(x.shape[1]) if count_units else 0)

    def mean_coef(self) -> np.ndarray:
        return self.coef_sum / max(self.n_units, 1)


# ---------------------------------------------------------------- paired statistics (real vs generated, same units)


@dataclass
class ErrorMoments(Mergeable):
    """Sums of |s - r| and (s - r)^2 over n paired values (MAE, RMSE, PSNR's MSE)."""

    n: int = field(default=0, metadata=SUM)
    sum_abs: float = field(default=0.0, metadata=SUM)
    sum_sq: float = field(default=0.0, metadata=SUM)

    @classmethod
    def of(cls, real: np.ndarray, synth: np.ndarray) -> "ErrorMoments":
        d = np.asarray(synth, dtype=np.float64) - np.asarray(real, dtype=np.float64)
        return cls(int(d.size), float(np.abs(d).sum()), float(np.square(d).sum()))

    @property
    def mae(self) -> float:
        return self.sum_abs / self.n if self.n else float("nan")

    @property
    def mse(self) -> float:
        return self.sum_sq / self.n if self.n else float("nan")

    @property
    def rmse(self) -> float:
        return float(np.sqrt(self.mse))


@dataclass
class EnsembleErrors(Mergeable):
    """Errors of an ensemble of S generated samples against the real values, over n paired values.

    sum_member_abs: sum over values of mean_i |x_i - y| (the members' MAE); sum_pair_abs: sum over values of
    mean_{i != j} |x_i - x_j| (the ensemble's own spread; 0 when S = 1); sum_mean_abs / sum_mean_sq: errors of
    the ensemble mean. The fair CRPS (Ferro 2014, unbiased in S for the CRPS of the distribution the members
    are drawn from) is member MAE - pair spread / 2; with S = 1 it is the member's MAE, which is exact for a
    deterministic forecast and too high for a stochastic one.
    """

    n: int = field(default=0, metadata=SUM)
    members: int = field(default=0, metadata=SAME)
    sum_member_abs: float = field(default=0.0, metadata=SUM)
    sum_pair_abs: float = field(default=0.0, metadata=SUM)
    sum_mean_abs: float = field(default=0.0, metadata=SUM)
    sum_mean_sq: float = field(default=0.0, metadata=SUM)

    @classmethod
    def of(cls, real: np.ndarray, synth: np.ndarray) -> "EnsembleErrors":
        """real: (T, U); synth: (S, T, U)."""
        y = np.asarray(real, dtype=np.float64)
        x = np.asarray(synth, dtype=np.float64)
        S = x.shape[0]
        member = np.abs(x - y[None]).mean(0)
        pair = np.zeros_like(y)
        if S > 1:
            # sum_{i<j} |x_i - x_j| = sum_k (2k - S + 1) x_(k) over the sorted members: O(S log S), not O(S^2)
            w = (2 * np.arange(S) - S + 1).astype(np.float64).reshape((S,) + (1,) * y.ndim)
            pair = 2.0 * (np.sort(x, axis=0) * w).sum(0) / (S * (S - 1))
        dm = x.mean(0) - y
        return cls(int(y.size), S, float(member.sum()), float(pair.sum()), float(np.abs(dm).sum()), float(np.square(dm).sum()))

    @property
    def crps(self) -> float:
        return (self.sum_member_abs - 0.5 * self.sum_pair_abs) / self.n if self.n else float("nan")

    @property
    def mean_mae(self) -> float:
        return self.sum_mean_abs / self.n if self.n else float("nan")

    @property
    def mean_rmse(self) -> float:
        return float(np.sqrt(self.sum_mean_sq / self.n)) if self.n else float("nan")


@dataclass
class PairedUnitMeans(Mergeable):
    """sum over units of (time-mean generated - time-mean real)^2, and the unit count (spatial RMSE).

    A block must hold the whole time axis of its units (the drivers guarantee it)."""

    n_units: int = field(default=0, metadata=SUM)
    sum_sq: float = field(default=0.0, metadata=SUM)

    @classmethod
    def of(cls, real: np.ndarray, synth: np.ndarray) -> "PairedUnitMeans":
        d = np.asarray(synth, np.float64).mean(axis=0) - np.asarray(real, np.float64).mean(axis=0)
        return cls(int(d.size), float(np.square(d).sum()))

    @property
    def rmse(self) -> float:
        return float(np.sqrt(self.sum_sq / self.n_units)) if self.n_units else float("nan")


@dataclass
class PairedDailyError(Mergeable):
    """sum over units of mean_t (c_real - c_gen)^2 of the daily periodic components (paired periodic RMSE).

    Uses Parseval on the daily Fourier bins, so components are never reconstructed. Whole time axis per block."""

    period: int = field(metadata=SAME)
    harmonics: np.ndarray = field(metadata=SAME)
    n_units: int = field(default=0, metadata=SUM)
    sum_ms: float = field(default=0.0, metadata=SUM)

    @classmethod
    def of(cls, real: np.ndarray, synth: np.ndarray, period: int, harmonics: int | None) -> "PairedDailyError":
        h = daily_harmonics(period, harmonics)
        n = (real.shape[0] // period) * period
        if n == 0 or len(h) == 0:
            return cls(period, h, int(real.shape[1]), float("nan"))
        d = daily_coefficients(np.asarray(synth[:n], np.float64) - np.asarray(real[:n], np.float64), period, h)
        w = harmonic_weights(period, h)
        ms = (w[:, None] * np.abs(d) ** 2).sum(axis=0) / float(n) ** 2  # (U,)
        return cls(period, h, int(real.shape[1]), float(ms.sum()))

    @property
    def rmse(self) -> float:
        return float(np.sqrt(self.sum_ms / self.n_units)) if self.n_units else float("nan")


# ---------------------------------------------------------------- finalisers


def rv_from_grams(g1: np.ndarray, g2: np.ndarray) -> float:
    """RV coefficient (ZoomDiff eq. 1) from two (T, T) centred Gram matrices Gamma Gamma^T.

    RV = tr(G1 G2) / sqrt(tr(G1^2) tr(G2^2)); for symmetric G, tr(A B) = sum(A * B). NaN if either is zero.
    """
    num = float(np.sum(g1 * g2))
    den = float(np.sqrt(np.sum(g1 * g1) * np.sum(g2 * g2)))
    return num / den if den > 0 else float("nan")


def rv_coefficient(a: np.ndarray, b: np.ndarray) -> float:
    """Column-centred RV coefficient of two matrices with the same rows: a (T, P1), b (T, P2)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"RV coefficient needs two matrices with the same number of rows, got {a.shape} and {b.shape}")
    return rv_from_grams(Gram.of(a).centred(), Gram.of(b).centred())


def spectrum_rmse(real: DailySpectrum, synth: DailySpectrum) -> float:
    """RMSE between the unit-mean daily components of two populations (unpaired periodic RMSE)."""
    if real.period != synth.period or real.n_steps != synth.n_steps or not np.array_equal(real.harmonics, synth.harmonics):
        raise ValueError("daily spectra computed with different periods / lengths / harmonics")
    if real.n_steps == 0 or len(real.harmonics) == 0:
        return float("nan")
    w = harmonic_weights(real.period, real.harmonics)
    d = real.mean_coef() - synth.mean_coef()
    return float(np.sqrt((w * np.abs(d) ** 2).sum() / float(real.n_steps) ** 2))


# ---------------------------------------------------------------- block driver


def run_blocks(blocks: Sequence[Any], fn: Callable[[Any], M], *, workers: int = 1, desc: str = "blocks",
               progress: bool = True) -> M:
    """Apply ``fn`` to every block and merge the partial statistics (in block order, so results are deterministic).

    ``workers > 1`` runs blocks on a thread pool (the numpy kernels and Zarr/Dask reads release the GIL); partials
    are merged in block order as they arrive.
    """
    if not blocks:
        raise ValueError(f"{desc}: no blocks to evaluate")
    total = None
    bar = tqdm(total=len(blocks), desc=desc, unit="block", disable=not progress, leave=False)
    try:
        if workers <= 1:
            for b in blocks:
                part = fn(b)
                total = part if total is None else merge_values(total, part)
                bar.update()
        else:
            lock = threading.Lock()

            def _run(b):
                out = fn(b)
                with lock:
                    bar.update()
                return out

            with ThreadPoolExecutor(max_workers=workers) as pool:
                for part in pool.map(_run, blocks):
                    total = part if total is None else merge_values(total, part)
    finally:
        bar.close()
    return total
