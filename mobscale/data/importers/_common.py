"""Machinery shared by the importers: provenance, time axes, value checks, the block hierarchy of a regular
grid, and assembly of a grid city store.

Conventions every importer follows (see the package docstring for the per-format layouts):

* grid rows are stored south -> north (``y`` increasing), columns west -> east, pixel centres in metres from
  the SW corner of the grid (``lat0``/``lon0``), as in :mod:`mobscale.data.schema`;
* timestamps are naive local wall-clock ``datetime64[ns]``; sources without dates get a *nominal* axis that
  starts on Monday 2001-01-01 00:00 (``attrs["time_origin"] = "nominal"``) unless ``--start`` is given;
* every coarser level comes from :func:`mobscale.data.pyramid.all_levels`, so it sums exactly;
* padding pixels (added to make a grid even, or squares absent from the source) hold zeros and are 0 in the
  ``observed`` mask variable (CF flags), so they are never mistaken for measured zero traffic.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm import tqdm

from mobscale.data import pyramid, schema
from mobscale.data.store import store_attrs_json
from mobscale.errors import ConfigError, InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)

#: time origin of sources that carry no dates (a Monday, so day-of-week 0 = Monday lines up)
NOMINAL_START = np.datetime64("2001-01-01T00:00", "ns")

OBSERVED_ATTRS = {
    "long_name": "pixel holds source data (1) or is padding / a square absent from the source (0, traffic 0)",
    "flag_values": [0, 1],
    "flag_meanings": "padding_or_missing observed",
    "units": "1",
}

#: the provenance tables of the shared data folder (searched upwards from each source file)
MANIFEST_NAMES = ("MANIFEST.md", "PROVENANCE.md")


@dataclass
class Built:
    """What an importer hands back to :func:`mobscale.data.importers.run_import`.

    ``ds`` is the root dataset (attrs except ``provenance``/``config``/``kind`` filled in), ``users`` the
    optional users group, ``files`` every source file actually read (hashed into the provenance), ``chunks``
    per-dimension Zarr chunk sizes overriding the store defaults.
    """

    ds: xr.Dataset
    files: list[Path]
    users: xr.Dataset | None = None
    chunks: dict = field(default_factory=dict)


# ---------------------------------------------------------------- sources and provenance


def sha256_file(path: Path, bar: tqdm | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return h.hexdigest()


def _expand_braces(text: str) -> list[str]:
    """``a/{b,c}.d`` -> ``[a/b.d, a/c.d]`` (one level of braces, possibly several groups)."""
    m = re.search(r"\{([^{}]*)\}", text)
    if not m:
        return [text]
    out = []
    for alt in m.group(1).split(","):
        out.extend(_expand_braces(text[: m.start()] + alt.strip() + text[m.end():]))
    return out


def manifest_row(path: Path) -> str | None:
    """The row of a MANIFEST.md / PROVENANCE.md table (in a folder above ``path``) that describes ``path``.

    The first cell of each row names files relative to the table's folder, possibly with ``{a,b}``
    alternatives, ``*`` wildcards or a trailing note in parentheses. An exact/wildcard match wins; otherwise a
    row naming a file in the same folder (e.g. ``x/MobileBJ.npy (+_ts)`` for ``x/MobileBJ_ts.npy``).
    """
    path = path.resolve()
    for parent in list(path.parents)[:4]:
        for name in MANIFEST_NAMES:
            table = parent / name
            if not table.is_file():
                continue
            rel = path.relative_to(parent).as_posix()
            same_dir = None
            for line in table.read_text(errors="replace").splitlines():
                if not line.startswith("|") or line.startswith("|---"):
                    continue
                first = line.strip("|").split("|")[0].replace("`", "").strip()
                first = re.sub(r"\s*\(.*\)\s*$", "", first)
                # a row's first cell may list several names: "a (+_ts)", "x/{a,b}", "dir/*"
                candidates = [c.strip() for part in first.split(" + ") for c in _expand_braces(part)]
                if any(rel == c or fnmatch.fnmatchcase(rel, c) for c in candidates):
                    return f"{table.name}: {line.strip()}"
                if same_dir is None and any(Path(c).parent.as_posix() == Path(rel).parent.as_posix() != "." for c in candidates):
                    same_dir = f"{table.name}: {line.strip()}"
            if same_dir:
                return same_dir
    return None


def provenance(files: list[Path]) -> str:
    """JSON list of {file, path, bytes, sha256, manifest} for every source file (manifest row or null)."""
    files = [Path(f) for f in files]
    total = sum(f.stat().st_size for f in files)
    out = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="sha256", disable=total < (256 << 20), leave=False) as bar:
        for f in files:
            out.append({
                "file": f.name,
                "path": str(f.resolve()),
                "bytes": f.stat().st_size,
                "sha256": sha256_file(f, bar),
                "manifest": manifest_row(f),
            })
    return store_attrs_json(out)


def need_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such file ({what})")
    if not path.is_file():
        raise InputDataError(f"{path}: is not a file ({what})")
    if path.stat().st_size == 0:
        raise InputDataError(f"{path}: empty file ({what})")
    return path


# ---------------------------------------------------------------- time


def check_step(step_minutes: int, where: str) -> int:
    """A native step the store schema allows (it must tile the standard resolutions)."""
    allowed = sorted(set(schema.TEMPORAL_RESOLUTIONS.values()))
    if int(step_minutes) not in allowed:
        raise ConfigError(f"{where}: time step {step_minutes} min is not one the store supports ({allowed})")
    return int(step_minutes)


def parse_start(start: str | None, default: np.datetime64 | None, where: str) -> tuple[np.datetime64, bool]:
    """``--start`` (ISO; a UTC offset, if any, is dropped keeping the wall clock) or ``default``.

    Returns (start as datetime64[ns], nominal) where nominal is True when the default was used.
    """
    if start is None:
        if default is None:
            raise ConfigError(f"{where}: the source has no dates; pass --start (ISO timestamp of the first step)")
        return np.datetime64(default, "ns"), True
    try:
        ts = pd.Timestamp(start)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--start '{start}': not an ISO timestamp ({e})") from None
    if ts.tzinfo is not None:
        ts = ts.tz_localize(None)
    return np.datetime64(ts.to_datetime64(), "ns"), False


def time_axis(start: np.datetime64, step_minutes: int, n: int) -> np.ndarray:
    """(n,) datetime64[ns]: start + k * step."""
    return (np.datetime64(start, "ns") + np.arange(n) * np.timedelta64(int(step_minutes), "m")).astype("datetime64[ns]")


def nominal_start_for(day_of_week: int, slot: int, step_minutes: int) -> np.datetime64:
    """Nominal timestamp of (day-of-week with 0 = Monday, slot of day) in the week of :data:`NOMINAL_START`."""
    return NOMINAL_START + np.timedelta64(int(day_of_week) * 1440 + int(slot) * int(step_minutes), "m")


def time_attrs(nominal: bool, note: str = "") -> dict:
    base = "nominal (the source has no dates): Monday 2001-01-01 00:00 + steps" if nominal else "from the source"
    return {"time_origin": "nominal" if nominal else "source", "time_note": (base + (f"; {note}" if note else ""))}


# ---------------------------------------------------------------- value checks


def _where(index: tuple[int, ...], dims: tuple[str, ...]) -> str:
    return ", ".join(f"{d}={int(i)}" for d, i in zip(dims, index))


def check_values(a: np.ndarray, where: str, dims: tuple[str, ...], *, allow_negative: bool = False, hint: str = "") -> None:
    """Raise InputDataError naming ``where`` and the first index of a NaN/inf (or negative) value in ``a``."""
    bad = ~np.isfinite(a)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise InputDataError(f"{where}: {int(bad.sum())} NaN/inf value(s), first at {_where(i, dims)} ({a[i]})")
    if not allow_negative:
        neg = a < 0
        if neg.any():
            i = tuple(np.argwhere(neg)[0])
            raise InputDataError(
                f"{where}: {int(neg.sum())} negative value(s) (min {float(a.min()):.4g}), first at {_where(i, dims)} "
                f"({float(a[i]):.4g}); traffic cannot be negative{hint}"
            )


def numeric_columns(df: pd.DataFrame, path: Path, first_line: int = 1) -> np.ndarray:
    """(rows, columns) float64 of a parsed text table; a non-empty field that is not a number or is infinite
    raises InputDataError naming its line (row i is line ``first_line + i``) and column. Empty fields -> NaN."""
    out = np.empty(df.shape, dtype=np.float64)
    for j, name in enumerate(df.columns):
        col = df[name]
        if col.dtype.kind not in "fiu":
            num = pd.to_numeric(col, errors="coerce")
            bad = num.isna().to_numpy() & col.notna().to_numpy()
            if bad.any():
                i = int(np.argmax(bad))
                raise InputDataError(f"{path}: line {first_line + i}: column '{name}' is not a number ({col.iloc[i]!r})")
            col = num
        v = col.to_numpy(dtype=np.float64)
        inf = np.isinf(v)
        if inf.any():
            i = int(np.argmax(inf))
            raise InputDataError(f"{path}: line {first_line + i}: column '{name}' is infinite")
        out[:, j] = v
    return out


# ---------------------------------------------------------------- grid hierarchy


@dataclass(frozen=True)
class Hierarchy:
    """grid50 -> cell -> bs maps of a regular block hierarchy.

    pixel_cell: (H, W) int32 cell of each pixel; cell_bs: (C,) int32; cell_sector: (C,) int8 position of the
    cell inside its BS block (row-major, 0..r*r-1).
    """

    pixel_cell: np.ndarray
    cell_bs: np.ndarray
    cell_sector: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.cell_bs.size)

    @property
    def n_bs(self) -> int:
        return int(self.cell_bs.max()) + 1 if self.cell_bs.size else 0


def block_hierarchy(H: int, W: int, cell_px: int = 2, bs_px: int = 4) -> Hierarchy:
    """Pseudo cells = ``cell_px`` x ``cell_px`` pixel blocks and pseudo BS = ``bs_px`` x ``bs_px`` blocks,
    numbered row-major from the SW corner. H and W must be multiples of ``cell_px``; BS blocks at the north and
    east edges are partial when H or W is not a multiple of ``bs_px``.
    """
    if H % cell_px or W % cell_px:
        raise ValueError(f"grid {H}x{W} is not a whole number of {cell_px}x{cell_px} cells")
    if bs_px % cell_px:
        raise ValueError(f"BS block {bs_px} is not a multiple of the cell block {cell_px}")
    r = bs_px // cell_px
    ch, cw = H // cell_px, W // cell_px
    iy, ix = np.meshgrid(np.arange(H) // cell_px, np.arange(W) // cell_px, indexing="ij")
    pixel_cell = (iy * cw + ix).astype(np.int32)
    cy, cx = np.meshgrid(np.arange(ch), np.arange(cw), indexing="ij")
    bw = -(-cw // r)
    cell_bs = ((cy // r) * bw + cx // r).ravel().astype(np.int32)
    cell_sector = ((cy % r) * r + (cx % r)).ravel().astype(np.int8)
    return Hierarchy(pixel_cell, cell_bs, cell_sector)


def pad_to_even(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad (T, H, W) at the north (last row) and east (last column) to even H and W.

    Returns (padded (T, H', W'), observed (H', W') int8 with 1 on source pixels).
    """
    T, H, W = a.shape
    H2, W2 = H + H % 2, W + W % 2
    out = np.zeros((T, H2, W2), dtype=a.dtype)
    out[:, :H, :W] = a
    obs = np.zeros((H2, W2), dtype=np.int8)
    obs[:H, :W] = 1
    return out, obs


def regular_axes(H: int, W: int, pixel_size_m: float, lat0: float, lon0: float):
    """Pixel-centre metres and degrees of a regular grid: (y (H,), x (W,), lat (H,), lon (W,))."""
    y = (np.arange(H) + 0.5) * pixel_size_m
    x = (np.arange(W) + 0.5) * pixel_size_m
    lat, _ = schema.metres_to_latlon(y, np.zeros_like(y), lat0, lon0)
    _, lon = schema.metres_to_latlon(np.zeros_like(x), x, lat0, lon0)
    return y, x, lat, lon


def _unit_means(unit_of: np.ndarray, n: int, values: np.ndarray) -> np.ndarray:
    counts = np.bincount(unit_of.ravel(), minlength=n)
    return np.bincount(unit_of.ravel(), weights=values.ravel().astype(np.float64), minlength=n) / counts


def grid_dataset(
    g50: np.ndarray,
    time: np.ndarray,
    *,
    y: np.ndarray,
    x: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    hierarchy: Hierarchy,
    traffic_attrs: dict,
    observed: np.ndarray | None = None,
    data_vars: dict | None = None,
    coords: dict | None = None,
) -> xr.Dataset:
    """A grid city store's root dataset: every traffic level from ``g50`` plus the hierarchy and coordinates.

    g50: (T, H, W) float32 finest-grid traffic, rows south -> north; time: (T,) datetime64[ns];
    y, x: (H,), (W,) pixel centres in metres from the SW corner; lat, lon: (H,), (W,) degrees;
    observed: optional (H, W) int8 mask (see :data:`OBSERVED_ATTRS`); data_vars / coords: extra entries in
    ``xr.Dataset`` tuple form. Cell and BS positions are the centroids of their pixels.
    """
    T, H, W = g50.shape
    hier = hierarchy
    C, B = hier.n_cells, hier.n_bs
    yy, xx = np.meshgrid(y, x, indexing="ij")
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    pc = hier.pixel_cell
    pb = pyramid.pixel_bs(pc, hier.cell_bs)
    m = {"units": "m"}
    g = xr.DataArray(g50.astype(np.float32, copy=False), dims=("time", "y", "x"))
    levels = pyramid.all_levels(g, pc, hier.cell_bs, C, B)
    tattrs = dict(traffic_attrs)
    dv = {
        schema.TRAFFIC_VAR["grid50"]: (("time", "y", "x"), levels["grid50"].values, tattrs),
        schema.TRAFFIC_VAR["grid100"]: (("time", "y100", "x100"), levels["grid100"].values, tattrs),
        schema.TRAFFIC_VAR["cell"]: (("time", "cell"), levels["cell"].values, tattrs),
        schema.TRAFFIC_VAR["bs"]: (("time", "bs"), levels["bs"].values, tattrs),
        "pixel_cell": (("y", "x"), pc.astype(np.int32), {"long_name": "grid50 -> cell map"}),
    }
    if observed is not None:
        dv["observed"] = (("y", "x"), observed.astype(np.int8), dict(OBSERVED_ATTRS))
    dv.update(data_vars or {})
    cs = {
        "time": ("time", np.asarray(time).astype("datetime64[ns]")),
        "y": ("y", y.astype(np.float64), {**m, "long_name": "pixel centre, metres north of the SW corner"}),
        "x": ("x", x.astype(np.float64), {**m, "long_name": "pixel centre, metres east of the SW corner"}),
        "lat": ("y", np.asarray(lat, dtype=np.float64), {"units": "degrees_north", "long_name": "latitude of pixel centres"}),
        "lon": ("x", np.asarray(lon, dtype=np.float64), {"units": "degrees_east", "long_name": "longitude of pixel centres"}),
        "y100": ("y100", y.reshape(-1, 2).mean(1), m),
        "x100": ("x100", x.reshape(-1, 2).mean(1), m),
        "cell": ("cell", np.arange(C, dtype=np.int32)),
        "cell_y": ("cell", _unit_means(pc, C, yy), {**m, "long_name": "centroid of the cell's pixels"}),
        "cell_x": ("cell", _unit_means(pc, C, xx), m),
        "cell_lat": ("cell", _unit_means(pc, C, la), {"units": "degrees_north"}),
        "cell_lon": ("cell", _unit_means(pc, C, lo), {"units": "degrees_east"}),
        "cell_bs": ("cell", hier.cell_bs.astype(np.int32), {"long_name": "cell -> bs map"}),
        "cell_sector": ("cell", hier.cell_sector.astype(np.int8), {"long_name": "position of the pseudo cell in its pseudo BS block (row-major)"}),
        "bs": ("bs", np.arange(B, dtype=np.int32)),
        "bs_y": ("bs", _unit_means(pb, B, yy), {**m, "long_name": "centroid of the BS's pixels"}),
        "bs_x": ("bs", _unit_means(pb, B, xx), m),
        "bs_lat": ("bs", _unit_means(pb, B, la), {"units": "degrees_north"}),
        "bs_lon": ("bs", _unit_means(pb, B, lo), {"units": "degrees_east"}),
    }
    cs.update(coords or {})
    return xr.Dataset(dv, coords=cs)


def store_attrs(
    *,
    city: str,
    lat0: float | None,
    lon0: float | None,
    pixel_size_m: float | None,
    time_step_minutes: int,
    levels_present: list[str],
    levels_built_by: dict,
    georeferenced: bool,
    **extra,
) -> dict:
    """Root attrs common to every imported store (``provenance``/``config``/``kind`` are added by run_import).

    ``crs`` is the local equirectangular frame at (lat0, lon0), or None when the source has no coordinates.
    ``georeferenced`` False means lat/lon are a nominal frame, not true positions.
    """
    attrs = {
        "mobscale_schema": schema.SCHEMA_VERSION,
        "city": city,
        "crs": schema.local_crs(lat0, lon0) if lat0 is not None and lon0 is not None else None,
        "lat0": lat0,
        "lon0": lon0,
        "pixel_size_m": pixel_size_m,
        "time_step_minutes": int(time_step_minutes),
        "levels_present": store_attrs_json(levels_present),
        "levels_built_by": store_attrs_json(levels_built_by),
        "georeferenced": bool(georeferenced),
        "timezone": "local time (naive timestamps)",
    }
    for k, v in extra.items():
        attrs[k] = store_attrs_json(v) if isinstance(v, (dict, list, tuple)) else v
    return attrs


def day_chunks(step_minutes: int) -> dict:
    """Zarr time chunks of one day at the native step."""
    return {"time": max(1, 1440 // int(step_minutes))}
