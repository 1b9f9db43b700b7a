"""Per-user evaluation (MSTDiff): the ``users`` group of a real and a generated city store.

Traffic (``users/traffic (user, time)``, 30 min) is compared as distributions, because generated users do not
correspond one-to-one to real users:

* ``jsd_volume`` / ``jsd_diff``: Jensen-Shannon of per-user half-hour volumes / of first differences along time,
  on bins shared by the real users and that generated sample;
* ``periodic_rmse``: RMSE between the daily periodic components of the *mean user* (real vs generated; by
  linearity this is the mean of the users' components). Unpaired, unlike the traffic-field metric.

``normalise="max"`` divides each user's series by its own maximum first (MSTDiff's preprocessing; it makes every
number blind to scale, so the default is ``"none"``).

Trajectories (``users/trajectory (user, time)``, BS ids into the root ``bs``) are cut into user-days of 48 slots
and scored with :func:`mobscale.eval.trajectories.trajectory_metrics` (clean mode by default), BS coordinates
from the root's ``bs_lat`` / ``bs_lon``. A ``sample`` dim on the generated group is evaluated sample by sample.

Either variable may be absent: trajectory-only groups (imported GeoLife / Foursquare / MoveSim stores, a
trajectory-only MSTDiff) and traffic-only ones (MSTDiff "w/o Traj", the CSDI-style baseline). The variables
present in BOTH groups are scored; one present on a single side is skipped with a warning and named under
``"skipped"`` in the result; none in common is an error. The base stations must agree only when trajectories
are scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import xarray as xr

from mobscale.data import schema
from mobscale.errors import InputDataError, StoreError
from mobscale.eval.distributions import Bins, JSDConvention, jensen_shannon, jsd_convention, normalise_per_series
from mobscale.eval.metrics import RangeStats, UnitBlock, unit_blocks
from mobscale.eval.stats import Counts, DailySpectrum, Extrema, Mergeable, run_blocks, spectrum_rmse
from mobscale.eval.trajectories import TRAJECTORY_METRICS, split_days, trajectory_metrics
from mobscale.log import get_logger

log = get_logger(__name__)

USER_TRAFFIC_METRICS = ("jsd_volume", "jsd_diff", "periodic_rmse")
#: per-user variables of a users group that `users_metrics` scores
USER_VARIABLES = ("traffic", "trajectory")


@dataclass
class UserSide(Mergeable):
    """Statistics of one population of users: histograms on each set of bins it is compared on (the real users:
    one per generated sample; a generated sample: its own pair's), and the summed daily spectrum."""

    volume: list[Counts]
    diff: list[Counts]
    spectrum: DailySpectrum


def _users_matrix(da: xr.DataArray, normalise: str) -> np.ndarray:
    """(…, user, time) block -> (…, time, user) float64, normalised per user if asked."""
    x = normalise_per_series(np.asarray(da.values, dtype=np.float64), normalise, axis=-1)
    return np.swapaxes(x, -1, -2)


def check_users(real: xr.Dataset, synth: xr.Dataset, real_root: xr.Dataset, synth_root: xr.Dataset, *,
                real_name: str = "real", synth_name: str = "synthetic") -> tuple[tuple[str, ...], dict[str, str]]:
    """Which of ``USER_VARIABLES`` both users groups hold, checked: dims (user, time) (the generated group may
    lead with ``sample``), non-empty, the same time axis, and (when trajectories are scored) the same base
    stations. -> (variables to score, {skipped variable: why}). StoreError when they share none."""
    have = {name: [v for v in USER_VARIABLES if v in ds.data_vars] for name, ds in ((real_name, real), (synth_name, synth))}
    for name, ds in ((real_name, real), (synth_name, synth)):
        for var in have[name]:
            want = ("user", "time")
            if ds[var].dims not in (want, ("sample", *want)) or (ds is real and ds[var].dims != want):
                raise StoreError(f"{name}/users: {var} has dims {ds[var].dims}, expected {want}"
                                 + (" (or with a leading sample dim)" if ds is synth else ""))
        if ds.sizes.get("user", 0) == 0 or ds.sizes.get("time", 0) < 2:
            raise StoreError(f"{name}/users: empty (users={ds.sizes.get('user', 0)}, time steps={ds.sizes.get('time', 0)})")
    scored = tuple(v for v in USER_VARIABLES if v in have[real_name] and v in have[synth_name])
    if not scored:
        raise StoreError(f"{synth_name}/users and {real_name}/users share no per-user variable to score "
                         f"({real_name} has {have[real_name] or 'none'}, {synth_name} has {have[synth_name] or 'none'}; "
                         f"expected one of {list(USER_VARIABLES)})")
    skipped = {}
    for v in USER_VARIABLES:
        if v not in scored and (v in have[real_name] or v in have[synth_name]):
            missing = synth_name if v in have[real_name] else real_name
            skipped[v] = f"absent from {missing}/users"
            log.warning("users: '%s' is %s: scoring %s only", v, skipped[v], ", ".join(scored))
    a, b = real["time"].values, synth["time"].values
    if a.shape != b.shape or not np.array_equal(a, b):
        raise StoreError(f"{synth_name}/users: time axis ({b.size} steps from {b[0]}) differs from {real_name}/users "
                         f"({a.size} steps from {a[0]})")
    if "trajectory" in scored:
        for c in ("bs", "bs_lat", "bs_lon"):
            if c not in real_root.variables or c not in synth_root.variables:
                raise StoreError(f"{real_name if c not in real_root.variables else synth_name}: no coordinate '{c}' "
                                 "(needed to score trajectories)")
            if real_root[c].shape != synth_root[c].shape or not np.allclose(
                    np.asarray(real_root[c].values, np.float64), np.asarray(synth_root[c].values, np.float64)):
                raise StoreError(f"{synth_name}: base stations ('{c}') differ from {real_name}'s: trajectories index "
                                 "different BS tables")
    return scored, skipped


def _step_minutes(users: xr.Dataset) -> int:
    t = users["time"].values
    if t.size < 2:
        return schema.USER_STEP_MINUTES
    step = int((t[1] - t[0]) / np.timedelta64(1, "m"))
    if step <= 0 or 1440 % step:
        raise StoreError(f"users: time step of {step} min does not divide a day")
    return step


def user_traffic_metrics(real: xr.DataArray, synth: xr.DataArray, *, step_minutes: int = schema.USER_STEP_MINUTES,
                         jsd: str | JSDConvention = "clean", bins: int = 100, bin_scale: str = "linear",
                         normalise: str = "none", harmonics: int | None = None, workers: int = 1,
                         progress: bool = True) -> tuple[np.ndarray, dict]:
    """Distribution metrics of per-user traffic. real: (user, time), synth: (sample?, user, time), lazily.

    Histograms of real users and generated sample k share bins spanning both (never the other samples'), so a
    sample's score does not depend on the others. -> (values (S, 3) in USER_TRAFFIC_METRICS order, details
    {"bins": [(volume Bins, diff Bins) per sample], "real": UserSide, "synth": [UserSide]}) for tables and plots."""
    conv = jsd_convention(jsd)
    if "sample" not in synth.dims:
        synth = synth.expand_dims(sample=1)
    period = 1440 // step_minutes
    n_steps = (real.sizes["time"] // period) * period
    blocks_r = unit_blocks(real, ("user",))
    blocks_s = unit_blocks(synth.isel(sample=0), ("user",))

    def rng_real(b: UnitBlock):
        x = _users_matrix(real.isel(b.sel), normalise)
        return Extrema.of(x), Extrema.of(np.diff(x, axis=0))

    def rng_synth(b: UnitBlock):
        xs = _users_matrix(synth.isel(b.sel), normalise)
        return [Extrema.of(x) for x in xs], [Extrema.of(np.diff(x, axis=0)) for x in xs]

    rv, rd = run_blocks(blocks_r, rng_real, workers=workers, desc="users ranges (real)", progress=progress)
    sv, sd = run_blocks(blocks_s, rng_synth, workers=workers, desc="users ranges (generated)", progress=progress)
    ranges = RangeStats(rv, rd, sv, sd)
    pair_bins = [ranges.pair_bins(k, bins, bin_scale) for k in range(len(sv))]

    def side(x: np.ndarray, which: list[tuple[Bins, Bins]]) -> UserSide:  # x: (T, U)
        if not np.isfinite(x).all():
            raise InputDataError("users/traffic: holds NaN or infinite values")
        d = np.diff(x, axis=0)
        return UserSide([Counts.of(vb, x) for vb, _ in which], [Counts.of(db, d) for _, db in which],
                        DailySpectrum.of(x, period, harmonics, n_steps=n_steps))

    real_side = run_blocks(blocks_r, lambda b: side(_users_matrix(real.isel(b.sel), normalise), pair_bins),
                           workers=workers, desc="users statistics (real)", progress=progress)
    synth_sides = run_blocks(
        blocks_s, lambda b: [side(x, [pair_bins[k]]) for k, x in enumerate(_users_matrix(synth.isel(b.sel), normalise))],
        workers=workers, desc="users statistics (generated)", progress=progress)
    vals = np.full((len(synth_sides), len(USER_TRAFFIC_METRICS)), np.nan)
    for k, ss in enumerate(synth_sides):
        vals[k, 0] = jensen_shannon(real_side.volume[k].counts, ss.volume[0].counts, conv, what="users jsd_volume")
        vals[k, 1] = jensen_shannon(real_side.diff[k].counts, ss.diff[0].counts, conv, what="users jsd_diff")
        vals[k, 2] = spectrum_rmse(real_side.spectrum, ss.spectrum)
    return vals, {"bins": pair_bins, "real": real_side, "synth": synth_sides}


def _summary(values: np.ndarray, names: Sequence[str]) -> dict:
    """(S, M) -> {metric: {"mean", "spread" (ddof=1, None for one sample), "per_sample"}}."""
    out = {}
    for j, m in enumerate(names):
        col = values[:, j]
        out[m] = {
            "mean": float(np.mean(col)),
            "spread": float(np.std(col, ddof=1)) if col.size > 1 else None,
            "per_sample": [float(v) for v in col],
        }
    return out


def users_metrics(real_root: xr.Dataset, real_users: xr.Dataset, synth_root: xr.Dataset, synth_users: xr.Dataset, *,
                  jsd: str | JSDConvention = "clean", traj_mode: str = "clean", bins: int = 100,
                  bin_scale: str = "linear", normalise: str = "none", harmonics: int | None = None, workers: int = 1,
                  progress: bool = True, real_name: str = "real", synth_name: str = "synthetic",
                  return_details: bool = False):
    """Traffic distribution metrics + trajectory metrics of the users groups, for the variables both hold
    (:func:`check_users`) -> JSON-ready dict::

        {"traffic": {metric: {mean, spread, per_sample}}   (when both groups hold traffic)
         "trajectories": {metric: {...}}                   (when both hold trajectories)
         "scored": [variables], "skipped": {variable: why}, "n_samples", "n_users", "conventions"}

    ``return_details=True`` also returns the histograms and user-day trajectories of what was scored (for the
    report).
    """
    scored, skipped = check_users(real_users, synth_users, real_root, synth_root, real_name=real_name, synth_name=synth_name)
    step = _step_minutes(real_users)
    per_day = 1440 // step
    conv = jsd_convention(jsd)
    sample_sizes = {int(synth_users[v].sizes.get("sample", 1)) for v in scored}
    if len(sample_sizes) > 1:
        raise StoreError(f"{synth_name}/users: traffic and trajectory have different numbers of samples {sorted(sample_sizes)}")
    out: dict = {}
    conventions: dict = {"jsd": conv.as_dict() | {"description": conv.describe()},
                         "spread": "sample standard deviation over generated samples (ddof=1)"}
    details: dict = {}
    if "traffic" in scored:
        tvals, details = user_traffic_metrics(real_users["traffic"], synth_users["traffic"], step_minutes=step, jsd=jsd,
                                              bins=bins, bin_scale=bin_scale, normalise=normalise, harmonics=harmonics,
                                              workers=workers, progress=progress)
        out["traffic"] = _summary(tvals, USER_TRAFFIC_METRICS)
        conventions |= {
            "traffic_bins": [{"volume": v.as_dict(), "diff": d.as_dict()} for v, d in details["bins"]],
            "normalise": normalise,
            "periodic_rmse": "RMSE between the daily periodic components of the mean user (unpaired)",
        }
    if "trajectory" in scored:
        coords = np.stack([np.asarray(real_root["bs_lat"].values, np.float64), np.asarray(real_root["bs_lon"].values, np.float64)], axis=1)
        real_days = split_days(np.asarray(real_users["trajectory"].values), per_day)
        st = synth_users["trajectory"]
        synth_list = [st.isel(sample=s).values for s in range(st.sizes["sample"])] if "sample" in st.dims else [st.values]
        synth_days = [split_days(np.asarray(s), per_day) for s in synth_list]
        traj_vals = np.array([[trajectory_metrics(real_days, d, coords, traj_mode, jsd=jsd, slot_minutes=step)[m]
                               for m in TRAJECTORY_METRICS] for d in synth_days])
        out["trajectories"] = _summary(traj_vals, TRAJECTORY_METRICS)
        conventions["trajectories"] = f"{traj_mode} mode on user-days of {per_day} slots of {step} min, BS coordinates from the root"
        details |= {"real_trajectories": real_days, "synth_trajectories": synth_days, "coords": coords}
    out |= {"scored": list(scored), "skipped": skipped, "n_samples": sample_sizes.pop(),
            "n_users": {"real": int(real_users.sizes["user"]), "synthetic": int(synth_users.sizes["user"])},
            "conventions": conventions}
    if return_details:
        return out, details
    return out
