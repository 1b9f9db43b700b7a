"""``movesim``: MoveSim / PateGail discretised trajectories (e.g. GeoLife): a folder with ``gps`` ("lat lng" per
line; line i = location id i) and ``*.data`` files (one user-day per row: 48 location ids, 30-min slots).

Sources: the folder, or the ``gps`` file and the ``.data`` files. ``real.data`` is the train split, ``test.data``
and ``val.data`` the others (any other ``X.data`` is split "X"); ``--split`` keeps one (default all). Each row
becomes one user (a user-day: MoveSim treats rows as independent samples; nothing links the days of one
person). Store layout, region filter and BS mapping: see :mod:`mobscale.data.importers._trajectories`;
``users/user_split`` (CF flags) and ``users/source_row`` (0-based row in its file) say where each row came from.
The time axis is one nominal day (Monday 2001-01-01) unless ``--start``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mobscale.data.importers import _common as C
from mobscale.data.importers import _trajectories as TR
from mobscale.errors import ConfigError, InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)

SPLIT_OF_FILE = {"real": "train", "train": "train", "test": "test", "val": "val"}


def _read_table(path: Path, what: str) -> pd.DataFrame:
    C.need_file(path, what)
    try:
        return pd.read_csv(path, sep=r"\s+", header=None, keep_default_na=False, na_values=[""], skip_blank_lines=False)
    except pd.errors.ParserError as e:
        raise InputDataError(f"{path}: {e}") from None
    except pd.errors.EmptyDataError:
        raise InputDataError(f"{path}: empty file") from None


def read_gps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(lat (n,), lon (n,)) of location ids 0..n-1."""
    df = _read_table(path, "MoveSim gps table")
    if df.shape[1] != 2:
        raise InputDataError(f"{path}: {df.shape[1]} columns, expected 2 ('lat lng' per line)")
    df.columns = ["lat", "lng"]
    a = C.numeric_columns(df, path)
    TR.check_latlon(a[:, 0], a[:, 1], str(path))
    return a[:, 0], a[:, 1]


def read_days(path: Path, n_loc: int, slots: int = 48) -> np.ndarray:
    """(rows, slots) int64 location ids, each in [0, n_loc)."""
    df = _read_table(path, "MoveSim .data file")
    if df.shape[1] != slots:
        raise InputDataError(f"{path}: {df.shape[1]} location ids per row, expected {slots} (30-min slots of a day)")
    df.columns = [f"slot {j}" for j in range(slots)]
    a = C.numeric_columns(df, path)
    bad = np.isnan(a) | (a != np.round(a)) | (a < 0) | (a >= n_loc)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputDataError(f"{path}: line {i + 1}, slot {j}: location id {a[i, j]} is not an integer in 0..{n_loc - 1} (the gps table)")
    return a.astype(np.int64)


def find_sources(sources: list[Path]) -> tuple[Path, list[Path]]:
    """(gps file, .data files) from a folder or a list of files."""
    files: list[Path] = []
    for s in sources:
        s = Path(s)
        if s.is_dir():
            files += sorted(p for p in s.iterdir() if p.is_file() and (p.name == "gps" or p.suffix == ".data"))
        elif s.exists():
            files.append(s)
        else:
            raise InputDataError(f"{s}: no such file or folder")
    gps = [p for p in files if p.suffix != ".data"]
    data = [p for p in files if p.suffix == ".data"]
    if len(gps) != 1:
        raise ConfigError(f"movesim needs exactly one gps table (a file without the .data suffix), got {[str(p) for p in gps]}")
    if not data:
        raise ConfigError(f"movesim: no .data files among {[str(s) for s in sources]}")
    return gps[0], data


def import_movesim(
    sources: list[Path],
    *,
    city: str | None = None,
    split: str | None = None,
    start: str | None = None,
    bs_coords: str | Path | None = None,
    bs_spacing_m: float = 500.0,
    max_radius_km: float = 50.0,
    max_bs_distance_km: float = 5.0,
) -> C.Built:
    """Import MoveSim-style trajectories into a users-only store."""
    gps, data_files = find_sources(sources)
    lat, lon = read_gps(gps)
    splits = {p: SPLIT_OF_FILE.get(p.stem, p.stem) for p in data_files}
    if split not in (None, "all"):
        data_files = [p for p in data_files if splits[p] == split]
        if not data_files:
            raise ConfigError(f"movesim: no .data file of split '{split}' (have {sorted(set(splits.values()))})")
    present = {splits[p] for p in data_files}
    names = [s for s in ("train", "val", "test") if s in present] + sorted(present - {"train", "val", "test"})
    data_files = sorted(data_files, key=lambda p: (names.index(splits[p]), p.name))  # users in split order
    rows, split_code, source_row = [], [], []
    for p in data_files:
        r = read_days(p, lat.size)
        rows.append(r)
        split_code.append(np.full(r.shape[0], names.index(splits[p]), np.int8))
        source_row.append(np.arange(r.shape[0], dtype=np.int32))
    all_rows = np.concatenate(rows)
    root, users, extra = TR.build_store(
        fmt="movesim", city=city or gps.parent.name, loc_lat=lat, loc_lon=lon, rows=all_rows,
        row_coords={
            "user_split": (np.concatenate(split_code), {"long_name": "source split of the row", "flag_values": list(range(len(names))),
                                                        "flag_meanings": " ".join(names), "units": "1"}),
            "source_row": (np.concatenate(source_row), {"long_name": "0-based row in the split's .data file"}),
        },
        start=start, bs_coords=bs_coords, bs_spacing_m=bs_spacing_m, max_radius_km=max_radius_km,
        max_bs_distance_km=max_bs_distance_km,
        users_attrs={"source_files": {p.name: splits[p] for p in data_files}},
    )
    return C.Built(root, [gps, *data_files, *extra], users=users)
