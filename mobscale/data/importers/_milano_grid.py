"""The Telecom Italia Milano grid (10000 squares of ~235 m, cellId 1..10000, 1 = SW corner, ids running
west -> east then south -> north, 100 per row) and the geometry of a box of its squares.

Read from the CSV of shared/data/milan (cellId + the 4 corners (nw, ne, se, sw) as lon/lat + the centroid) or
from the original GeoJSON (one Polygon feature per square, ``properties.cellId``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mobscale.data import schema
from mobscale.data.importers._common import need_file
from mobscale.errors import InputDataError

SIDE = 100  # squares per row and per column
CSV_COLUMNS = ("cellId", "lon_nw", "lat_nw", "lon_ne", "lat_ne", "lon_se", "lat_se", "lon_sw", "lat_sw", "lon_c", "lat_c")


def square_id(row_s: np.ndarray, col: np.ndarray) -> np.ndarray:
    """cellId of (row counted from the south, column from the west), both 0-based."""
    return np.asarray(row_s) * SIDE + np.asarray(col) + 1


def row_col(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row from the south, column from the west), 0-based, of cellIds 1..10000."""
    k = np.asarray(ids, dtype=np.int64) - 1
    return k // SIDE, k % SIDE


@dataclass(frozen=True)
class MilanoGrid:
    """Geometry per square, indexed by cellId - 1 (NaN where the file lacks the square)."""

    path: Path
    lat_c: np.ndarray  # (10000,)
    lon_c: np.ndarray
    lat_sw: np.ndarray
    lon_sw: np.ndarray
    lat_n: np.ndarray  # north edge latitude
    lon_e: np.ndarray  # east edge longitude

    def has(self, ids: np.ndarray) -> np.ndarray:
        return np.isfinite(self.lat_c[np.asarray(ids) - 1])

    def box(self, r0: int, r1: int, c0: int, c1: int) -> dict:
        """Geometry of the box of squares rows r0..r1 x cols c0..c1 (inclusive, 0-based, rows from the south).

        Returns lat0/lon0 (SW corner of the SW square), per-row centre lat (H,) and y metres, per-column centre
        lon (W,) and x metres, and the mean square size in metres (north-south, east-west).
        """
        rows = np.arange(r0, r1 + 1)
        cols = np.arange(c0, c1 + 1)
        ids = square_id(rows[:, None], cols[None, :])
        missing = ~self.has(ids)
        if missing.any():
            bad = ids[missing]
            raise InputDataError(
                f"{self.path}: the grid lacks {bad.size} square(s) needed for the imported box "
                f"(rows {r0}-{r1}, cols {c0}-{c1} from the SW corner), first cellId {int(bad[0])}"
            )
        k = ids - 1
        lat0 = float(self.lat_sw[k[0, 0]])
        lon0 = float(self.lon_sw[k[0, 0]])
        lat = self.lat_c[k].mean(axis=1)
        lon = self.lon_c[k].mean(axis=0)
        y, _ = schema.latlon_to_metres(lat, np.full_like(lat, lon0), lat0, lon0)
        _, x = schema.latlon_to_metres(np.full_like(lon, lat0), lon, lat0, lon0)
        dy, _ = schema.latlon_to_metres(self.lat_n[k], self.lon_sw[k], self.lat_sw[k], self.lon_sw[k])
        _, dx = schema.latlon_to_metres(self.lat_sw[k], self.lon_e[k], self.lat_sw[k], self.lon_sw[k])
        return {"lat0": lat0, "lon0": lon0, "lat": lat, "lon": lon, "y": y, "x": x,
                "size_y_m": float(np.mean(dy)), "size_x_m": float(np.mean(dx))}


def _from_arrays(path: Path, ids, lat_c, lon_c, lat_sw, lon_sw, lat_n, lon_e) -> MilanoGrid:
    ids = np.asarray(ids, dtype=np.int64)
    bad = (ids < 1) | (ids > SIDE * SIDE)
    if bad.any():
        raise InputDataError(f"{path}: cellId {int(ids[bad][0])} outside 1..{SIDE * SIDE} (entry {int(np.argmax(bad))})")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputDataError(f"{path}: cellId {int(uniq[counts > 1][0])} appears {int(counts.max())} times")
    arrays = []
    for name, v in (("lat_c", lat_c), ("lon_c", lon_c), ("lat_sw", lat_sw), ("lon_sw", lon_sw), ("lat_n", lat_n), ("lon_e", lon_e)):
        v = np.asarray(v, dtype=np.float64)
        if not np.isfinite(v).all():
            i = int(np.argmax(~np.isfinite(v)))
            raise InputDataError(f"{path}: non-finite {name} for cellId {int(ids[i])}")
        full = np.full(SIDE * SIDE, np.nan)
        full[ids - 1] = v
        arrays.append(full)
    return MilanoGrid(path, *arrays)


def read_grid(path: str | Path) -> MilanoGrid:
    """Read the Milano grid from the CSV (columns :data:`CSV_COLUMNS`) or the GeoJSON FeatureCollection."""
    path = need_file(Path(path), "Milano grid")
    if path.suffix.lower() in (".geojson", ".json"):
        return _read_geojson(path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputDataError(f"{path}: not a CSV file ({e})") from None
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise InputDataError(f"{path}: missing column(s) {missing} (expected {list(CSV_COLUMNS)})")
    for c in CSV_COLUMNS:
        v = pd.to_numeric(df[c], errors="coerce")
        if v.isna().any():
            i = int(np.argmax(v.isna().to_numpy()))
            raise InputDataError(f"{path}: line {i + 2}: column '{c}' is empty or not a number ({df[c].iloc[i]!r})")
        df[c] = v
    return _from_arrays(
        path, df["cellId"].to_numpy(), df["lat_c"], df["lon_c"], df["lat_sw"], df["lon_sw"],
        df[["lat_nw", "lat_ne"]].mean(axis=1), df[["lon_ne", "lon_se"]].mean(axis=1),
    )


def _read_geojson(path: Path) -> MilanoGrid:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputDataError(f"{path}: not valid JSON ({e})") from None
    feats = data.get("features") if isinstance(data, dict) else None
    if not feats:
        raise InputDataError(f"{path}: no 'features' (expected a GeoJSON FeatureCollection of grid squares)")
    ids, rings = [], []
    for i, f in enumerate(feats):
        props = f.get("properties") or {}
        cid = props.get("cellId", props.get("cellid", f.get("id")))
        geom = f.get("geometry") or {}
        if cid is None or geom.get("type") != "Polygon":
            raise InputDataError(f"{path}: feature {i} has no cellId or is not a Polygon")
        ring = np.asarray(geom["coordinates"][0], dtype=np.float64)
        if ring.ndim != 2 or ring.shape[0] < 4 or ring.shape[1] < 2:
            raise InputDataError(f"{path}: feature {i} (cellId {cid}): polygon ring has shape {ring.shape}")
        ids.append(int(cid))
        rings.append(ring[:4, :2])  # the closing vertex repeats the first
    r = np.stack(rings)  # (N, 4, [lon, lat])
    lon, lat = r[..., 0], r[..., 1]
    return _from_arrays(path, ids, lat.mean(1), lon.mean(1), lat.min(1), lon.min(1), lat.max(1), lon.max(1))
