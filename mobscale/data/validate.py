"""Validate a city store against the schema (mobscale/data/schema.py), lazily and chunk by chunk.

``validate_store(path)`` raises :class:`StoreError` whose message lists every problem found, each naming
the variable and the place (index, coordinate) where it occurs. Checks read data one time chunk at a time,
so a paper-scale store validates in bounded memory.

Which levels a store holds: all four traffic levels (a grid store), only ``traffic_bs`` (a base-station-only
store, e.g. STK-Diff data), or none (a users-only store holding trajectories); ``attrs["levels_present"]``
may state it and must then agree with the variables.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from mobscale.data import pyramid, schema
from mobscale.data.store import has_group, open_city
from mobscale.errors import StoreError
from mobscale.log import get_logger

log = get_logger(__name__)

MAX_PROBLEMS = 20
#: consistency tolerance: |parent - sum(children)| <= ATOL_REL * max|parent| + RTOL * |parent|
RTOL = 1e-5
ATOL_REL = 1e-6


class _Problems(list):
    def add(self, msg: str) -> None:
        if len(self) < MAX_PROBLEMS:
            self.append(msg)


def _first_index(mask: np.ndarray, dims: tuple[str, ...], offset: dict | None = None) -> str:
    idx = np.argwhere(mask)[0]
    parts = []
    for d, i in zip(dims, idx):
        parts.append(f"{d}={int(i) + (offset or {}).get(d, 0)}")
    return ", ".join(parts)


def _time_chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _check_values(ds: xr.Dataset, name: str, probs: _Problems, chunk: int, allow_negative: bool = False) -> None:
    """NaN/inf and negative values, chunk by chunk along the first dim, reporting the first bad index."""
    da = ds[name]
    if da.dtype.kind not in "fiu":
        probs.add(f"{name}: dtype {da.dtype} is not numeric")
        return
    first = da.dims[0]
    for sl in _time_chunks(da.sizes[first], chunk):
        block = np.asarray(da.isel({first: sl}).values)
        bad = ~np.isfinite(block) if block.dtype.kind == "f" else np.zeros(block.shape, bool)
        if bad.any():
            where = _first_index(bad, da.dims, {first: sl.start})
            probs.add(f"{name}: {int(bad.sum())} NaN/inf value(s) in this chunk, first at {where}")
            return
        if not allow_negative:
            neg = block < 0
            if neg.any():
                where = _first_index(neg, da.dims, {first: sl.start})
                probs.add(f"{name}: negative traffic ({float(block[neg].min()):.4g}) at {where}")
                return


def _guarded(check, ds: xr.Dataset, name: str, probs: _Problems, *args) -> None:
    """Run a data check; a chunk that cannot be decoded (truncated or corrupt file) becomes a problem naming
    the variable instead of a traceback."""
    try:
        check(ds, name, probs, *args)
    except Exception as e:  # zarr/numcodecs raise many types for damaged chunks
        probs.add(f"{name}: unreadable data ({type(e).__name__}: {str(e)[:120]}); the store is truncated or corrupt")


def _check_dims(ds: xr.Dataset, name: str, dims: tuple[str, ...], probs: _Problems) -> bool:
    if name not in ds:
        probs.add(f"missing variable '{name}'")
        return False
    if tuple(ds[name].dims) != tuple(dims):
        probs.add(f"{name}: dims {tuple(ds[name].dims)} but the schema says {tuple(dims)}")
        return False
    return True


def _check_time(ds: xr.Dataset, probs: _Problems) -> None:
    if "time" not in ds.coords:
        probs.add("missing coordinate 'time'")
        return
    t = ds["time"].values
    if t.size == 0:
        probs.add("time: empty time axis")
        return
    if not np.issubdtype(t.dtype, np.datetime64):
        probs.add(f"time: dtype {t.dtype} is not datetime64")
        return
    d = np.diff(t).astype("timedelta64[s]").astype(np.int64)
    if (d == 0).any():
        i = int(np.argmax(d == 0))
        probs.add(f"time: duplicate timestamp {np.datetime_as_string(t[i + 1], unit='m')} at index {i + 1}")
    if (d < 0).any():
        i = int(np.argmax(d < 0))
        probs.add(f"time: not increasing at index {i + 1} ({np.datetime_as_string(t[i + 1], unit='m')})")
    step = ds.attrs.get("time_step_minutes")
    if step is not None and (d > 0).all():
        gaps = d != int(step) * 60
        if gaps.any():
            i = int(np.argmax(gaps))
            probs.add(
                f"time: missing timestamps after {np.datetime_as_string(t[i], unit='m')} (index {i}): step "
                f"{d[i] // 60} min but time_step_minutes={step}"
            )


def _check_categories(ds: xr.Dataset, name: str, probs: _Problems) -> None:
    da = ds[name]
    fv = da.attrs.get("flag_values")
    if fv is None:
        probs.add(f"{name}: no flag_values attribute (the category table)")
        return
    vals = np.asarray(da.values)
    unknown = ~np.isin(vals, np.asarray(fv))
    if unknown.any():
        where = _first_index(unknown, da.dims)
        probs.add(f"{name}: unknown category {int(vals[unknown][0])} at {where} (known: {list(fv)})")


def _check_hierarchy(ds: xr.Dataset, probs: _Problems) -> bool:
    ok = True
    H, W = ds.sizes.get("y", 0), ds.sizes.get("x", 0)
    if H % 2 or W % 2:
        probs.add(f"grid50: {H}x{W} pixels is not even (grid100 = 2x2 blocks)")
        ok = False
    if ds.sizes.get("y100") != H // 2 or ds.sizes.get("x100") != W // 2:
        probs.add(f"grid100: size {ds.sizes.get('y100')}x{ds.sizes.get('x100')} but grid50 is {H}x{W}")
        ok = False
    if "pixel_cell" not in ds:
        probs.add("missing variable 'pixel_cell' (grid50 -> cell map)")
        return False
    pc = np.asarray(ds["pixel_cell"].values)
    C = ds.sizes.get("cell", 0)
    bad = (pc < 0) | (pc >= C)
    if bad.any():
        where = _first_index(bad, ("y", "x"))
        probs.add(f"pixel_cell: {int(bad.sum())} pixel(s) in no cell, first at {where} (value {int(pc[bad][0])}, cells 0..{C - 1})")
        ok = False
    else:
        counts = np.bincount(pc.ravel(), minlength=C)
        if (counts == 0).any():
            probs.add(f"cell: {int((counts == 0).sum())} cell(s) cover no pixel, first cell={int(np.argmax(counts == 0))}")
            ok = False
    if "cell_bs" not in ds.coords and "cell_bs" not in ds:
        probs.add("missing coordinate 'cell_bs' (cell -> bs map)")
        return False
    cb = np.asarray(ds["cell_bs"].values)
    B = ds.sizes.get("bs", 0)
    badc = (cb < 0) | (cb >= B)
    if badc.any():
        probs.add(f"cell_bs: {int(badc.sum())} cell(s) in no BS, first cell={int(np.argmax(badc))} (value {int(cb[badc][0])}, BS 0..{B - 1})")
        ok = False
    else:
        bcounts = np.bincount(cb, minlength=B)
        if (bcounts == 0).any():
            probs.add(f"bs: {int((bcounts == 0).sum())} BS with no cell, first bs={int(np.argmax(bcounts == 0))}")
            ok = False
    return ok


def _check_consistency(ds: xr.Dataset, probs: _Problems, chunk: int) -> None:
    """Every coarser level == sum of its children, per time chunk."""
    pc = np.asarray(ds["pixel_cell"].values)
    cb = np.asarray(ds["cell_bs"].values)
    C, B = ds.sizes["cell"], ds.sizes["bs"]
    scale = {}
    for lvl in ("grid100", "cell", "bs"):
        scale[lvl] = float(abs(ds[schema.TRAFFIC_VAR[lvl]]).max().compute())
    worst = {k: (0.0, None) for k in scale}
    T = ds.sizes["time"]
    for sl in _time_chunks(T, chunk):
        g50 = np.asarray(ds[schema.TRAFFIC_VAR["grid50"]].isel(time=sl).values, dtype=np.float64)
        derived = {
            "grid100": pyramid.block_sum(g50),
            "cell": pyramid.units_sum(g50, pc, C),
        }
        cell_stored = np.asarray(ds[schema.TRAFFIC_VAR["cell"]].isel(time=sl).values, dtype=np.float64)
        derived["bs"] = pyramid.units_sum(cell_stored, cb, B)
        for lvl, der in derived.items():
            stored = np.asarray(ds[schema.TRAFFIC_VAR[lvl]].isel(time=sl).values, dtype=np.float64)
            err = np.abs(stored - der)
            tol = ATOL_REL * scale[lvl] + RTOL * np.abs(stored)
            excess = err - tol
            if (excess > 0).any() and excess.max() > worst[lvl][0]:
                i = np.unravel_index(int(np.argmax(excess)), excess.shape)
                dims = schema.LEVEL_DIMS[lvl]
                where = ", ".join(f"{d}={int(j) + (sl.start if d == 'time' else 0)}" for d, j in zip(dims, i))
                worst[lvl] = (float(excess.max()), f"{schema.TRAFFIC_VAR[lvl]}: differs from the sum of its children at {where} (stored {stored[i]:.6g}, sum {der[i]:.6g})")
    for lvl, (_, msg) in worst.items():
        if msg:
            probs.add(msg)


def _check_users(path: Path, root: xr.Dataset, probs: _Problems, chunk: int) -> None:
    u = open_city(path, group=schema.USERS_GROUP)
    if "user" not in u.dims:
        probs.add("users: no 'user' dimension")
        return
    if "time" in u.coords:
        t = u["time"].values
        d = np.diff(t).astype("timedelta64[m]").astype(np.int64)
        if (d != schema.USER_STEP_MINUTES).any():
            i = int(np.argmax(d != schema.USER_STEP_MINUTES))
            probs.add(f"users/time: step {d[i]} min at index {i + 1}; users are stored at {schema.USER_STEP_MINUTES} min")
    else:
        probs.add("users: missing coordinate 'time'")
    if "traffic" in u:
        if _check_dims(u, "traffic", ("user", "time"), probs):
            _check_values(u, "traffic", probs, chunk)
    if "trajectory" in u:
        if _check_dims(u, "trajectory", ("user", "time"), probs):
            tr = np.asarray(u["trajectory"].values)
            B = root.sizes.get("bs", 0)
            bad = (tr < 0) | (tr >= B)
            if bad.any():
                where = _first_index(bad, ("user", "time"))
                probs.add(f"users/trajectory: BS index {int(tr[bad][0])} outside 0..{B - 1} at {where}")
    if "traffic" not in u and "trajectory" not in u:
        probs.add("users: neither 'traffic' nor 'trajectory'")
    if "kg_relation" in u:
        rel = [str(r) for r in np.asarray(u["kg_relation"].values).tolist()]
        unknown = sorted(set(rel) - set(schema.KG_RELATIONS))
        if unknown:
            probs.add(f"users/kg_relation: unknown relation(s) {unknown} (known: {list(schema.KG_RELATIONS)})")
        for v in ("kg_head", "kg_tail"):
            if v not in u:
                probs.add(f"users: kg_relation present but '{v}' missing")


def levels_present(ds: xr.Dataset) -> tuple[str, ...]:
    return tuple(lvl for lvl in schema.SPATIAL_LEVELS if schema.TRAFFIC_VAR[lvl] in ds)


def validate_dataset(ds: xr.Dataset, path: Path | str = "<dataset>", chunk: int | None = None) -> list[str]:
    """All schema problems of an opened root dataset (empty list = valid)."""
    probs = _Problems()
    for a in schema.REQUIRED_ATTRS:
        if a not in ds.attrs:
            probs.add(f"missing attribute '{a}'")
    step = ds.attrs.get("time_step_minutes")
    chunk = chunk or max(1, int(ds.chunks.get("time", (24,))[0]) if ds.chunks and "time" in ds.chunks else 24)
    present = levels_present(ds)
    declared = ds.attrs.get("levels_present")
    if declared is not None:
        decl = tuple(json.loads(declared)) if isinstance(declared, str) else tuple(declared)
        if set(decl) != set(present):
            probs.add(f"attrs levels_present={list(decl)} but the store holds {list(present)}")
    if present not in (tuple(schema.SPATIAL_LEVELS), ("bs",), ()):
        probs.add(f"traffic levels {list(present)}: a store holds all of {list(schema.SPATIAL_LEVELS)}, only 'bs', or none")
        return list(probs)
    if present:
        _check_time(ds, probs)
        if step is not None and step not in schema.TEMPORAL_RESOLUTIONS.values():
            probs.add(f"time_step_minutes={step} is not one of {sorted(set(schema.TEMPORAL_RESOLUTIONS.values()))}")
    # coordinates
    need = ["bs", "bs_x", "bs_y", "bs_lat", "bs_lon"] if "bs" in ds.dims or present else []
    if present == ("bs",) and ds.attrs.get("georeferenced") is False:
        need = ["bs"]  # BS-only store whose source has no coordinates (e.g. STK-Diff)
    if present == tuple(schema.SPATIAL_LEVELS):
        need = list(schema.REQUIRED_COORDS)
    for c in need:
        if c not in ds.coords and c not in ds:
            probs.add(f"missing coordinate '{c}'")
    for c in ("bs_lat", "bs_lon", "bs_x", "bs_y", "cell_lat", "cell_lon", "lat", "lon"):
        if c in ds.coords:
            v = np.asarray(ds[c].values, dtype=np.float64)
            if not np.isfinite(v).all():
                probs.add(f"{c}: non-finite coordinate at index {int(np.argmax(~np.isfinite(v)))}")
    for lvl in present:
        if _check_dims(ds, schema.TRAFFIC_VAR[lvl], schema.LEVEL_DIMS[lvl], probs):
            _guarded(_check_values, ds, schema.TRAFFIC_VAR[lvl], probs, chunk)
    if present == tuple(schema.SPATIAL_LEVELS):
        for c in ("y", "x"):
            if c in ds.coords and not (np.diff(ds[c].values) > 0).all():
                probs.add(f"{c}: coordinate not strictly increasing")
        hier_ok = _check_hierarchy(ds, probs)
        value_ok = not any(("NaN" in p or "negative" in p or "dims" in p or "unreadable" in p) for p in probs)
        if hier_ok and value_ok:
            _check_consistency(ds, probs, chunk)
    # context (optional, but validated when present)
    for name in ("aoi", "house_road"):
        if name in ds and _check_dims(ds, name, ("y", "x"), probs):
            _check_categories(ds, name, probs)
    if "poi" in ds and _check_dims(ds, "poi", ("poi_category", "y", "x"), probs):
        if "poi_category" not in ds.coords:
            probs.add("poi: missing coordinate 'poi_category' (category names)")
        _guarded(_check_values, ds, "poi", probs, max(1, ds.sizes["poi_category"]))
    if "population" in ds:
        pdims = tuple(ds["population"].dims)
        if pdims not in (("hour_of_week", "y", "x"), ("time", "y", "x")):
            probs.add(f"population: dims {pdims}; expected (hour_of_week, y, x) or (time, y, x)")
        else:
            _guarded(_check_values, ds, "population", probs, chunk)
    return list(probs)


def validate_store(path: str | Path, display_path: str | Path | None = None) -> dict:
    """Validate the store at ``path``; raise StoreError listing the problems. Returns a small summary dict."""
    path = Path(path)
    shown = Path(display_path) if display_path else path
    ds = open_city(path)
    if "sample" in ds.dims:  # generated stores with several realisations: each must be a valid city
        probs = []
        for s in range(ds.sizes["sample"]):
            probs += [f"sample={s}: {p}" for p in validate_dataset(ds.isel(sample=s), shown)]
            if probs:
                break
    else:
        probs = validate_dataset(ds, shown)
    if has_group(path, schema.USERS_GROUP) and not [p for p in probs if p.startswith("missing coordinate 'bs")]:
        users_probs = _Problems()
        _check_users(path, ds, users_probs, chunk=512)
        probs.extend(users_probs)
    if probs:
        more = "" if len(probs) < MAX_PROBLEMS else " (further problems not listed)"
        raise StoreError(f"{shown}: invalid city store: " + "; ".join(probs) + more)
    return {"path": str(shown), "levels": list(levels_present(ds)), "users": has_group(path, schema.USERS_GROUP)}
