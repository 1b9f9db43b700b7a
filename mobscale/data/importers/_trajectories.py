"""Trajectory importers' shared part: location tables -> base stations, and the users-only store.

A trajectory source gives a location table (lat, lon per location id) and user-day rows of location ids in
30-min slots. The store keeps, per row (one "user" = one user-day, because these sources do not link days of
the same person, or link them without dates):

* ``users/trajectory`` (user, time) int32: index of the serving BS in the root ``bs``;
* ``users/location`` (user, time) int32: the source location id, with ``users/loc_lat``, ``users/loc_lon``,
  ``users/loc_bs`` (loc) the source table and each location's BS, so location-level metrics (MoveSim's) stay
  computable;
* root ``bs``, ``bs_x``, ``bs_y``, ``bs_lat``, ``bs_lon``: the base stations, no traffic levels
  (``levels_present = []``).

Region: a city store covers one city, but GeoLife also holds trips across China. Rows that visit a location
farther than ``max_radius_km`` (default 50 km) from the visit-weighted median position are dropped (count and
fraction in ``users.attrs["region"]``, logged as a warning); ``max_radius_km=inf`` keeps everything.

Base stations: by default pseudo BS = the occupied squares of a ``bs_spacing_m`` (500 m) grid over the kept
locations, placed at the centroid of the distinct locations inside (one k-means-like step; no BS is made
where nobody goes). With ``--bs-coords CSV`` (columns latitude/longitude, or lat/lon/lng) every location maps to
its nearest BS (great-circle); the import is refused when a visited location is farther than
``max_bs_distance_km`` (default 5 km) from every BS, e.g. Beijing trajectories on Shanghai base stations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy.spatial import cKDTree

from mobscale.data import schema
from mobscale.data.importers import _common as C
from mobscale.data.store import store_attrs_json
from mobscale.errors import ConfigError, InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)

EARTH_KM = schema.EARTH_RADIUS_M / 1000.0
LAT_NAMES = ("latitude", "lat")
LON_NAMES = ("longitude", "lon", "lng", "long")


def check_latlon(lat: np.ndarray, lon: np.ndarray, where: str, first_line: int = 1, unit: str = "line") -> None:
    """Finite latitudes in [-90, 90] and longitudes in [-180, 180]; entry i is ``unit`` ``first_line + i``."""
    bad = ~np.isfinite(lat) | ~np.isfinite(lon) | (np.abs(lat) > 90) | (np.abs(lon) > 180)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputDataError(f"{where}: {unit} {first_line + i}: invalid coordinates (lat {lat[i]}, lon {lon[i]})")


def read_bs_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(lat (B,), lon (B,)) from a CSV with a header naming latitude/longitude columns (any case)."""
    path = C.need_file(Path(path), "base-station coordinates CSV")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputDataError(f"{path}: not a CSV file ({e})") from None
    cols = {c.strip().lower(): c for c in df.columns}
    la = next((cols[n] for n in LAT_NAMES if n in cols), None)
    lo = next((cols[n] for n in LON_NAMES if n in cols), None)
    if la is None or lo is None:
        raise InputDataError(f"{path}: needs a latitude and a longitude column (one of {LAT_NAMES} and {LON_NAMES}), has {list(df.columns)}")
    if df.empty:
        raise InputDataError(f"{path}: no base stations (header only)")
    a = C.numeric_columns(df[[la, lo]], path, first_line=2)
    check_latlon(a[:, 0], a[:, 1], str(path), first_line=2)
    return a[:, 0], a[:, 1]


def _unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.column_stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


def great_circle_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    chord = np.linalg.norm(_unit(np.atleast_1d(lat1), np.atleast_1d(lon1)) - _unit(np.atleast_1d(lat2), np.atleast_1d(lon2)), axis=1)
    return 2 * EARTH_KM * np.arcsin(np.clip(chord / 2, 0, 1))


def region_rows(loc_lat: np.ndarray, loc_lon: np.ndarray, rows: np.ndarray, max_radius_km: float) -> tuple[np.ndarray, dict]:
    """Rows (U, S) whose every location lies within ``max_radius_km`` of the visit-weighted median position.

    Returns (keep (U,) bool, info dict for the attrs).
    """
    lat_v, lon_v = loc_lat[rows.ravel()], loc_lon[rows.ravel()]
    centre = (float(np.median(lat_v)), float(np.median(lon_v)))
    if not max_radius_km > 0:
        raise ConfigError(f"max_radius_km must be positive (inf keeps every row), got {max_radius_km}")
    info = {"centre_lat": centre[0], "centre_lon": centre[1], "max_radius_km": max_radius_km if np.isfinite(max_radius_km) else None}
    if not np.isfinite(max_radius_km):
        return np.ones(rows.shape[0], bool), {**info, "dropped": 0, "fraction": 0.0}
    used = np.unique(rows)
    far = np.zeros(loc_lat.size, bool)
    far[used] = great_circle_km(loc_lat[used], loc_lon[used], np.full(used.size, centre[0]), np.full(used.size, centre[1])) > max_radius_km
    keep = ~far[rows].any(axis=1)
    n = int((~keep).sum())
    return keep, {**info, "dropped": n, "fraction": round(n / rows.shape[0], 6)}


def pseudo_bs(lat: np.ndarray, lon: np.ndarray, spacing_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo BS of the given (used) locations: occupied ``spacing_m`` squares, at their locations' centroid.

    Returns (bs_lat (B,), bs_lon (B,), bs of each location (n,) int32); BS numbered row-major from the SW.
    """
    lat0, lon0 = float(lat.min()), float(lon.min())
    y, x = schema.latlon_to_metres(lat, lon, lat0, lon0)
    r = np.floor(y / spacing_m).astype(np.int64)
    c = np.floor(x / spacing_m).astype(np.int64)
    key = r * (int(c.max()) + 1) + c
    uniq, of = np.unique(key, return_inverse=True)
    counts = np.bincount(of)
    by = np.bincount(of, weights=y) / counts
    bx = np.bincount(of, weights=x) / counts
    bs_lat, bs_lon = schema.metres_to_latlon(by, bx, lat0, lon0)
    return bs_lat, bs_lon, of.astype(np.int32)


def nearest_bs(lat: np.ndarray, lon: np.ndarray, ids: np.ndarray, bs_lat: np.ndarray, bs_lon: np.ndarray, max_km: float, where: str) -> np.ndarray:
    """Nearest BS (great-circle) of each location; refuse when one is farther than ``max_km`` from every BS."""
    tree = cKDTree(_unit(bs_lat, bs_lon))
    chord, idx = tree.query(_unit(lat, lon))
    dist = 2 * EARTH_KM * np.arcsin(np.clip(chord / 2, 0, 1))
    far = dist > max_km
    if far.any():
        i = int(np.argmax(dist))
        raise InputDataError(
            f"{where}: {int(far.sum())} of {lat.size} visited locations are farther than {max_km:g} km from every base station "
            f"(worst: location {int(ids[i])} at {lat[i]:.4f}, {lon[i]:.4f} is {dist[i]:.1f} km from the nearest); "
            "are the BS coordinates for the same city as the trajectories?"
        )
    return idx.astype(np.int32)


def build_store(
    *,
    fmt: str,
    city: str,
    loc_lat: np.ndarray,
    loc_lon: np.ndarray,
    rows: np.ndarray,
    row_coords: dict[str, tuple],
    start: str | None,
    bs_coords: str | Path | None,
    bs_spacing_m: float,
    max_radius_km: float,
    max_bs_distance_km: float,
    users_attrs: dict,
    bs_vars: dict | None = None,
) -> tuple[xr.Dataset, xr.Dataset, list[Path]]:
    """Root (BS only) and users datasets of a trajectory source.

    loc_lat/loc_lon: (n_loc,) location table; rows: (U, 48) int location ids (one user-day per row);
    row_coords: extra per-row coordinates {name: (values (U,), attrs)}; bs_vars: optional root variables
    {name: function(loc_bs (n_loc,) BS per location, -1 = unused; B) -> (dims, values, attrs)}.
    Returns (root, users, extra files read).
    """
    U, S = rows.shape
    if S * schema.USER_STEP_MINUTES != 1440:
        raise InputDataError(f"{fmt}: rows have {S} slots; the users group stores days of {1440 // schema.USER_STEP_MINUTES} {schema.USER_STEP_MINUTES}-min slots")
    keep, region = region_rows(loc_lat, loc_lon, rows, max_radius_km)
    if not keep.any():
        raise InputDataError(f"{fmt}: every row visits a location farther than {max_radius_km} km from the median position; raise max_radius_km")
    if region["dropped"]:
        log.warning("%s: dropped %d of %d rows (%.1f%%) visiting locations over %s km from the centre (%.4f, %.4f)", fmt,
                    region["dropped"], U, 100 * region["fraction"], max_radius_km, region["centre_lat"], region["centre_lon"])
    rows = rows[keep]
    used = np.unique(rows)
    files: list[Path] = []
    loc_bs = np.full(loc_lat.size, -1, np.int32)
    if bs_coords is None:
        if not bs_spacing_m > 0:
            raise ConfigError(f"{fmt}: bs_spacing_m must be positive, got {bs_spacing_m}")
        bs_lat, bs_lon, of = pseudo_bs(loc_lat[used], loc_lon[used], bs_spacing_m)
        loc_bs[used] = of
        built_by = (f"pseudo BS: the occupied {bs_spacing_m:g} m squares of the visited locations (local metres from their SW corner), "
                    "each at the centroid of its distinct locations; no traffic")
    else:
        bs_lat, bs_lon = read_bs_csv(bs_coords)
        loc_bs[used] = nearest_bs(loc_lat[used], loc_lon[used], used, bs_lat, bs_lon, max_bs_distance_km, f"{fmt} on {bs_coords}")
        files.append(Path(bs_coords))
        built_by = f"base stations of {Path(bs_coords).name} (all rows, in file order); each location -> nearest BS (great-circle, <= {max_bs_distance_km:g} km); no traffic"
    B = bs_lat.size
    lat0, lon0 = float(bs_lat.min()), float(bs_lon.min())
    by, bx = schema.latlon_to_metres(bs_lat, bs_lon, lat0, lon0)
    m = {"units": "m"}
    root = xr.Dataset(
        {name: fn(loc_bs, B) for name, fn in (bs_vars or {}).items()},
        coords={
            "bs": ("bs", np.arange(B, dtype=np.int32)),
            "bs_y": ("bs", by, {**m, "long_name": "metres north of the BS set's SW corner"}),
            "bs_x": ("bs", bx, {**m, "long_name": "metres east of the BS set's SW corner"}),
            "bs_lat": ("bs", bs_lat.astype(np.float64), {"units": "degrees_north"}),
            "bs_lon": ("bs", bs_lon.astype(np.float64), {"units": "degrees_east"}),
        },
    )
    root.attrs = C.store_attrs(
        city=city, lat0=lat0, lon0=lon0, pixel_size_m=None, time_step_minutes=schema.USER_STEP_MINUTES,
        levels_present=[], levels_built_by={"bs": built_by}, georeferenced=True,
        store_kind="users-only: base stations + the users group; no traffic levels",
    )
    t0, nominal = C.parse_start(start, C.NOMINAL_START, fmt)
    users = xr.Dataset(
        {
            "trajectory": (("user", "time"), loc_bs[rows].astype(np.int32), {"long_name": "serving BS index (into root bs)"}),
            "location": (("user", "time"), rows.astype(np.int32), {"long_name": "source location id (index into loc_lat/loc_lon)"}),
            "loc_lat": (("loc",), loc_lat.astype(np.float64), {"units": "degrees_north", "long_name": "source location table"}),
            "loc_lon": (("loc",), loc_lon.astype(np.float64), {"units": "degrees_east"}),
            "loc_bs": (("loc",), loc_bs, {"long_name": "BS of each source location (-1 = not visited by a kept row)"}),
        },
        coords={
            "user": ("user", np.arange(rows.shape[0], dtype=np.int32), {"long_name": "one user-day (source row)"}),
            "time": ("time", C.time_axis(t0, schema.USER_STEP_MINUTES, S)),
            **{name: ("user", np.asarray(vals)[keep], attrs) for name, (vals, attrs) in row_coords.items()},
        },
    )
    users.attrs = {
        "time_step_minutes": schema.USER_STEP_MINUTES,
        "user_definition": "one row = one user-day; days of one person are not linked (the source has no dates)",
        "region": store_attrs_json(region),
        **C.time_attrs(nominal, "every row is a day starting at 00:00" if nominal else "every row is a day starting at --start"),
        **{k: (store_attrs_json(v) if isinstance(v, (dict, list)) else v) for k, v in users_attrs.items()},
    }
    log.info("%s: %d user-days x %d slots on %d BS (%d locations used)", fmt, rows.shape[0], S, B, used.size)
    return root, users, files
