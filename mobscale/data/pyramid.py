"""The spatial hierarchy (grid50 -> grid100, grid50 -> cell -> bs), the temporal pyramid and the density
projection. Everything works on numpy or lazily on Dask-backed xarray objects (chunked along time only for
the unit levels, since a cell's pixels can lie anywhere in the city).

Sums are accumulated in float64 and stored as float32, so a coarser level equals the sum of its children to
float32 rounding (relative 1e-6).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from mobscale.data import schema
from mobscale.errors import StoreError

# ---------------------------------------------------------------- numpy kernels


def block_sum(a: np.ndarray, f: int = 2) -> np.ndarray:
    """Sum non-overlapping f x f blocks over the last two axes: (..., H, W) -> (..., H/f, W/f)."""
    *lead, h, w = a.shape
    if h % f or w % f:
        raise ValueError(f"grid {h}x{w} is not divisible into {f}x{f} blocks")
    r = a.reshape(*lead, h // f, f, w // f, f)
    return r.sum(axis=(-3, -1), dtype=np.float64).astype(a.dtype, copy=False)


def units_sum(values: np.ndarray, unit_of: np.ndarray, n_units: int) -> np.ndarray:
    """Sum the last axes of ``values`` (..., *S) into units: unit_of (*S) int in [0, n_units) -> (..., n_units).

    Implemented with one ``np.bincount`` over (leading index, unit) pairs, accumulated in float64.
    """
    s_shape = unit_of.shape
    lead = values.shape[: values.ndim - unit_of.ndim]
    if values.shape[values.ndim - unit_of.ndim :] != s_shape:
        raise ValueError(f"values trailing shape {values.shape} does not match unit map {s_shape}")
    flat = values.reshape(-1, int(np.prod(s_shape)))
    u = unit_of.reshape(-1).astype(np.int64)
    if u.size and (u.min() < 0 or u.max() >= n_units):
        raise ValueError("unit map holds ids outside [0, n_units)")
    m = flat.shape[0]
    idx = (np.arange(m, dtype=np.int64)[:, None] * n_units + u[None, :]).ravel()
    out = np.bincount(idx, weights=flat.ravel().astype(np.float64), minlength=m * n_units)
    return out.reshape(*lead, n_units).astype(values.dtype if values.dtype.kind == "f" else np.float64, copy=False)


def unit_counts(unit_of: np.ndarray, n_units: int) -> np.ndarray:
    """Number of children (pixels, cells) per unit."""
    return np.bincount(unit_of.reshape(-1).astype(np.int64), minlength=n_units)


# ---------------------------------------------------------------- hierarchy on xarray


def pixel_bs(pixel_cell: np.ndarray, cell_bs: np.ndarray) -> np.ndarray:
    """grid50 -> bs map through the cell map."""
    return np.asarray(cell_bs)[np.asarray(pixel_cell)]


def _apply_over_space(da: xr.DataArray, func, in_dims: list[str], out_dim: str, out_size: int, name: str) -> xr.DataArray:
    """Apply a (time, *space) -> (time, unit) numpy kernel lazily, chunked along the leading dims only."""
    if da.chunks is not None:
        da = da.chunk({d: -1 for d in in_dims})
    return xr.apply_ufunc(
        func,
        da,
        input_core_dims=[in_dims],
        output_core_dims=[[out_dim]],
        dask="parallelized",
        output_dtypes=[np.float32],
        dask_gufunc_kwargs={"output_sizes": {out_dim: out_size}},
    ).rename(name)


def grid100_from_grid50(g50: xr.DataArray) -> xr.DataArray:
    """Sum 2x2 blocks: (…, y, x) -> (…, y100, x100)."""
    out = g50.coarsen(y=2, x=2).sum().astype(np.float32)
    out = out.rename({"y": "y100", "x": "x100"})
    return out.rename(schema.TRAFFIC_VAR["grid100"])


def cell_from_grid50(g50: xr.DataArray, pixel_cell: np.ndarray, n_cells: int) -> xr.DataArray:
    pc = np.asarray(pixel_cell)
    return _apply_over_space(
        g50, lambda a: units_sum(a.astype(np.float32), pc, n_cells).astype(np.float32), ["y", "x"], "cell", n_cells,
        schema.TRAFFIC_VAR["cell"],
    )


def bs_from_cell(cell: xr.DataArray, cell_bs: np.ndarray, n_bs: int) -> xr.DataArray:
    cb = np.asarray(cell_bs)
    return _apply_over_space(
        cell, lambda a: units_sum(a.astype(np.float32), cb, n_bs).astype(np.float32), ["cell"], "bs", n_bs,
        schema.TRAFFIC_VAR["bs"],
    )


def all_levels(g50: xr.DataArray, pixel_cell: np.ndarray, cell_bs: np.ndarray, n_cells: int, n_bs: int) -> dict[str, xr.DataArray]:
    """Every spatial level from grid50 traffic (lazy if g50 is Dask-backed)."""
    g50 = g50.rename(schema.TRAFFIC_VAR["grid50"])
    cell = cell_from_grid50(g50, pixel_cell, n_cells)
    return {
        "grid50": g50,
        "grid100": grid100_from_grid50(g50),
        "cell": cell,
        "bs": bs_from_cell(cell, cell_bs, n_bs),
    }


# ---------------------------------------------------------------- temporal pyramid


def time_step_minutes(ds: xr.Dataset) -> int:
    try:
        return int(ds.attrs["time_step_minutes"])
    except KeyError:
        raise StoreError("store has no 'time_step_minutes' attribute") from None


def temporal_factor(native_minutes: int, resolution: str) -> int:
    if resolution not in schema.TEMPORAL_RESOLUTIONS:
        raise ValueError(f"unknown temporal resolution '{resolution}' (choose from {', '.join(schema.TEMPORAL_RESOLUTIONS)})")
    target = schema.TEMPORAL_RESOLUTIONS[resolution]
    if target % native_minutes:
        raise ValueError(f"resolution {resolution} is not a multiple of the native step ({native_minutes} min)")
    return target // native_minutes


def temporal(da: xr.DataArray, resolution: str, native_minutes: int) -> xr.DataArray:
    """Sum native steps into ``resolution`` blocks aligned to the first timestamp (trailing partial block dropped).

    The result's ``time`` coordinate is the start of each block. Lazy for Dask-backed input.
    """
    f = temporal_factor(native_minutes, resolution)
    if f == 1:
        return da
    n = (da.sizes["time"] // f) * f
    if n == 0:
        raise ValueError(f"series of {da.sizes['time']} steps is shorter than one {resolution} block")
    trimmed = da.isel(time=slice(0, n))
    out = trimmed.astype(np.float64).coarsen(time=f).sum().astype(np.float32)  # accumulate in float64
    out = out.assign_coords(time=trimmed["time"].values[::f])
    out.attrs = dict(da.attrs)
    out.attrs["time_resolution"] = resolution
    return out


def at_time_step(ds: xr.Dataset, minutes: int) -> xr.Dataset:
    """The city with its traffic levels summed into blocks of ``minutes`` (a multiple of its native step; trailing
    partial block dropped), as a store at that native step: how a 15-min real store is compared with a generator
    that writes 1 h. Other time-varying variables are dropped (they have no single right aggregate). Lazy."""
    native = time_step_minutes(ds)
    if minutes == native:
        return ds
    res = [r for r, m in schema.TEMPORAL_RESOLUTIONS.items() if m == minutes]
    if not res or minutes % native:
        raise StoreError(f"cannot sum a {native}-min store into {minutes}-min steps: the target must be a multiple of "
                         f"the native step and one of {', '.join(f'{m} min' for m in schema.TEMPORAL_RESOLUTIONS.values())}")
    traffic = [v for v in schema.TRAFFIC_VAR.values() if v in ds.data_vars]
    summed = {v: temporal(ds[v], res[0], native) for v in traffic}
    # every variable and coordinate on the old time axis goes; the summed traffic brings the new axis
    out = ds.drop_vars([v for v in ds.variables if "time" in ds[v].dims])
    for v, da in summed.items():
        out[v] = da
    out.attrs = dict(ds.attrs, time_step_minutes=minutes)
    return out


def level(ds: xr.Dataset, lvl: str, resolution: str | None = None) -> xr.DataArray:
    """Traffic of spatial level ``lvl`` at temporal ``resolution`` (native if None), lazily."""
    if lvl not in schema.TRAFFIC_VAR:
        raise ValueError(f"unknown level '{lvl}' (choose from {', '.join(schema.SPATIAL_LEVELS)})")
    da = ds[schema.TRAFFIC_VAR[lvl]]
    if resolution is None:
        return da
    return temporal(da, resolution, time_step_minutes(ds))


# ---------------------------------------------------------------- density projection onto grid50


def unit_map(ds: xr.Dataset, lvl: str) -> tuple[np.ndarray, int]:
    """(H, W) map pixel -> unit index at ``lvl``, and the number of units."""
    H, W = ds.sizes["y"], ds.sizes["x"]
    if lvl == "grid50":
        return np.arange(H * W).reshape(H, W), H * W
    if lvl == "grid100":
        yy, xx = np.meshgrid(np.arange(H) // 2, np.arange(W) // 2, indexing="ij")
        return yy * (W // 2) + xx, (H // 2) * (W // 2)
    pc = np.asarray(ds["pixel_cell"].values)
    if lvl == "cell":
        return pc, ds.sizes["cell"]
    if lvl == "bs":
        return pixel_bs(pc, ds["cell_bs"].values), ds.sizes["bs"]
    raise ValueError(f"unknown level '{lvl}'")


def density(ds: xr.Dataset, lvl: str, resolution: str | None = None) -> xr.DataArray:
    """Project level ``lvl`` at ``resolution`` onto the 50 m grid at the native time step, as a density.

    density[t, y, x] = value(unit(y, x), block(t)) / (pixels in unit * native steps in block); piecewise
    constant over each unit and time block, and summing it over a unit's pixels and a block's steps gives
    back the unit's value. ZoomDiff's intermediate stages live in this form. Returns (time, y, x) over the
    trimmed time axis (whole blocks only).
    """
    native = time_step_minutes(ds)
    f = 1 if resolution is None else temporal_factor(native, resolution)
    umap, n_units = unit_map(ds, lvl)
    counts = unit_counts(umap, n_units).astype(np.float64)
    src = level(ds, lvl, resolution)
    if lvl == "grid50":
        vals = src
    elif lvl == "grid100":
        vals = src.rename({"y100": "_uy", "x100": "_ux"})
        vals = vals.isel(_uy=xr.DataArray(np.arange(ds.sizes["y"]) // 2, dims="y"),
                         _ux=xr.DataArray(np.arange(ds.sizes["x"]) // 2, dims="x"))
        vals = vals / 4.0
    else:
        per = (src / xr.DataArray(counts.astype(np.float32), dims=[lvl]))
        vals = per.isel({lvl: xr.DataArray(umap, dims=("y", "x"))})
    if f > 1:
        vals = vals / float(f)
        n = vals.sizes["time"] * f
        native_time = ds["time"].values[:n]
        vals = vals.isel(time=xr.DataArray(np.arange(n) // f, dims="time")).assign_coords(time=native_time)
    vals = vals.drop_vars([c for c in vals.coords if c not in ("time", "y", "x")], errors="ignore")
    vals = vals.assign_coords(y=ds["y"], x=ds["x"]).transpose("time", "y", "x").astype(np.float32)
    vals.attrs = dict(schema.DENSITY_ATTRS, level=lvl, time_resolution=resolution or f"{native}min")
    return vals.rename(f"density_{lvl}_{resolution or 'native'}")


def consistency_errors(ds: xr.Dataset) -> dict[str, float]:
    """Max relative error of each coarser level against the sum of its children (computed lazily, in time
    chunks). Relative to the max absolute value of the parent level (0 when exactly consistent)."""
    pc = np.asarray(ds["pixel_cell"].values)
    cb = np.asarray(ds["cell_bs"].values)
    g50 = ds[schema.TRAFFIC_VAR["grid50"]]
    checks = {
        "grid100": (ds[schema.TRAFFIC_VAR["grid100"]], grid100_from_grid50(g50)),
        "cell": (ds[schema.TRAFFIC_VAR["cell"]], cell_from_grid50(g50, pc, ds.sizes["cell"])),
        "bs": (ds[schema.TRAFFIC_VAR["bs"]], bs_from_cell(ds[schema.TRAFFIC_VAR["cell"]], cb, ds.sizes["bs"])),
    }
    out = {}
    for name, (stored, derived) in checks.items():
        diff = float(abs(stored.astype(np.float64) - derived.astype(np.float64)).max().compute())
        scale = float(abs(stored).max().compute())
        out[name] = diff / scale if scale > 0 else diff
    return out


def region_subset(ds: xr.Dataset, y: slice, x: slice) -> xr.Dataset:
    """The part of a city inside pixel rows ``y`` and columns ``x`` (even bounds): grid levels are sliced;
    cells and BS are kept when *all* their pixels lie inside the region (so every kept unit is complete and
    still equals the sum of its children there). Used to evaluate a held-out district."""
    if any(v % 2 for v in (y.start or 0, y.stop or ds.sizes["y"], x.start or 0, x.stop or ds.sizes["x"])):
        raise ValueError("region bounds must be even (grid100 = 2x2 blocks)")
    pc = np.asarray(ds["pixel_cell"].values)
    inside = np.zeros(pc.shape, bool)
    inside[y, x] = True
    C = ds.sizes["cell"]
    cells_all = np.bincount(pc.ravel(), minlength=C)
    cells_in = np.bincount(pc[inside], minlength=C)
    keep_cell = np.nonzero((cells_in == cells_all) & (cells_all > 0))[0]
    cb = np.asarray(ds["cell_bs"].values)
    B = ds.sizes["bs"]
    full_cells = np.zeros(C, bool)
    full_cells[keep_cell] = True
    bs_cells_all = np.bincount(cb, minlength=B)
    bs_cells_in = np.bincount(cb[full_cells], minlength=B)
    keep_bs = np.nonzero((bs_cells_in == bs_cells_all) & (bs_cells_all > 0))[0]
    y100 = slice((y.start or 0) // 2, (y.stop or ds.sizes["y"]) // 2)
    x100 = slice((x.start or 0) // 2, (x.stop or ds.sizes["x"]) // 2)
    out = ds.isel(y=y, x=x, y100=y100, x100=x100, cell=keep_cell, bs=keep_bs)
    out.attrs = dict(ds.attrs, region=f"y={y.start}:{y.stop}, x={x.start}:{x.stop}")
    return out
