"""Wavelet representation of per-user traffic (MSTDiff Sec. III-A) and its invertible normalisation.

A week of half-hourly traffic (T = 336) becomes, by a level-3 ``db1`` DWT, the coefficient sets
``[cA3 | cD3 | cD2 | cD1]`` of lengths ``[42, 42, 84, 168]`` concatenated coarse -> fine into one vector
``w`` of length T (the "band layout"). The transform is PyWavelets' ``wavedec``/``waverec`` with
``mode="periodization"``: for an orthogonal wavelet that is an orthonormal map with an exact inverse and
every level exactly halves the length when T is divisible by ``2**level`` (for db1 the coefficients are
identical to pywt's default mode).

Band b of length L_b covers time windows of ``r_b = T / L_b`` steps: position p of the band summarises
time steps ``[p r_b, (p+1) r_b)``. :class:`BandLayout` carries those facts for the model (which aligns
trajectory tokens to each band) and for the sampler (which inverts the DWT).

Normalisation (:class:`TrafficTransform`): ``log1p`` (default) maps m -> (log1p(m) - mu) / sigma with one
mu, sigma fitted on the training users; zero volumes are encoded ``zero_gap`` log1p units below the positive
ones (``model.users.zero_gap``; 0 = at log1p(0), where a zero threshold then reads near-zero values as zero), and
generated values are capped one sigma above the training maximum when inverted. Per-user traffic is heavy tailed (bursty app sessions: a single
burst can be 1000x the median half-hour), so the paper's per-user max normalisation squeezes most of a
user's week into a few percent of the range and discards the user's volume; log1p keeps both the shape and
the volume and inverts with two numbers. ``user_max`` (the paper's) is kept for compatibility: generated
users then draw their max from the empirical training maxima (quantiles stored in the export).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pywt

from mobscale.errors import ConfigError, InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)

MODE = "periodization"


@dataclass(frozen=True)
class BandLayout:
    """Band geometry of a level-``level`` DWT of length-``T`` sequences (bands ordered coarse -> fine)."""

    T: int
    wavelet: str = "db1"
    level: int = 3
    lengths: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        try:
            w = pywt.Wavelet(self.wavelet)
        except ValueError:
            raise ConfigError(f"model.wavelet='{self.wavelet}' is not a PyWavelets discrete wavelet") from None
        if not w.orthogonal:
            raise ConfigError(f"model.wavelet='{self.wavelet}' is not orthogonal (needed for an exact, norm-preserving inverse)")
        if self.T % (2**self.level):
            raise ConfigError(f"sequence length {self.T} is not divisible by 2**level={2**self.level} (model.users.seq_len)")
        coeffs = pywt.wavedec(np.zeros(self.T), self.wavelet, mode=MODE, level=self.level)
        object.__setattr__(self, "lengths", tuple(int(c.shape[-1]) for c in coeffs))

    @property
    def names(self) -> tuple[str, ...]:
        """``("cA3", "cD3", "cD2", "cD1")`` for level 3."""
        return (f"cA{self.level}",) + tuple(f"cD{j}" for j in range(self.level, 0, -1))

    @property
    def n_bands(self) -> int:
        return len(self.lengths)

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(o) for o in np.cumsum((0,) + self.lengths[:-1]))

    def slices(self) -> list[slice]:
        return [slice(o, o + n) for o, n in zip(self.offsets, self.lengths)]

    def ratio(self, band: int) -> int:
        """Time steps per position of ``band``."""
        return self.T // self.lengths[band]

    def time_centres(self, band: int) -> np.ndarray:
        """(L_b,) float: centre (in time steps) of the window each position of ``band`` covers."""
        r = self.ratio(band)
        return np.arange(self.lengths[band]) * r + (r - 1) / 2.0

    def band_of_time(self, band: int) -> np.ndarray:
        """(T,) int: the position of ``band`` whose window holds each time step."""
        return np.arange(self.T) // self.ratio(band)


def dwt(x: np.ndarray, layout: BandLayout) -> np.ndarray:
    """x: (..., T) -> w: (..., T) float64, bands concatenated coarse -> fine."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] != layout.T:
        raise InputDataError(f"dwt: last axis has length {x.shape[-1]}, expected T={layout.T}")
    return np.concatenate(pywt.wavedec(x, layout.wavelet, mode=MODE, level=layout.level, axis=-1), axis=-1)


def idwt(w: np.ndarray, layout: BandLayout) -> np.ndarray:
    """Inverse of :func:`dwt`: w: (..., T) band layout -> (..., T) float64."""
    w = np.asarray(w, dtype=np.float64)
    if w.shape[-1] != layout.T:
        raise InputDataError(f"idwt: last axis has length {w.shape[-1]}, expected T={layout.T}")
    coeffs = [w[..., s] for s in layout.slices()]
    return pywt.waverec(coeffs, layout.wavelet, mode=MODE, axis=-1)


def dwt_matrix(layout: BandLayout) -> np.ndarray:
    """(T, T) float64 M with ``dwt(x) = x @ M`` (rows: the DWT of the unit vectors). Orthonormal for the
    orthogonal wavelets :class:`BandLayout` accepts, so ``idwt(w) = w @ M.T``: lets torch code move between the
    band layout and time with one matmul."""
    return dwt(np.eye(layout.T), layout)


@dataclass
class TrafficTransform:
    """Invertible per-user traffic normalisation (see module docstring).

    ``kind="log1p"``: state ``mu``, ``sigma``. ``kind="user_max"``: state ``max_quantiles`` (101 quantiles of the
    training users' maxima, used to give generated users a scale).
    """

    kind: str = "log1p"
    mu: float = 0.0
    sigma: float = 1.0
    max_quantiles: np.ndarray | None = None
    zero_below: float = 0.0
    z_max: float = float("inf")
    zero_gap: float = 0.0

    @classmethod
    def fit(cls, m: np.ndarray, kind: str = "log1p", zero_gap: float = 0.0) -> "TrafficTransform":
        """Fit on training traffic m: (U, T) >= 0 (volume per step). ``zero_gap`` > 0 (log1p only): zero volumes
        are encoded at log1p = -zero_gap instead of 0 (see :meth:`_log1p`)."""
        m = np.asarray(m, dtype=np.float64)
        if not np.isfinite(m).all():
            raise InputDataError(f"users/traffic: {int((~np.isfinite(m)).sum())} non-finite values in the training users")
        if (m < 0).any():
            raise InputDataError(f"users/traffic: {int((m < 0).sum())} negative volumes in the training users (min {m.min():.4g})")
        if kind == "log1p":
            if zero_gap < 0:
                raise ConfigError(f"model.users.zero_gap={zero_gap} must be >= 0")
            y = cls._log1p(m, zero_gap)
            mu, sigma = float(y.mean()), float(max(y.std(), 1e-6))
            pos = m[m > 0]
            # zero volumes are a point mass the Gaussian chain can only approach: generated volumes below the
            # log-midpoint between 0 and the 1st percentile of positive training volumes are read as zero. With a
            # zero gap the zeros sit apart from the positives and everything at or below log1p = 0 is zero anyway
            zero_below = float(np.expm1(0.5 * np.log1p(np.quantile(pos, 0.01)))) if zero_gap == 0 and (m == 0).any() and pos.size else 0.0
            return cls(kind, mu=mu, sigma=sigma, zero_below=zero_below, z_max=float((y.max() - mu) / sigma), zero_gap=float(zero_gap))
        if kind == "user_max":
            mx = m.max(axis=-1)
            return cls(kind, max_quantiles=np.quantile(mx, np.linspace(0, 1, 101)))
        raise ConfigError(f"model.users.traffic_transform='{kind}' unknown (log1p, user_max)")

    @staticmethod
    def _log1p(m: np.ndarray, zero_gap: float) -> np.ndarray:
        """log1p(m), zeros moved to -zero_gap. Why: a Gaussian chain blurs the point mass at zero by its residual
        denoising error; when zeros sit at log1p = 0, right next to the smallest positive volumes, about half of
        that blur lands on small positive volumes (measured on the synthetic users: 21-23% zeros generated vs
        43% real). Placed zero_gap below, the blurred zeros stay below 0 and invert to zero (a censored,
        Tobit-like encoding)."""
        y = np.log1p(m)
        return np.where(m > 0, y, -zero_gap) if zero_gap > 0 else y

    def forward(self, m: np.ndarray) -> np.ndarray:
        """(U, T) volumes -> normalised (U, T) float64."""
        m = np.asarray(m, dtype=np.float64)
        if self.kind == "log1p":
            return (self._log1p(m, self.zero_gap) - self.mu) / self.sigma
        mx = m.max(axis=-1, keepdims=True)
        return np.where(mx > 0, m / np.where(mx > 0, mx, 1.0), 0.0) * 2.0 - 1.0

    def inverse(self, z: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Normalised (U, T) -> volumes (U, T) float64 >= 0. ``user_max`` draws each user's max from the
        training maxima (``rng`` required)."""
        z = np.asarray(z, dtype=np.float64)
        if self.kind == "log1p":
            # a diverged sample must not overflow: cap at one sigma (in log1p units) above the training maximum
            cap = self.z_max + 1.0
            n_cap = int((z > cap).sum())
            if n_cap:
                log.warning("traffic: %d generated values above the training maximum by more than a factor e^sigma were capped", n_cap)
            v = np.clip(np.expm1(np.minimum(z, cap) * self.sigma + self.mu), 0.0, None)
            return np.where(v < self.zero_below, 0.0, v)
        if rng is None:
            raise ValueError("TrafficTransform(user_max).inverse needs an rng to draw user scales")
        q = np.asarray(self.max_quantiles, dtype=np.float64)
        scale = np.interp(rng.random(z.shape[:-1]), np.linspace(0, 1, q.size), q)[..., None]
        return np.clip((z + 1.0) / 2.0, 0.0, None) * scale

    def state(self) -> dict:
        """Numbers/arrays that reconstruct the transform (stored in the export's normalisation)."""
        out: dict = {
            "traffic_transform": self.kind, "traffic_mu": float(self.mu), "traffic_sigma": float(self.sigma),
            "traffic_zero_below": float(self.zero_below), "traffic_z_max": float(self.z_max),
            "traffic_zero_gap": float(self.zero_gap),
        }
        if self.max_quantiles is not None:
            out["traffic_max_quantiles"] = np.asarray(self.max_quantiles, dtype=np.float64)
        return out

    @classmethod
    def from_state(cls, state: dict) -> "TrafficTransform":
        q = state.get("traffic_max_quantiles")
        return cls(
            str(state["traffic_transform"]),
            mu=float(state["traffic_mu"]),
            sigma=float(state["traffic_sigma"]),
            max_quantiles=None if q is None else np.asarray(q, dtype=np.float64),
            zero_below=float(state.get("traffic_zero_below", 0.0)),
            z_max=float(state.get("traffic_z_max", float("inf"))),
            zero_gap=float(state.get("traffic_zero_gap", 0.0)),
        )
