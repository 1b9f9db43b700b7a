"""Traffic-field metrics over named dimensions: (metric, level, resolution), from mergeable block statistics.

Entry points (for the CLI and the paper-table drivers)::

    ds = traffic_metrics(real_ds, synth_ds, levels=("bs", "cell"), resolutions=("1h", "1d"))
    ds["value"].sel(metric="rmse", level="cell", resolution="1h")      # mean over generated samples
    ds["spread"], ds["per_sample"], ds["data_range"]                  # std over samples, each sample, PSNR's L

``real_ds`` / ``synth_ds`` are city stores opened lazily with :func:`mobscale.data.store.open_city`; the generated
store may carry a leading ``sample`` dimension on its traffic variables (several realisations). Traffic at a
resolution comes from :func:`mobscale.data.pyramid.temporal` (sums of native steps, trailing partial block dropped).

Metrics per (level, resolution); x real, x^ generated, over the N = T x U values of the level (U units):

* ``mae``  = mean |x^ - x|;  ``rmse`` = sqrt(mean (x^ - x)^2)                               (ZoomDiff)
* ``sprmse`` = RMSE over units of the time means                                       (ZoomDiff spRMSE)
* ``psnr`` = 10 log10(L^2 / MSE), L = ``data_range`` (default: max of the real data of that level and
  resolution over the evaluated set; recorded in ``data_range``)                        (ZoomDiff)
* ``rv_coarser_real`` / ``rv_coarser_synth``: column-centred RV coefficient (ZoomDiff eq. 1) between this level
  and the next coarser *evaluated* level, on real / generated data (NaN for the coarsest); ``rv_real_synth``: RV
  between real and generated at this level. Rows = time steps, columns = units.
* ``jsd_volume`` / ``jsd_diff``: Jensen-Shannon of the values / of first differences along time, on bins shared
  by the real data and that generated sample (convention in the attrs)                  (MSTDiff)
* ``periodic_rmse``: RMSE (over time and units) between the daily periodic components of real and generated
  series, unit by unit (NaN at 1d, where a day is one step)                             (MSTDiff)

Ensemble metrics (``ds["ensemble"]`` (ensemble_metric, level, resolution)), all samples together:

* ``crps``: fair CRPS of the S samples as a forecast distribution of each value; the MAE when S = 1
* ``mae_of_mean`` / ``rmse_of_mean``: errors of the sample mean; ``members``: S

Why both: one sample of a calibrated generator carries the data's own noise, so its MAE cannot beat the noise-free
conditional mean (the best point forecast); the CRPS rewards sharpness *and* calibration, and the true conditional
distribution minimises it.

Memory: O(T^2) per (level, resolution, sample) for the RV Gram matrices (skipped with a warning when T exceeds
``max_gram_steps``), O(bins) for histograms, O(1) for everything else; data are read one block of units at a time,
each block holding the whole time axis, and read twice (pass 1: value ranges for the shared bins).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import dask
import numpy as np
import xarray as xr

from mobscale.data import pyramid, schema
from mobscale.errors import InputDataError, StoreError
from mobscale.eval.distributions import Bins, JSDConvention, daily_harmonics, jensen_shannon, jsd_convention
from mobscale.eval.stats import (
    Counts,
    EnsembleErrors,
    ErrorMoments,
    Extrema,
    Gram,
    Mergeable,
    PairedDailyError,
    PairedUnitMeans,
    rv_from_grams,
    run_blocks,
)
from mobscale.log import get_logger

log = get_logger(__name__)

TRAFFIC_METRICS = (
    "mae", "rmse", "sprmse", "psnr",
    "rv_coarser_real", "rv_coarser_synth", "rv_real_synth",
    "jsd_volume", "jsd_diff", "periodic_rmse",
)
HIGHER_IS_BETTER = {"psnr", "rv_real_synth"}
#: metrics of the generated samples taken together (variable ``ensemble``), see the module docstring
ENSEMBLE_METRICS = ("crps", "mae_of_mean", "rmse_of_mean", "members")


# ---------------------------------------------------------------- input checks


def _ordered(items: Sequence[str] | None, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """Validate and order (coarse -> fine, as in ``allowed``) a user selection; None = all."""
    if items is None or len(items) == 0:
        return tuple(allowed)
    bad = [i for i in items if i not in allowed]
    if bad:
        raise InputDataError(f"unknown {what} {', '.join(map(repr, bad))} (choose from {', '.join(allowed)})")
    return tuple(a for a in allowed if a in set(items))


def _sample_dims(da: xr.DataArray, lvl: str, name: str, allow_sample: bool) -> None:
    want = schema.LEVEL_DIMS[lvl]
    if da.dims == want or (allow_sample and da.dims == ("sample", *want)):
        return
    extra = " or ('sample', ...)" if allow_sample else ""
    raise StoreError(f"{name}: {da.name} has dims {da.dims}, expected {want}{extra}")


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"lengths {a.shape[0] if a.ndim else a.shape} vs {b.shape[0] if b.ndim else b.shape}"
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        bad = ~np.isclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-9, atol=1e-6)
    else:
        bad = a != b
    i = np.unravel_index(int(np.argmax(bad)), a.shape)
    i = i[0] if len(i) == 1 else i
    return f"first at index {i}: {a[i]!r} vs {b[i]!r}"


def check_compatible(real: xr.Dataset, synth: xr.Dataset, levels: Sequence[str], *, real_name: str = "real",
                     synth_name: str = "synthetic") -> None:
    """Fail with a StoreError unless both stores describe the same city and time axis for ``levels``.

    Checks: the traffic variables exist with schema dims (``synth`` may add a leading ``sample``), the native time
    step, the ``time`` coordinate, the unit coordinates of each level, and the grid50 -> cell -> bs maps (the
    hierarchy behind RV between levels). Empty time or unit axes are errors.
    """
    for name, ds in ((real_name, real), (synth_name, synth)):
        if "time_step_minutes" not in ds.attrs:
            raise StoreError(f"{name}: store has no 'time_step_minutes' attribute")
        if ds.sizes.get("time", 0) == 0:
            raise StoreError(f"{name}: the time axis is empty (nothing to evaluate)")
        for lvl in levels:
            var = schema.TRAFFIC_VAR[lvl]
            if var not in ds.data_vars:
                raise StoreError(f"{name}: no variable '{var}' (level {lvl})")
            _sample_dims(ds[var], lvl, name, allow_sample=ds is synth)
            for d in schema.LEVEL_DIMS[lvl][1:]:
                if ds.sizes[d] == 0:
                    raise StoreError(f"{name}: dimension '{d}' of level {lvl} is empty")
        if "sample" in ds.dims and ds.sizes["sample"] == 0:
            raise StoreError(f"{name}: the sample dimension is empty")
    if int(real.attrs["time_step_minutes"]) != int(synth.attrs["time_step_minutes"]):
        raise StoreError(f"{synth_name}: native time step {synth.attrs['time_step_minutes']} min differs from "
                         f"{real_name}'s {real.attrs['time_step_minutes']} min")
    coords = ["time"]
    for lvl in levels:
        coords += list(schema.LEVEL_DIMS[lvl][1:])
    if {"cell", "bs"} & set(levels) or len(levels) > 1:
        coords += [c for c in ("pixel_cell", "cell_bs") if c in real.variables or c in synth.variables]
    for c in dict.fromkeys(coords):
        if c not in real.variables or c not in synth.variables:
            missing = real_name if c not in real.variables else synth_name
            raise StoreError(f"{missing}: no coordinate '{c}' (needed to check that both stores describe the same city)")
        a, b = np.asarray(real[c].values), np.asarray(synth[c].values)
        if a.shape != b.shape or not (np.array_equal(a, b) if a.dtype.kind not in "fc" else
                                      np.allclose(a, b, rtol=1e-9, atol=1e-6)):
            raise StoreError(f"{synth_name}: coordinate '{c}' differs from {real_name}'s ({_first_difference(a, b)}); "
                             "real and generated stores must describe the same city and time span")


def to_synthetic_step(real: xr.Dataset, synth: xr.Dataset, real_name: str, synth_name: str) -> xr.Dataset:
    """``real`` summed to the generated store's native step when that step is a whole multiple of the real one
    (a model trained at 1 h on a 15-min store writes 1 h); any other mismatch is left to the compatibility check."""
    rs, ss = pyramid.time_step_minutes(real), pyramid.time_step_minutes(synth)
    if ss != rs and ss % rs == 0:
        log.warning("%s is at %d min and %s at %d min: scoring against the real traffic summed to %d min",
                    real_name, rs, synth_name, ss, ss)
        return pyramid.at_time_step(real, ss)
    return real


def check_resolutions(native_minutes: int, resolutions: Sequence[str], n_steps: int) -> None:
    for r in resolutions:
        try:
            f = pyramid.temporal_factor(native_minutes, r)
        except ValueError as e:
            raise InputDataError(f"resolution {r}: {e}") from None
        if n_steps // f == 0:
            raise InputDataError(f"resolution {r}: the series has {n_steps} native steps, fewer than one {r} block")


# ---------------------------------------------------------------- blocks of units


@dataclass(frozen=True)
class UnitBlock:
    """A block of units of one level: ``sel`` (isel over the spatial dims) and the units' flat indices."""

    sel: dict
    units: np.ndarray


def unit_blocks(da: xr.DataArray, space_dims: Sequence[str], max_units: int | None = None) -> list[UnitBlock]:
    """Cut the spatial dims of ``da`` along its Dask chunks (whole dims for numpy data) into blocks of units.

    ``max_units`` further splits the first spatial dim so a block holds at most that many units (bounds memory:
    a block is loaded as (T, units) float64)."""
    sizes = [da.sizes[d] for d in space_dims]
    bounds = []
    for d, n in zip(space_dims, sizes):
        if da.chunks is not None:
            ch = da.chunks[da.get_axis_num(d)]
        else:
            ch = (n,)
        edges = np.concatenate([[0], np.cumsum(ch)]).astype(int)
        bounds.append(list(zip(edges[:-1], edges[1:])))
    if max_units:
        inner = int(np.prod([max(b - a for a, b in bd) for bd in bounds[1:]])) if len(bounds) > 1 else 1
        step = max(1, max_units // max(inner, 1))
        bounds[0] = [(s, min(b, s + step)) for a, b in bounds[0] for s in range(a, b, step)]
    blocks = []
    strides = np.cumprod([1] + sizes[::-1][:-1])[::-1]
    for combo in np.ndindex(*[len(b) for b in bounds]):
        sel, idx = {}, None
        for k, (d, j) in enumerate(zip(space_dims, combo)):
            a, b = bounds[k][j]
            sel[d] = slice(int(a), int(b))
            r = np.arange(a, b) * strides[k]
            idx = r if idx is None else (idx[:, None] + r[None, :]).ravel()
        blocks.append(UnitBlock(sel, idx))
    return blocks


def load_block(real: xr.DataArray, synth: xr.DataArray, block: UnitBlock, *, real_name: str, synth_name: str):
    """Load one block of units (whole time axis) of both arrays: -> (real (time, *space), synth (sample, time, *space)).

    Raises InputDataError naming the store, variable and block when a value is NaN or infinite."""
    r = real.isel(block.sel)
    s = synth.isel(block.sel)
    if "sample" not in s.dims:
        s = s.expand_dims(sample=1)
    r, s = dask.compute(r, s)
    for name, a in ((real_name, r), (synth_name, s)):
        if not np.isfinite(a.values).all():
            where = ", ".join(f"{d}={sl.start}:{sl.stop}" for d, sl in block.sel.items())
            raise InputDataError(f"{name}: {a.name} holds NaN or infinite values (block {where})")
    return r, s


def at_resolution(da: xr.DataArray, resolution: str, native_minutes: int) -> xr.DataArray:
    """``pyramid.temporal`` on an in-memory block, summed in float64.

    Summing float32 in float32 makes the last bits depend on the block's memory layout (numpy picks pairwise or
    sequential summation by stride), so results would change with the chunking; float64 sums rounded once to
    float32 (pyramid's output dtype) do not."""
    return pyramid.temporal(da.astype(np.float64), resolution, native_minutes)


def as_matrix(da: xr.DataArray) -> np.ndarray:
    """(…, time, *space) -> (…, time, units) float64 (units flattened row-major, matching UnitBlock.units)."""
    lead = da.dims.index("time")
    shape = da.shape[: lead + 1] + (-1,)
    return np.asarray(da.values, dtype=np.float64).reshape(shape)


# ---------------------------------------------------------------- statistics of one (level, resolution)


@dataclass
class RangeStats(Mergeable):
    """Pass 1: value and first-difference ranges of the real data and of each generated sample."""

    real_volume: Extrema
    real_diff: Extrema
    synth_volume: list[Extrema]
    synth_diff: list[Extrema]

    @classmethod
    def of(cls, real: np.ndarray, synth: np.ndarray) -> "RangeStats":
        """real: (T, U), synth: (S, T, U)."""
        return cls(Extrema.of(real), Extrema.of(np.diff(real, axis=0)),
                   [Extrema.of(x) for x in synth], [Extrema.of(np.diff(x, axis=0)) for x in synth])

    def pair_bins(self, s: int, n: int, scale: str) -> tuple[Bins, Bins]:
        """Bins shared by the real data and sample ``s`` (so a sample's score never depends on the others)."""
        v = self.real_volume.merge(self.synth_volume[s])
        d = self.real_diff.merge(self.synth_diff[s])
        return Bins(v.lo, v.hi, n, scale), (Bins(d.lo, d.hi, n, scale) if d.n else Bins(0.0, 0.0, n, scale))


@dataclass
class SideStats(Mergeable):
    """Bin-independent statistics of one array (the real data, or one generated sample) at one (level, resolution)."""

    extrema: Extrema
    gram: Gram | None


@dataclass
class PairStats(Mergeable):
    """Real vs one generated sample at one (level, resolution): paired errors and the two histograms of values and
    of first differences on the bins shared by this pair."""

    errors: ErrorMoments
    spatial: PairedUnitMeans
    periodic: PairedDailyError
    volume_real: Counts
    volume_synth: Counts
    diff_real: Counts
    diff_synth: Counts


@dataclass
class LevelStats(Mergeable):
    """Everything the traffic metrics of one (level, resolution) need; ``synth``/``pairs`` hold one per sample."""

    real: SideStats
    synth: list[SideStats]
    pairs: list[PairStats]
    ensemble: EnsembleErrors


def _period(resolution: str) -> int:
    return schema.TEMPORAL_RESOLUTIONS["1d"] // schema.TEMPORAL_RESOLUTIONS[resolution]


@dataclass(frozen=True)
class _Plan:
    level: str
    var: str
    space: tuple[str, ...]
    resolutions: tuple[str, ...]
    native: int
    real_name: str
    synth_name: str


def _range_block(real: xr.Dataset, synth: xr.Dataset, plan: _Plan, block: UnitBlock) -> dict:
    r, s = load_block(real[plan.var], synth[plan.var], block, real_name=plan.real_name, synth_name=plan.synth_name)
    return {res: RangeStats.of(as_matrix(at_resolution(r, res, plan.native)), as_matrix(at_resolution(s, res, plan.native)))
            for res in plan.resolutions}


def _stats_block(real: xr.Dataset, synth: xr.Dataset, plan: _Plan, block: UnitBlock, bins: dict, grams: dict,
                 harmonics: int | None) -> dict:
    r, s = load_block(real[plan.var], synth[plan.var], block, real_name=plan.real_name, synth_name=plan.synth_name)
    out = {}
    for res in plan.resolutions:
        rm = as_matrix(at_resolution(r, res, plan.native))  # (T, U)
        sm = as_matrix(at_resolution(s, res, plan.native))  # (S, T, U)
        period = _period(res)
        rd = np.diff(rm, axis=0)
        pairs = []
        for k, x in enumerate(sm):
            vb, db = bins[res][k]
            xd = np.diff(x, axis=0)
            pairs.append(PairStats(ErrorMoments.of(rm, x), PairedUnitMeans.of(rm, x), PairedDailyError.of(rm, x, period, harmonics),
                                   Counts.of(vb, rm), Counts.of(vb, x), Counts.of(db, rd), Counts.of(db, xd)))
        out[res] = LevelStats(
            real=SideStats(Extrema.of(rm), Gram.of(rm) if grams[res] else None),
            synth=[SideStats(Extrema.of(x), Gram.of(x) if grams[res] else None) for x in sm],
            pairs=pairs,
            ensemble=EnsembleErrors.of(rm, sm),
        )
    return out


@dataclass
class TrafficStatistics:
    """Merged statistics of a traffic evaluation: ``stats[(level, resolution)]`` plus the run's parameters."""

    stats: dict[tuple[str, str], LevelStats]
    levels: tuple[str, ...]
    resolutions: tuple[str, ...]
    samples: np.ndarray
    bins: dict[tuple[str, str], list[tuple[Bins, Bins]]]  # per sample: (volume, first-difference) bins
    harmonics: int | None
    n_steps: dict[str, int]


def traffic_statistics(
    real: xr.Dataset,
    synth: xr.Dataset,
    levels: Sequence[str] | None = None,
    resolutions: Sequence[str] | None = None,
    *,
    bins: int = 100,
    bin_scale: str = "linear",
    harmonics: int | None = None,
    max_gram_steps: int = 4096,
    max_block_values: int = 2**24,
    workers: int = 1,
    progress: bool = True,
    real_name: str = "real",
    synth_name: str = "synthetic",
) -> TrafficStatistics:
    """Pass over both stores block by block and return merged statistics (see module docstring).

    ``levels``: subset of schema.SPATIAL_LEVELS (None = all four); ``resolutions``: keys of
    schema.TEMPORAL_RESOLUTIONS (None = the STANDARD_RESOLUTIONS reachable from the native step).
    ``bins`` / ``bin_scale``: shared histogram bins (linear | symlog). ``harmonics``: daily harmonics of the
    periodic component (None = all). ``max_block_values`` bounds a block (time steps x units, 8 bytes each, per
    array and sample): store chunks wider than that are split, at the price of reading their Zarr chunks again.
    """
    levels = _ordered(levels, schema.SPATIAL_LEVELS, "level")
    check_compatible(real, synth, levels, real_name=real_name, synth_name=synth_name)
    native = pyramid.time_step_minutes(real)
    if not resolutions:
        # the standard ones the native step can be summed into (a 2 h store has no 1 h level)
        resolutions = [r for r in schema.STANDARD_RESOLUTIONS if schema.TEMPORAL_RESOLUTIONS[r] % native == 0]
        if not resolutions:
            raise InputDataError(f"{real_name}: native step {native} min is coarser than every standard resolution; "
                                 "pass --resolutions")
    resolutions = _ordered(resolutions, tuple(schema.TEMPORAL_RESOLUTIONS), "resolution")
    n_native = real.sizes["time"]
    check_resolutions(native, resolutions, n_native)
    if harmonics is not None:
        daily_harmonics(24, harmonics)  # validates
    n_samples = synth.sizes.get("sample", 1)
    samples = np.asarray(synth["sample"].values) if "sample" in synth.dims and "sample" in synth.coords else np.arange(n_samples)
    n_steps = {r: n_native // pyramid.temporal_factor(native, r) for r in resolutions}
    grams = {}
    for r in resolutions:
        grams[r] = n_steps[r] <= max_gram_steps
        if not grams[r]:
            log.warning("resolution %s: %d steps > max_gram_steps=%d, RV coefficients skipped (NaN); a T x T Gram "
                        "would need %.1f GB per sample", r, n_steps[r], max_gram_steps, n_steps[r] ** 2 * 8 / 1e9)
    stats: dict[tuple[str, str], LevelStats] = {}
    all_bins: dict[tuple[str, str], list[tuple[Bins, Bins]]] = {}
    for lvl in levels:
        plan = _Plan(lvl, schema.TRAFFIC_VAR[lvl], schema.LEVEL_DIMS[lvl][1:], resolutions, native, real_name, synth_name)
        blocks = unit_blocks(real[plan.var], plan.space, max(1, max_block_values // n_native))
        log.info("level %s: %d blocks x %d resolutions, %d generated sample(s)", lvl, len(blocks), len(resolutions), n_samples)
        ranges = run_blocks(blocks, lambda b: _range_block(real, synth, plan, b), workers=workers,
                            desc=f"{lvl} ranges", progress=progress)
        lvl_bins = {res: [ranges[res].pair_bins(k, bins, bin_scale) for k in range(n_samples)] for res in resolutions}
        all_bins.update({(lvl, res): b for res, b in lvl_bins.items()})
        merged = run_blocks(blocks, lambda b: _stats_block(real, synth, plan, b, lvl_bins, grams, harmonics),
                            workers=workers, desc=f"{lvl} statistics", progress=progress)
        for res in resolutions:
            stats[(lvl, res)] = merged[res]
    return TrafficStatistics(stats, levels, resolutions, samples, all_bins, harmonics, n_steps)


# ---------------------------------------------------------------- statistics -> metrics


def psnr_from_mse(mse: float, data_range: float) -> float:
    """10 log10(L^2 / MSE) in dB; +inf for a perfect match, NaN for a non-positive data range."""
    if mse == 0:
        return float("inf")
    if data_range <= 0:
        return float("nan")
    return float(10.0 * np.log10(data_range**2 / mse))


def _spread(per_sample: xr.DataArray) -> xr.DataArray:
    """Sample standard deviation (ddof=1); NaN with a single sample (no spread can be estimated)."""
    if per_sample.sizes["sample"] < 2:
        return xr.full_like(per_sample.isel(sample=0, drop=True), np.nan)
    return per_sample.std("sample", ddof=1)


def finalize_traffic(ts: TrafficStatistics, *, jsd: str | JSDConvention = "clean",
                     data_range: float | Mapping[str, float] | None = None) -> xr.Dataset:
    """Metrics from merged statistics -> Dataset with ``value`` / ``spread`` (metric, level, resolution),
    ``per_sample`` (sample, metric, level, resolution) and ``data_range`` (level, resolution)."""
    conv = jsd_convention(jsd)
    L, R, S = ts.levels, ts.resolutions, len(ts.samples)
    vals = np.full((S, len(TRAFFIC_METRICS), len(L), len(R)), np.nan)
    rng = np.full((len(L), len(R)), np.nan)
    idx = {m: i for i, m in enumerate(TRAFFIC_METRICS)}
    for li, lvl in enumerate(L):
        parent = L[li - 1] if li > 0 else None
        for ri, res in enumerate(R):
            st = ts.stats[(lvl, res)]
            if data_range is None:
                lr = st.real.extrema.hi
            elif isinstance(data_range, Mapping):
                if lvl not in data_range:
                    raise InputDataError(f"data_range: no value for level {lvl}")
                lr = float(data_range[lvl])
            else:
                lr = float(data_range)
            rng[li, ri] = lr
            pst = ts.stats[(parent, res)] if parent else None
            for s in range(S):
                pr = st.pairs[s]
                v = vals[s, :, li, ri]
                v[idx["mae"]] = pr.errors.mae
                v[idx["rmse"]] = pr.errors.rmse
                v[idx["sprmse"]] = pr.spatial.rmse
                v[idx["psnr"]] = psnr_from_mse(pr.errors.mse, lr)
                g_real, g_syn = st.real.gram, st.synth[s].gram
                if g_real is not None:
                    v[idx["rv_real_synth"]] = rv_from_grams(g_real.centred(), g_syn.centred())
                    if pst is not None:
                        v[idx["rv_coarser_real"]] = rv_from_grams(g_real.centred(), pst.real.gram.centred())
                        v[idx["rv_coarser_synth"]] = rv_from_grams(g_syn.centred(), pst.synth[s].gram.centred())
                v[idx["jsd_volume"]] = jensen_shannon(pr.volume_real.counts, pr.volume_synth.counts, conv,
                                                      what=f"jsd_volume {lvl} {res}")
                if pr.diff_real.counts.sum() and pr.diff_synth.counts.sum():  # a one-step series has no differences
                    v[idx["jsd_diff"]] = jensen_shannon(pr.diff_real.counts, pr.diff_synth.counts, conv,
                                                        what=f"jsd_diff {lvl} {res}")
                v[idx["periodic_rmse"]] = pr.periodic.rmse
    ens = np.full((len(ENSEMBLE_METRICS), len(L), len(R)), np.nan)
    for li, lvl in enumerate(L):
        for ri, res in enumerate(R):
            e = ts.stats[(lvl, res)].ensemble
            ens[:, li, ri] = (e.crps, e.mean_mae, e.mean_rmse, e.members)
    coords = {"metric": list(TRAFFIC_METRICS), "level": list(L), "resolution": list(R)}
    per = xr.DataArray(vals, dims=("sample", "metric", "level", "resolution"), coords={"sample": ts.samples, **coords})
    ds = xr.Dataset(
        {
            "value": per.mean("sample").assign_attrs(long_name="metric value, mean over generated samples"),
            "spread": _spread(per).assign_attrs(long_name="standard deviation over generated samples (ddof=1; NaN for one sample)"),
            "per_sample": per.assign_attrs(long_name="metric value of each generated sample"),
            "ensemble": xr.DataArray(ens, dims=("ensemble_metric", "level", "resolution"),
                                     coords={"ensemble_metric": list(ENSEMBLE_METRICS), "level": list(L), "resolution": list(R)},
                                     attrs={"long_name": "metrics of all generated samples together (crps: fair CRPS; "
                                                         "*_of_mean: errors of the sample mean; members: S)"}),
            "data_range": xr.DataArray(rng, dims=("level", "resolution"), coords={"level": list(L), "resolution": list(R)},
                                       attrs={"long_name": "PSNR data range L (default: max of the real data)"}),
        }
    )
    ds.attrs["conventions"] = json.dumps(conventions(conv, ts, data_range), sort_keys=True)
    ds.attrs["n_samples"] = S
    return ds


def conventions(conv: JSDConvention, ts: TrafficStatistics | None = None, data_range=None) -> dict:
    """Human- and machine-readable statement of how every number was computed (written with the metrics)."""
    out = {
        "jsd": conv.as_dict() | {"description": conv.describe()},
        "psnr": "10*log10(L^2/MSE); L = " + ("max of the real data per level and resolution" if data_range is None
                                             else f"given: {data_range}"),
        "sprmse": "RMSE over units of time-mean traffic (ZoomDiff spRMSE)",
        "rv": "column-centred RV coefficient (ZoomDiff eq. 1), rows = time steps, columns = units; "
              "rv_coarser_* against the next coarser evaluated level",
        "jsd_diff": "first-order differences along time within each unit",
        "periodic_rmse": "RMSE between daily periodic components (Fourier bins at h cycles/day, whole days only), "
                         "unit by unit",
        "spread": "sample standard deviation over generated samples (ddof=1)",
        "crps": "fair ensemble CRPS over the S generated samples, mean over values: mean_i |x_i - y| - "
                "sum_{i != j} |x_i - x_j| / (2 S (S - 1)); the MAE when S = 1 (exact for a deterministic forecast). "
                "A proper score: the true conditional distribution minimises it, so a calibrated generator can beat "
                "the best point forecast here, which no single sample can do in MAE",
        "mae_of_mean": "MAE of the mean of the S generated samples (a point forecast made from the generator)",
    }
    if ts is not None:
        out["bins"] = {f"{lvl}/{res}": [{"volume": v.as_dict(), "diff": d.as_dict()} for v, d in b]
                       for (lvl, res), b in ts.bins.items()}
        out["harmonics"] = "all" if ts.harmonics is None else ts.harmonics
        out["time_steps"] = ts.n_steps
    return out


def traffic_metrics(
    real: xr.Dataset,
    synth: xr.Dataset,
    levels: Sequence[str] | None = None,
    resolutions: Sequence[str] | None = None,
    *,
    jsd: str | JSDConvention = "clean",
    data_range: float | Mapping[str, float] | None = None,
    **kwargs,
) -> xr.Dataset:
    """Traffic metrics of ``synth`` against ``real`` -> xr.Dataset (metric, level, resolution); see the module
    docstring. ``kwargs`` go to :func:`traffic_statistics` (bins, bin_scale, harmonics, workers, progress, ...)."""
    return finalize_traffic(traffic_statistics(real, synth, levels, resolutions, **kwargs), jsd=jsd, data_range=data_range)


def metrics_to_dict(ds: xr.Dataset) -> dict:
    """Nested JSON-ready dict: ``{level: {resolution: {metric: {"mean", "spread", "per_sample"}}}}`` + data ranges."""

    def _f(x):
        x = float(x)
        return None if np.isnan(x) else (x if np.isfinite(x) else ("inf" if x > 0 else "-inf"))

    out: dict = {}
    for lvl in ds["level"].values.tolist():
        out[lvl] = {}
        for res in ds["resolution"].values.tolist():
            cell = {}
            for m in ds["metric"].values.tolist():
                sel = dict(metric=m, level=lvl, resolution=res)
                cell[m] = {
                    "mean": _f(ds["value"].sel(sel)),
                    "spread": _f(ds["spread"].sel(sel)),
                    "per_sample": [_f(v) for v in ds["per_sample"].sel(sel).values],
                }
            cell["data_range"] = _f(ds["data_range"].sel(level=lvl, resolution=res))
            if "ensemble" in ds:
                cell["ensemble"] = {m: _f(ds["ensemble"].sel(ensemble_metric=m, level=lvl, resolution=res))
                                    for m in ds["ensemble_metric"].values.tolist()}
            out[lvl][res] = cell
    return out
