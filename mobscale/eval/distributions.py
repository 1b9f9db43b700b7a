"""Distribution metrics (MSTDiff): Jensen-Shannon conventions, shared bins, histograms, the daily periodic component.

Conventions are explicit because the literature mixes them (see shared/notes/reference-implementations.md):

* ``JSDConvention(kind, base)``: ``kind="divergence"`` is JS(P || Q) = (KL(P || M) + KL(Q || M)) / 2, bounded by
  log(2) in the chosen base; ``kind="distance"`` is its square root (what ``scipy.spatial.distance.jensenshannon``
  returns). ``base=None`` means natural log (nats).
* Named modes (:func:`jsd_convention`): ``"clean"`` and ``"movesim"`` = divergence in nats (MoveSim / PateGail
  report this, max ln 2 = 0.693); ``"mstdiff"`` = scipy's distance in base 2 (max 1), as MSTDiff's release computes.
* Real and generated values are always binned on the *same* edges (MSTDiff's release bins each side on its own
  range, so a generator emitting ``0.5 * real`` scores a perfect 0; shared bins make that visible).

Bins (:class:`Bins`) are linear in a transformed space: ``scale="linear"`` (identity) or ``scale="symlog"``
(``sign(x) * log1p(|x|)``, which keeps heavy-tailed traffic and its signed differences readable). Values outside
the edges are clipped into the end bins, so a histogram never silently drops mass.

The daily periodic component of a series x_t (t = 0..N-1, P steps per day, N a whole number of days D = N/P) is the
part of x made of the Fourier bins at h cycles per day, k = h * D, h in ``harmonics`` (by default every daily
harmonic below Nyquist and Nyquist itself: then the component is the mean daily profile minus the series mean).
With X_h = sum_t x_t exp(-2 pi i h t / P), Parseval gives the mean square of a component difference without
reconstructing it: mean_t (c_t - c'_t)^2 = sum_h w_h |X_h - X'_h|^2 / N^2, w_h = 1 at Nyquist (h = P/2), else 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.spatial.distance import jensenshannon

from mobscale.errors import InputDataError

JSD_MODES = ("clean", "movesim", "mstdiff")


# ---------------------------------------------------------------- Jensen-Shannon


@dataclass(frozen=True)
class JSDConvention:
    """How a Jensen-Shannon number is reported: ``kind`` divergence | distance, ``base`` None (nats) | 2 | 10."""

    kind: Literal["divergence", "distance"] = "divergence"
    base: float | None = None

    def __post_init__(self):
        if self.kind not in ("divergence", "distance"):
            raise InputDataError(f"JSD kind '{self.kind}': choose divergence or distance")
        if self.base is not None and not (self.base > 0 and self.base != 1):
            raise InputDataError(f"JSD base {self.base}: must be positive and not 1 (None = natural log)")

    @property
    def maximum(self) -> float:
        """Value for two distributions with disjoint support (ln 2 for the divergence in nats)."""
        div = np.log(2.0) / (np.log(self.base) if self.base else 1.0)
        return float(div if self.kind == "divergence" else np.sqrt(div))

    def describe(self) -> str:
        unit = "nats" if self.base is None else ("bits" if self.base == 2 else f"log base {self.base:g}")
        return f"Jensen-Shannon {self.kind}, {unit} (max {self.maximum:.4f}), shared bins"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "base": "e" if self.base is None else self.base, "maximum": self.maximum}


def jsd_convention(mode: str | JSDConvention) -> JSDConvention:
    """A named convention (``clean`` | ``movesim`` = divergence in nats; ``mstdiff`` = scipy distance, base 2)."""
    if isinstance(mode, JSDConvention):
        return mode
    if mode in ("clean", "movesim"):
        return JSDConvention("divergence", None)
    if mode == "mstdiff":
        return JSDConvention("distance", 2.0)
    raise InputDataError(f"JSD mode '{mode}': choose from {', '.join(JSD_MODES)}")


def jensen_shannon(p: np.ndarray, q: np.ndarray, convention: JSDConvention | str = "clean", *, what: str = "histogram") -> float:
    """Jensen-Shannon between two histograms on the same bins (counts or probabilities; each is normalised).

    p, q: (B,) non-negative. ``what`` names the statistic in error messages. Raises InputDataError when the shapes
    differ or one side holds no mass (a JSD of an empty distribution is undefined, not 0).
    """
    conv = jsd_convention(convention)
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise InputDataError(f"{what}: JSD needs two 1-d histograms on the same bins, got shapes {p.shape} and {q.shape}")
    for side, h in (("real", p), ("generated", q)):
        if np.any(h < 0) or not np.all(np.isfinite(h)):
            raise InputDataError(f"{what}: {side} histogram has negative or non-finite counts")
        if h.sum() <= 0:
            raise InputDataError(f"{what}: {side} side is empty (no values fall in any bin), JSD is undefined")
    dist = float(jensenshannon(p, q, base=conv.base))
    return dist * dist if conv.kind == "divergence" else dist


# ---------------------------------------------------------------- shared bins


def _transform(x: np.ndarray, scale: str) -> np.ndarray:
    if scale == "linear":
        return x
    if scale == "symlog":
        return np.sign(x) * np.log1p(np.abs(x))
    raise InputDataError(f"bin scale '{scale}': choose linear or symlog")


@dataclass(frozen=True)
class Bins:
    """``n`` equal bins over [lo, hi] in the ``scale``-transformed space; both ends closed (values are clipped).

    ``lo``/``hi`` are in data units; a degenerate range (lo == hi, e.g. constant data) is widened by 0.5 on both
    sides so the single value lands in the middle bin.
    """

    lo: float
    hi: float
    n: int = 100
    scale: str = "linear"

    def __post_init__(self):
        if self.n < 1:
            raise InputDataError(f"bins: need at least 1 bin, got {self.n}")
        if not (np.isfinite(self.lo) and np.isfinite(self.hi)) or self.hi < self.lo:
            raise InputDataError(f"bins: invalid range [{self.lo}, {self.hi}] (empty or non-finite data?)")
        _transform(np.zeros(1), self.scale)

    @property
    def edges(self) -> np.ndarray:
        """(n+1,) edges in the transformed space."""
        a, b = _transform(np.array([self.lo, self.hi], dtype=np.float64), self.scale)
        if b <= a:
            a, b = a - 0.5, b + 0.5
        return np.linspace(a, b, self.n + 1)

    @property
    def data_edges(self) -> np.ndarray:
        """(n+1,) edges in data units (for plots)."""
        e = self.edges
        if self.scale == "symlog":
            return np.sign(e) * np.expm1(np.abs(e))
        return e

    def counts(self, x: np.ndarray) -> np.ndarray:
        """(n,) int64 histogram of the finite values of ``x`` (any shape), clipped into the end bins."""
        v = _transform(np.asarray(x, dtype=np.float64).ravel(), self.scale)
        e = self.edges
        v = np.clip(v, e[0], e[-1])
        return np.histogram(v, bins=e)[0].astype(np.int64)

    def as_dict(self) -> dict:
        return {"lo": float(self.lo), "hi": float(self.hi), "n": int(self.n), "scale": self.scale}


def first_differences(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """First-order differences along TIME (``axis``), never across users/units (MSTDiff's release gets this wrong)."""
    return np.diff(np.asarray(x, dtype=np.float64), axis=axis)


def normalise_per_series(x: np.ndarray, how: str, axis: int = -1) -> np.ndarray:
    """``how="none"``: unchanged; ``"max"``: each series divided by its own max (MSTDiff normalises each user's
    traffic to [0, 1]; an all-zero series stays zero). Normalising per series makes the metrics scale-blind."""
    x = np.asarray(x, dtype=np.float64)
    if how == "none":
        return x
    if how == "max":
        m = np.max(x, axis=axis, keepdims=True)
        return np.divide(x, m, out=np.zeros_like(x), where=m > 0)
    raise InputDataError(f"normalisation '{how}': choose none or max")


# ---------------------------------------------------------------- daily periodic component


def daily_harmonics(period: int, harmonics: int | None = None) -> np.ndarray:
    """Harmonic numbers h (cycles per day) used for the daily component: 1..floor(P/2), or 1..min(harmonics, P/2)."""
    top = period // 2
    if harmonics is not None:
        if harmonics < 1:
            raise InputDataError(f"harmonics={harmonics}: need at least 1 (or None for all)")
        top = min(top, harmonics)
    return np.arange(1, top + 1)


def harmonic_weights(period: int, h: np.ndarray) -> np.ndarray:
    """Parseval weight of each harmonic's bin pair: 2 (a +/- frequency pair), 1 at Nyquist (h = P/2, P even)."""
    return np.where((period % 2 == 0) & (h == period // 2), 1.0, 2.0)


def daily_coefficients(x: np.ndarray, period: int, h: np.ndarray, t0: int = 0) -> np.ndarray:
    """X_h = sum_t x_t exp(-2 pi i h (t0 + t) / P) for each series.

    x: (T, U) float; returns (len(h), U) complex128. ``t0`` is the global index of row 0, so sums over time blocks
    add up to the whole-series coefficients.
    """
    t = (t0 + np.arange(x.shape[0])) % period
    basis = np.exp(-2j * np.pi * np.outer(h, t) / period)  # (H, T)
    return basis @ np.asarray(x, dtype=np.float64)


def daily_component(x: np.ndarray, period: int, harmonics: int | None = None) -> np.ndarray:
    """The daily periodic component itself, x: (T, U) with T a multiple of P -> (T, U) float64 (for plots/tests)."""
    T = x.shape[0]
    if T % period or T == 0:
        raise InputDataError(f"daily component: series of {T} steps is not a whole number of {period}-step days")
    h = daily_harmonics(period, harmonics)
    X = daily_coefficients(x, period, h)
    t = np.arange(T) % period
    w = harmonic_weights(period, h)
    basis = np.exp(2j * np.pi * np.outer(t, h) / period)  # (T, H)
    # a +/- frequency pair contributes 2 Re(.); the Nyquist bin is its own conjugate and contributes once
    return np.real(basis @ (X * (w / T)[:, None]))
