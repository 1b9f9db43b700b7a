"""``milan-block``: a block of Milano squares as one CSV (DGRN's ``milan_grid_data.csv``).

Source format: no header; one row per time step (10 min), one column per square of an h x w block of the
Milano grid (default 5x5, rows 41-45 x columns 41-45 in DGRN's numbering: 1-based, row 1 = north). The
column order is an *assumption* of the MANIFEST ("probably column-major", i.e. ``for col: for row:``, giving
cellIds 5941, 5841, 5741, 5641, 5541, 5942, ...; not verified): ``column_order="col-major"`` (default) or
``"row-major"``. The start is assumed to be 2013-11-01 00:00 local (CET), also per the MANIFEST; ``--start``
overrides it.

Store layout: like ``milan-raw`` (Milano squares as the finest grid, 2x2 -> grid100 and pseudo cells, 4x4 ->
pseudo BS, ``square_id`` (y, x) variable). An odd block is made even by ``pad="pad"`` (default: one row
north and/or one column east of zero traffic, ``observed`` = 0, listed in ``attrs["missing_squares"]``; no
source data dropped) or ``pad="crop"`` (drops the south row and/or east column: every pixel is data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mobscale.data.importers import _common as C
from mobscale.data.importers._milano_grid import SIDE, read_grid, row_col, square_id
from mobscale.data.importers.milan_raw import UNITS_NOTE, even_box
from mobscale.errors import ConfigError, InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)

DGRN_START = "2013-11-01T00:00"


def block_square_ids(h: int, w: int, first_row: int, first_col: int, column_order: str) -> np.ndarray:
    """(h*w,) cellIds of the CSV columns. Rows/cols are DGRN-style 1-based, row 1 = north."""
    j = np.arange(h * w)
    if column_order == "col-major":
        ri, ci = j % h, j // h
    elif column_order == "row-major":
        ri, ci = j // w, j % w
    else:
        raise ConfigError(f"milan-block: column_order='{column_order}' (choose col-major or row-major)")
    r = first_row + ri
    c = first_col + ci
    if r.min() < 1 or r.max() > SIDE or c.min() < 1 or c.max() > SIDE:
        raise ConfigError(f"milan-block: block rows {first_row}..{first_row + h - 1} x cols {first_col}..{first_col + w - 1} leave the {SIDE}x{SIDE} Milano grid")
    return square_id(SIDE - r, c - 1)


def read_block_csv(path: Path, n_columns: int) -> np.ndarray:
    """(T, n_columns) float64, checked: numeric, finite, non-negative, no empty field."""
    C.need_file(path, "block CSV")
    try:
        df = pd.read_csv(path, header=None, keep_default_na=False, na_values=[""], skip_blank_lines=False)
    except pd.errors.ParserError as e:
        raise InputDataError(f"{path}: {e}") from None
    except pd.errors.EmptyDataError:
        raise InputDataError(f"{path}: empty file") from None
    if df.shape[1] != n_columns:
        raise InputDataError(f"{path}: {df.shape[1]} columns, expected {n_columns} (one per square of the block; see --layout)")
    df.columns = [f"column {j + 1}" for j in range(n_columns)]
    a = C.numeric_columns(df, path)
    empty = np.isnan(a)
    if empty.any():
        i, j = np.argwhere(empty)[0]
        raise InputDataError(f"{path}: line {i + 1}, column {j + 1}: empty field")
    neg = a < 0
    if neg.any():
        i, j = np.argwhere(neg)[0]
        raise InputDataError(f"{path}: line {i + 1}, column {j + 1}: negative traffic ({a[i, j]:.4g})")
    return a


def import_milan_block(
    sources: list[Path],
    *,
    grid: str | Path | None = None,
    city: str | None = None,
    step_minutes: int | None = None,
    start: str | None = None,
    layout: tuple[int, int] | None = None,
    first_row: int = 41,
    first_col: int = 41,
    column_order: str = "col-major",
    pad: str = "pad",
) -> C.Built:
    """Import one block CSV. grid: the Milano grid CSV/GeoJSON (required, for coordinates); layout: (h, w) of
    the block (default 5x5); first_row/first_col: DGRN-style 1-based position of the block's NW square."""
    if len(sources) != 1:
        raise ConfigError(f"milan-block takes one CSV file, got {len(sources)}")
    if grid is None:
        raise ConfigError("milan-block needs --grid (the Milano grid CSV, e.g. shared/data/milan/milano_grid_squares.csv) for the square coordinates")
    if pad not in ("pad", "crop"):
        raise ConfigError(f"milan-block: pad='{pad}' (choose pad or crop)")
    h, w = layout or (5, 5)
    step = C.check_step(step_minutes or 10, "milan-block")
    path = Path(sources[0])
    ids = block_square_ids(h, w, first_row, first_col, column_order)
    a = read_block_csv(path, h * w)
    T = a.shape[0]
    g = read_grid(grid)
    rs, cs = row_col(ids)
    r0, r1, c0, c1 = int(rs.min()), int(rs.max()), int(cs.min()), int(cs.max())
    if pad == "pad":
        r0, r1, c0, c1 = even_box(r0, r1, c0, c1)
    else:
        if (r1 - r0 + 1) % 2:
            r0 += 1  # drop the south row
        if (c1 - c0 + 1) % 2:
            c1 -= 1  # drop the east column
        if r1 < r0 or c1 < c0:
            raise ConfigError(f"milan-block: a {h}x{w} block cannot be cropped to an even size")
    H, W = r1 - r0 + 1, c1 - c0 + 1
    geo = g.box(r0, r1, c0, c1)
    traffic = np.zeros((T, H, W), dtype=np.float32)
    observed = np.zeros((H, W), dtype=np.int8)
    inside = (rs >= r0) & (rs <= r1) & (cs >= c0) & (cs <= c1)
    traffic[:, rs[inside] - r0, cs[inside] - c0] = a[:, inside]
    observed[rs[inside] - r0, cs[inside] - c0] = 1
    box_ids = square_id(np.arange(r0, r1 + 1)[:, None], np.arange(c0, c1 + 1)[None, :])
    t0, nominal = C.parse_start(start, np.datetime64(DGRN_START, "ns"), "milan-block")
    time = C.time_axis(t0, step, T)
    units = {"units": "1", "comment": UNITS_NOTE}
    hier = C.block_hierarchy(H, W, cell_px=2, bs_px=4)
    ds = C.grid_dataset(
        traffic, time, y=geo["y"], x=geo["x"], lat=geo["lat"], lon=geo["lon"], hierarchy=hier,
        traffic_attrs={**units, "long_name": "internet activity per unit per interval (Telecom Italia CDR)"},
        observed=observed,
        data_vars={"square_id": (("y", "x"), box_ids.astype(np.int32), {"long_name": "Milano grid cellId of the pixel"})},
    )
    size = float(np.sqrt(geo["size_y_m"] * geo["size_x_m"]))
    ds.attrs = C.store_attrs(
        city=city or "milan",
        lat0=geo["lat0"], lon0=geo["lon0"], pixel_size_m=round(size, 2), time_step_minutes=step,
        levels_present=["bs", "cell", "grid100", "grid50"],
        levels_built_by={
            "grid50": f"Telecom Italia Milano grid squares (~{geo['size_x_m']:.1f} m E-W x {geo['size_y_m']:.1f} m N-S; the finest grid available, not 50 m): DGRN internet block",
            "grid100": "sum of 2x2 squares (~470 m)",
            "cell": "pseudo cells: sum of 2x2 squares (no cell data in the source)",
            "bs": "pseudo BS: sum of 4x4 squares = 2x2 pseudo cells (partial at the north/east edge)",
        },
        georeferenced=True,
        pixel_size_x_m=round(geo["size_x_m"], 2), pixel_size_y_m=round(geo["size_y_m"], 2),
        block={"rows_dgrn": [first_row, first_row + h - 1], "cols_dgrn": [first_col, first_col + w - 1],
               "column_order": column_order, "column_order_note": "assumed (MANIFEST: probably column-major; not verified)",
               "pad": pad, "column_cellIds": ids.tolist()},
        missing_squares=box_ids[observed == 0].tolist(),
        dropped_squares=ids[~inside].tolist(),
        timezone="Europe/Rome local time (CET, naive timestamps)",
        **C.time_attrs(False, "start assumed 2013-11-01 00:00 CET (MANIFEST: likely; not in the file)" if nominal else "start from --start"),
    )
    if nominal:
        ds.attrs["time_origin"] = "assumed"
    log.info("milan-block: %dx%d block -> %dx%d grid (%s), %d steps of %d min", h, w, H, W, pad, T, step)
    return C.Built(ds, [path, g.path], chunks=C.day_chunks(step))
