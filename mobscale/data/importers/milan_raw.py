"""``milan-raw``: Telecom Italia "sms-call-internet-mi" raw CDR files (one or more, e.g. one per day).

Source format: tab-separated, no header, 8 fields per line: square_id (Milano grid cellId), time_interval
(ms since the Unix epoch, start of a 10-min interval), countrycode, smsin, smsout, callin, callout, internet.
An empty activity field means 0 (records are written only where some activity happened). Rows are summed
over country codes.

Store layout (a grid store; see the package docstring for the shared conventions):

* ``traffic_grid50`` (time, y, x) = ``internet`` per square per interval; the finest level is the ~235 m
  Milano square (``pixel_size_m`` = mean of the measured sizes, ``pixel_size_x_m``/``pixel_size_y_m`` attrs);
* ``smsin``, ``smsout``, ``callin``, ``callout`` (time, y, x): the other activities, same grid;
* ``traffic_grid100`` = 2x2 squares (~470 m), pseudo cells = 2x2 squares, pseudo BS = 4x4 squares (2x2 pseudo
  cells; partial at the north/east edges when the grid is not a multiple of 4);
* the grid is the bounding box of the squares present, padded to even size by one row to the north and/or
  one column to the east (or south/west at the grid edge). Squares of the box without any record (padding or
  absent from the source) hold zeros, are 0 in ``observed`` and are listed in ``attrs["missing_squares"]``;
* time: local wall clock at the fixed UTC offset of the first interval in Europe/Rome (CET, UTC+1, for the
  2013 data; the whole axis uses that offset so a DST change cannot duplicate or drop timestamps). Every
  interval between the first and the last must have at least one record in some file, else the import
  fails (``missing="zero"`` treats such intervals as no activity instead).

Memory: about 20 bytes x intervals x squares (five activities as float32), e.g. 1.8 GB for the full
two-month, 10000-square release.
"""

from __future__ import annotations

import io
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from tqdm import tqdm

from mobscale.data.importers import _common as C
from mobscale.data.importers._milano_grid import SIDE, read_grid, row_col, square_id
from mobscale.errors import ConfigError, InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)

FIELDS = ("square_id", "time_interval", "countrycode", "smsin", "smsout", "callin", "callout", "internet")
KEYS = FIELDS[:3]
ACTIVITIES = FIELDS[3:]
OTHER = ("smsin", "smsout", "callin", "callout")
LONG_NAMES = {
    "smsin": "SMS received", "smsout": "SMS sent", "callin": "calls received", "callout": "calls issued",
    "internet": "internet activity",
}
TIMEZONE = "Europe/Rome"
UNITS_NOTE = "Telecom Italia CDR activity: a normalised count with no physical unit"


def _locate_bad_line(raw: bytes, path: Path) -> None:
    """Slow path, only after the fast field count disagreed: name the first line without 8 fields."""
    for i, line in enumerate(raw.split(b"\n"), start=1):
        n = line.count(b"\t") + 1
        if n != len(FIELDS):
            raise InputDataError(f"{path}: line {i}: {n} tab-separated field(s), expected {len(FIELDS)} ({', '.join(FIELDS)})")


def read_raw_file(path: Path, step_ms: int, known: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse and check one raw file; sum over country codes.

    known: (10000,) bool, squares present in the grid. Returns (times (n_t,) int64 ms sorted, squares (n_s,)
    int64 sorted, activity (5, n_t, n_s) float32 in :data:`ACTIVITIES` order).
    """
    raw = C.need_file(path, "Telecom Italia raw file").read_bytes().rstrip(b"\r\n")
    if not raw.strip():
        raise InputDataError(f"{path}: empty file")
    n_lines = raw.count(b"\n") + 1
    # every line must have exactly 8 fields; pandas reports lines with too many itself, but pads short lines
    # with NaN, so compare the total tab count first (one C pass) and only search line by line on mismatch
    if raw.count(b"\t") != (len(FIELDS) - 1) * n_lines:
        _locate_bad_line(raw, path)
    try:
        df = pd.read_csv(io.BytesIO(raw), sep="\t", header=None, names=list(FIELDS), keep_default_na=False,
                         na_values=[""], skip_blank_lines=False, engine="c")
    except pd.errors.ParserError as e:
        raise InputDataError(f"{path}: {e}") from None
    df = pd.DataFrame(C.numeric_columns(df, path), columns=list(FIELDS))
    line = np.arange(1, len(df) + 1)
    for k in KEYS:
        v = df[k].to_numpy()
        bad = np.isnan(v) | (v != np.round(v))
        if bad.any():
            i = int(np.argmax(bad))
            raise InputDataError(f"{path}: line {line[i]}: field '{k}' must be an integer, got {'empty' if np.isnan(v[i]) else v[i]}")
    sq = df["square_id"].to_numpy().astype(np.int64)
    bad = (sq < 1) | (sq > SIDE * SIDE)
    bad[~bad] = ~known[sq[~bad] - 1]
    if bad.any():
        i = int(np.argmax(bad))
        raise InputDataError(f"{path}: line {line[i]}: unknown square_id {sq[i]} (not in the Milano grid file)")
    t = df["time_interval"].to_numpy().astype(np.int64)
    off = (t - t.min()) % step_ms
    if off.any():
        i = int(np.argmax(off != 0))
        raise InputDataError(f"{path}: line {line[i]}: time_interval {t[i]} is not on the {step_ms // 60000}-min grid of the file's first interval {t.min()}")
    acts = df[list(ACTIVITIES)].to_numpy()
    neg = acts < 0
    if neg.any():
        i, j = np.argwhere(neg)[0]
        raise InputDataError(f"{path}: line {line[i]}: negative {ACTIVITIES[j]} ({acts[i, j]:.4g})")
    acts = np.nan_to_num(acts, nan=0.0)  # empty = no activity
    cc = df["countrycode"].to_numpy().astype(np.int64)
    order = np.lexsort((cc, t, sq))
    same = (np.diff(sq[order]) == 0) & (np.diff(t[order]) == 0) & (np.diff(cc[order]) == 0)
    if same.any():
        k = int(np.argmax(same))
        a, b = sorted((line[order[k]], line[order[k + 1]]))
        raise InputDataError(f"{path}: lines {a} and {b}: duplicate record for square_id {sq[order[k]]}, time_interval {t[order[k]]}, countrycode {cc[order[k]]}")
    times, ti = np.unique(t, return_inverse=True)
    squares, si = np.unique(sq, return_inverse=True)
    lin = ti * squares.size + si
    n = times.size * squares.size
    dense = np.stack([np.bincount(lin, weights=acts[:, j], minlength=n) for j in range(len(ACTIVITIES))])
    return times, squares, dense.reshape(len(ACTIVITIES), times.size, squares.size).astype(np.float32)


def local_offset(t0_ms: int) -> np.timedelta64:
    """UTC offset of Europe/Rome at the first interval (fixed for the whole axis)."""
    ts = pd.Timestamp(int(t0_ms), unit="ms", tz="UTC").tz_convert(ZoneInfo(TIMEZONE))
    return np.timedelta64(int(ts.utcoffset().total_seconds()), "s")


def even_box(r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int]:
    """Grow the inclusive box to even height and width: north/east first, south/west at the grid edge."""
    if (r1 - r0 + 1) % 2:
        r1, r0 = (r1 + 1, r0) if r1 + 1 < SIDE else (r1, r0 - 1)
    if (c1 - c0 + 1) % 2:
        c1, c0 = (c1 + 1, c0) if c1 + 1 < SIDE else (c1, c0 - 1)
    return r0, r1, c0, c1


def import_milan_raw(
    sources: list[Path],
    *,
    grid: str | Path | None = None,
    city: str | None = None,
    step_minutes: int | None = None,
    missing: str = "error",
) -> C.Built:
    """Import raw Telecom Italia files onto the Milano grid (``grid``: the grid CSV or GeoJSON, required).

    step_minutes: interval length (default 10, the release's); missing: "error" (default) or "zero" for
    intervals that no file has any record of.
    """
    if grid is None:
        raise ConfigError("milan-raw needs --grid (the Milano grid CSV, e.g. shared/data/milan/milano_grid_squares.csv)")
    if missing not in ("error", "zero"):
        raise ConfigError(f"milan-raw: missing='{missing}' (choose error or zero)")
    step = C.check_step(step_minutes or 10, "milan-raw")
    step_ms = step * 60_000
    g = read_grid(grid)
    known = np.isfinite(g.lat_c)
    parts = []
    seen_times: dict[int, Path] = {}
    for path in tqdm(sources, desc="milan-raw files", unit="file", disable=len(sources) < 3, leave=False):
        times, squares, dense = read_raw_file(Path(path), step_ms, known)
        clash = [t for t in times.tolist() if t in seen_times]
        if clash:
            raise InputDataError(f"{path}: time_interval {clash[0]} also appears in {seen_times[clash[0]]} (overlapping files)")
        seen_times.update({t: Path(path) for t in times.tolist()})
        parts.append((Path(path), times, squares, dense))
    t0 = min(p[1][0] for p in parts)
    t_last = max(p[1][-1] for p in parts)
    for path, times, *_ in parts:
        off = (times - t0) % step_ms
        if off.any():
            raise InputDataError(f"{path}: time_interval {times[np.argmax(off != 0)]} is off the {step}-min grid of the first interval {t0}")
    T = int((t_last - t0) // step_ms) + 1
    have = np.zeros(T, bool)
    for _, times, *_ in parts:
        have[(times - t0) // step_ms] = True
    offset = local_offset(t0)
    time = C.time_axis(np.datetime64(int(t0), "ms") + offset, step, T)
    if not have.all():
        first = int(np.argmax(~have))
        msg = (f"milan-raw: {int((~have).sum())} of {T} {step}-min intervals have no record in any source file, first at "
               f"{np.datetime_as_string(time[first], unit='m')} local (time_interval {t0 + first * step_ms})")
        if missing == "error":
            raise InputDataError(msg + "; pass missing='zero' if those intervals truly had no activity")
        log.warning("%s: stored as zero activity", msg)
    present = np.unique(np.concatenate([p[2] for p in parts]))
    rs, cs = row_col(present)
    r0, r1, c0, c1 = even_box(int(rs.min()), int(rs.max()), int(cs.min()), int(cs.max()))
    H, W = r1 - r0 + 1, c1 - c0 + 1
    geo = g.box(r0, r1, c0, c1)
    acts = np.zeros((len(ACTIVITIES), T, H, W), dtype=np.float32)
    observed = np.zeros((H, W), dtype=np.int8)
    for _, times, squares, dense in parts:
        ti = (times - t0) // step_ms
        r, c = row_col(squares)
        acts[:, ti[:, None], (r - r0)[None, :], (c - c0)[None, :]] = dense
        observed[r - r0, c - c0] = 1
    box_ids = square_id(np.arange(r0, r1 + 1)[:, None], np.arange(c0, c1 + 1)[None, :])
    missing_squares = box_ids[observed == 0].tolist()
    traffic = acts[ACTIVITIES.index("internet")]
    units = {"units": "1", "comment": UNITS_NOTE}
    extra = {
        name: (("time", "y", "x"), acts[ACTIVITIES.index(name)], {**units, "long_name": f"{LONG_NAMES[name]} per Milano square per interval"})
        for name in OTHER
    }
    extra["square_id"] = (("y", "x"), box_ids.astype(np.int32), {"long_name": "Milano grid cellId of the pixel"})
    hier = C.block_hierarchy(H, W, cell_px=2, bs_px=4)
    ds = C.grid_dataset(
        traffic, time, y=geo["y"], x=geo["x"], lat=geo["lat"], lon=geo["lon"], hierarchy=hier,
        traffic_attrs={**units, "long_name": "internet activity per unit per interval (Telecom Italia CDR)"},
        observed=observed, data_vars=extra,
    )
    size = float(np.sqrt(geo["size_y_m"] * geo["size_x_m"]))
    ds.attrs = C.store_attrs(
        city=city or "milan",
        lat0=geo["lat0"], lon0=geo["lon0"], pixel_size_m=round(size, 2), time_step_minutes=step,
        levels_present=["bs", "cell", "grid100", "grid50"],
        levels_built_by={
            "grid50": f"Telecom Italia Milano grid squares (~{geo['size_x_m']:.1f} m E-W x {geo['size_y_m']:.1f} m N-S; the finest grid available, not 50 m): internet activity summed over country codes",
            "grid100": "sum of 2x2 squares (~470 m)",
            "cell": "pseudo cells: sum of 2x2 squares (no cell data in the source)",
            "bs": "pseudo BS: sum of 4x4 squares = 2x2 pseudo cells (partial at the north/east edge)",
        },
        georeferenced=True,
        pixel_size_x_m=round(geo["size_x_m"], 2), pixel_size_y_m=round(geo["size_y_m"], 2),
        square_box={"row_from_south": [r0, r1], "col_from_west": [c0, c1], "cellId_sw": int(box_ids[0, 0]), "cellId_ne": int(box_ids[-1, -1])},
        missing_squares=missing_squares,
        timezone=f"{TIMEZONE} at a fixed UTC offset of {offset.astype('timedelta64[m]').astype(int) / 60:+.0f} h (naive local timestamps)",
        activities="traffic = internet; smsin, smsout, callin, callout stored as extra (time, y, x) variables",
        **C.time_attrs(False),
    )
    log.info("milan-raw: %d files, %d squares present in a %dx%d box, %d intervals of %d min", len(parts), present.size, H, W, T, step)
    return C.Built(ds, [Path(p) for p in sources] + [g.path], chunks=C.day_chunks(step))
