"""Trajectory metrics (MoveSim lineage, used by MSTDiff): Distance, Radius, Duration, DailyLoc, G-rank, I-rank.

A trajectory set is ``traj: (N, L) int`` location ids (one row per user-day, L slots of ``slot_minutes``; MoveSim's
GeoLife: L = 48 half-hours) and ``coords: (n_locations, 2) float`` = (lat, lon) degrees per id. Each metric is a
Jensen-Shannon number between the distributions of one statistic on real and on generated rows.

Two modes, both explicit about their conventions (shared/notes/reference-implementations.md):

``mode="clean"`` (physical units, shared bins, divergence in nats by default):
  distance  haversine jump (km, R = 6371 km) between consecutive slots, zero moves included;
            ``bins`` equal bins over [0, max of both sides]
  radius    radius of gyration per row: sqrt(mean haversine^2 to the (mean lat, mean lon) centre), km; shared bins
  duration  length of every stay (run of one location, the last run included), in slots: one bin per length 1..L
  dailyloc  number of distinct locations per row: one bin per count 1..L
  grank     collective rank-frequency: visit shares of the ``topk`` most visited locations, as a distribution over
            ranks 1..topk (zeros when fewer are visited)
  irank     individual rank-frequency: each row's top-``topk`` visit shares, averaged over rows, as a distribution
            over ranks

``mode="movesim"`` reproduces MoveSim's published numbers (FIBLAB/MoveSim code/evaluations.py), defects included:
  distance  *squared* Euclidean jump in degrees; radius = mean squared degree distance to the centroid (not
  sqrt, not km); duration = run lengths / L, the final run of each row dropped; dailyloc = distinct / L;
  grank = histogram of the top-100 collective visit *probabilities*; irank = histogram of the normalised mean
  per-row top-100 frequencies. Histogram edges are ``np.arange(lo, hi, (hi - lo) / bins)``, which silently drops
  the last bin: distance on [0, max_distance) with 10000 bins, radius on [0, max_distance^2) with 10000 bins,
  duration / dailyloc 48 bins on [0, 1), ranks 100 bins on [0, 1). max_distance = 247.3 (MoveSim's GeoLife
  constant). JSD = divergence in nats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobscale.errors import InputDataError
from mobscale.eval.distributions import Bins, JSDConvention, jensen_shannon, jsd_convention

TRAJECTORY_METRICS = ("distance", "radius", "duration", "dailyloc", "grank", "irank")
TRAJECTORY_MODES = ("clean", "movesim")
EARTH_RADIUS_KM = 6371.0
MOVESIM_GEOLIFE_MAX_DISTANCE = 247.3


# ---------------------------------------------------------------- files


def read_movesim(path: str | Path) -> np.ndarray:
    """A MoveSim ``*.data`` file: one row per line, whitespace-separated integer location ids -> (N, L) int64."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: no such file (expected MoveSim trajectories: one day per line, location ids)")
    rows = []
    with path.open() as f:
        for i, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                rows.append([int(p) for p in parts])
            except ValueError:
                raise InputDataError(f"{path}:{i}: expected integer location ids, got '{line.strip()[:60]}'") from None
            if len(rows[-1]) != len(rows[0]):
                raise InputDataError(f"{path}:{i}: {len(rows[-1])} slots, but line 1 has {len(rows[0])}")
    if not rows:
        raise InputDataError(f"{path}: empty trajectory file")
    return np.asarray(rows, dtype=np.int64)


def read_gps(path: str | Path) -> np.ndarray:
    """A MoveSim ``gps`` file: line i = "lat lng" of location id i -> (n, 2) float64."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: no such file (expected a location table: 'lat lng' per line)")
    out = []
    with path.open() as f:
        for i, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                lat, lng = float(parts[0]), float(parts[1])
            except (ValueError, IndexError):
                raise InputDataError(f"{path}:{i}: expected 'lat lng', got '{line.strip()[:60]}'") from None
            if not (-90 <= lat <= 90 and -180 <= lng <= 180):
                raise InputDataError(f"{path}:{i}: ({lat}, {lng}) is not a valid (lat, lng) in degrees")
            out.append((lat, lng))
    if not out:
        raise InputDataError(f"{path}: empty location table")
    return np.asarray(out, dtype=np.float64)


def check_trajectories(traj: np.ndarray, n_locations: int, name: str) -> np.ndarray:
    """Validate ``traj`` (N, L) ids in [0, n_locations); returns it as int64."""
    t = np.asarray(traj)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] < 2:
        raise InputDataError(f"{name}: expected (rows, slots) with at least one row and two slots, got shape {t.shape}")
    if t.dtype.kind not in "iu":
        raise InputDataError(f"{name}: location ids must be integers, got {t.dtype}")
    bad = (t < 0) | (t >= n_locations)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputDataError(f"{name}: row {r}, slot {c}: location id {t[r, c]} outside the location table (0..{n_locations - 1})")
    return t.astype(np.int64, copy=False)


def split_days(traj: np.ndarray, steps_per_day: int) -> np.ndarray:
    """(U, T) -> (U * D, steps_per_day): each user's whole days as rows (a trailing partial day is dropped)."""
    U, T = traj.shape
    D = T // steps_per_day
    if D == 0:
        raise InputDataError(f"trajectories of {T} steps are shorter than one day ({steps_per_day} steps)")
    return traj[:, : D * steps_per_day].reshape(U * D, steps_per_day)


# ---------------------------------------------------------------- per-row statistics


def haversine_km(lat1, lon1, lat2, lon2, radius_km: float = EARTH_RADIUS_KM) -> np.ndarray:
    """Great-circle distance in km (haversine) between points given in degrees (broadcasts)."""
    p1, l1, p2, l2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in (lat1, lon1, lat2, lon2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    return 2 * radius_km * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def radius_of_gyration_km(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Radius of gyration per row: sqrt(mean over slots of haversine^2 to the centre (mean lat, mean lon)).

    lat, lon: (N, L) degrees -> (N,) km. (Centre by averaging degrees is fine at city scale.)"""
    clat = lat.mean(axis=1, keepdims=True)
    clon = lon.mean(axis=1, keepdims=True)
    return np.sqrt(np.mean(haversine_km(clat, clon, lat, lon) ** 2, axis=1))


def run_lengths(traj: np.ndarray, include_last: bool = True) -> np.ndarray:
    """Lengths (slots) of every run of an unchanged location, row by row; ``include_last=False`` drops each row's
    final run (MoveSim's convention). -> 1-d int64."""
    N, L = traj.shape
    change = traj[:, 1:] != traj[:, :-1]  # (N, L-1): a run ends after slot j
    out = []
    for r in range(N):
        ends = np.flatnonzero(change[r]) + 1  # run boundaries
        bounds = np.concatenate([[0], ends, [L]])
        lengths = np.diff(bounds)
        out.append(lengths if include_last else lengths[:-1])
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def distinct_locations(traj: np.ndarray) -> np.ndarray:
    """Number of distinct ids per row -> (N,) int64."""
    s = np.sort(traj, axis=1)
    return 1 + (s[:, 1:] != s[:, :-1]).sum(axis=1)


def collective_topk(traj: np.ndarray, n_locations: int, k: int) -> np.ndarray:
    """Visit probabilities of the k most visited locations, descending (zero-padded) -> (k,)."""
    v = np.bincount(traj.ravel(), minlength=n_locations).astype(np.float64)
    v /= v.sum()
    top = np.sort(v)[::-1][:k]
    return np.pad(top, (0, k - top.size))


def individual_topk(traj: np.ndarray, k: int) -> np.ndarray:
    """Per row, the visit counts of its k most visited ids / L, descending, zero-padded -> (N, k)."""
    N, L = traj.shape
    s = np.sort(traj, axis=1)
    out = np.zeros((N, k))
    for r in range(N):
        _, c = np.unique(s[r], return_counts=True)
        c = np.sort(c)[::-1][:k]
        out[r, : c.size] = c / L
    return out


def _movesim_hist(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    # MoveSim's edges: np.arange(lo, hi, step) has `bins` edges (float rounding aside), i.e. bins-1 bins, and
    # everything at or above the last edge is lost. Reproduced on purpose (compatibility mode only).
    return np.histogram(values, np.arange(lo, hi, (hi - lo) / bins))[0]


def _movesim_stats(traj: np.ndarray, coords: np.ndarray, n_locations: int) -> dict:
    lat, lng = coords[traj, 0], coords[traj, 1]
    L = traj.shape[1]
    jumps = ((lat[:, :-1] - lat[:, 1:]) ** 2 + (lng[:, :-1] - lng[:, 1:]) ** 2).ravel()
    radius = ((lat - lat.mean(1, keepdims=True)) ** 2 + (lng - lng.mean(1, keepdims=True)) ** 2).mean(1)
    iv = individual_topk(traj, 100).mean(axis=0)
    return {
        "distance": jumps,
        "radius": radius,
        "duration": run_lengths(traj, include_last=False) / L,
        "dailyloc": distinct_locations(traj) / L,
        "grank": collective_topk(traj, n_locations, 100),
        "irank": iv / iv.sum(),
    }


def trajectory_statistics(traj: np.ndarray, coords: np.ndarray, mode: str = "clean", *, slot_minutes: float = 30.0,
                          topk: int = 100) -> dict[str, np.ndarray]:
    """The per-item values whose distributions the metrics compare (for plots and custom binning).

    clean: distance (km per jump), radius (km per row), duration (hours per stay), dailyloc (count per row),
    grank / irank (share per rank). movesim: MoveSim's raw values (see module docstring)."""
    coords = np.asarray(coords, dtype=np.float64)
    traj = check_trajectories(traj, coords.shape[0], "trajectories")
    if mode == "movesim":
        return _movesim_stats(traj, coords, coords.shape[0])
    if mode != "clean":
        raise InputDataError(f"trajectory mode '{mode}': choose from {', '.join(TRAJECTORY_MODES)}")
    lat, lon = coords[traj, 0], coords[traj, 1]
    iv = individual_topk(traj, topk).mean(axis=0)
    g = collective_topk(traj, coords.shape[0], topk)
    return {
        "distance": haversine_km(lat[:, :-1], lon[:, :-1], lat[:, 1:], lon[:, 1:]).ravel(),
        "radius": radius_of_gyration_km(lat, lon),
        "duration": run_lengths(traj) * (slot_minutes / 60.0),
        "dailyloc": distinct_locations(traj).astype(np.float64),
        "grank": g / g.sum(),
        "irank": iv / iv.sum(),
    }


# ---------------------------------------------------------------- metrics


def trajectory_metrics(
    real: np.ndarray,
    synth: np.ndarray,
    coords: np.ndarray,
    mode: str = "clean",
    *,
    jsd: str | JSDConvention | None = None,
    bins: int = 100,
    topk: int = 100,
    slot_minutes: float = 30.0,
    max_distance: float = MOVESIM_GEOLIFE_MAX_DISTANCE,
) -> dict[str, float]:
    """JSDs of Distance, Radius, Duration, DailyLoc, G-rank, I-rank between real and generated trajectory sets.

    real: (N, L) int, synth: (M, L) int location ids; coords: (n_locations, 2) (lat, lon) degrees. ``jsd``: the
    convention (default: the mode's, divergence in nats). ``bins`` / ``topk``: clean mode only; ``max_distance``:
    movesim mode's histogram range (degrees). -> {metric: value} in TRAJECTORY_METRICS order.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise InputDataError(f"location table: expected (n_locations, 2) lat/lon, got shape {coords.shape}")
    real = check_trajectories(real, coords.shape[0], "real trajectories")
    synth = check_trajectories(synth, coords.shape[0], "generated trajectories")
    if real.shape[1] != synth.shape[1]:
        raise InputDataError(f"real rows have {real.shape[1]} slots but generated rows have {synth.shape[1]}")
    if mode not in TRAJECTORY_MODES:
        raise InputDataError(f"trajectory mode '{mode}': choose from {', '.join(TRAJECTORY_MODES)}")
    conv = jsd_convention(jsd if jsd is not None else mode)
    a = trajectory_statistics(real, coords, mode, slot_minutes=slot_minutes, topk=topk)
    b = trajectory_statistics(synth, coords, mode, slot_minutes=slot_minutes, topk=topk)
    out = {}
    if mode == "movesim":
        md = float(max_distance)
        ranges = {"distance": (0.0, md, 10000), "radius": (0.0, md * md, 10000), "duration": (0.0, 1.0, 48),
                  "dailyloc": (0.0, 1.0, 48), "grank": (0.0, 1.0, 100), "irank": (0.0, 1.0, 100)}
        for m in TRAJECTORY_METRICS:
            lo, hi, nb = ranges[m]
            out[m] = jensen_shannon(_movesim_hist(a[m], lo, hi, nb), _movesim_hist(b[m], lo, hi, nb), conv, what=m)
        return out
    L = real.shape[1]
    for m in ("distance", "radius"):
        hi = float(max(a[m].max(initial=0.0), b[m].max(initial=0.0)))
        bn = Bins(0.0, hi, bins)
        out[m] = jensen_shannon(bn.counts(a[m]), bn.counts(b[m]), conv, what=m)
    slots = lambda v: np.rint(v / (slot_minutes / 60.0)).astype(np.int64)  # noqa: E731  hours -> whole slots
    out["duration"] = jensen_shannon(np.bincount(slots(a["duration"]), minlength=L + 1)[1:],
                                     np.bincount(slots(b["duration"]), minlength=L + 1)[1:], conv, what="duration")
    out["dailyloc"] = jensen_shannon(np.bincount(a["dailyloc"].astype(np.int64), minlength=L + 1)[1:],
                                     np.bincount(b["dailyloc"].astype(np.int64), minlength=L + 1)[1:], conv, what="dailyloc")
    out["grank"] = jensen_shannon(a["grank"], b["grank"], conv, what="grank")
    out["irank"] = jensen_shannon(a["irank"], b["irank"], conv, what="irank")
    return {m: float(out[m]) for m in TRAJECTORY_METRICS}
