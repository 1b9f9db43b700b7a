"""``foursquare``: TrajSynVAE's Foursquare NYC check-ins (CSV: user, traj, loc, tim_min, stay_min) + the location
table (.npz: ``gps_latlng`` (n, 2) centres of a 0.01 deg grid, optional ``poi_counts`` (n, K)).

Sources: the CSV and the .npz (either order), or a folder holding exactly one of each.

Rows -> users: each (user, traj) is one day of check-ins (tim_min = minute of the day, increasing) and becomes
one user (a user-day; ``users/source_user`` and ``users/source_traj`` keep the ids). Its 48 half-hour slots
hold the location of the latest check-in before the slot ends (forward fill: a user stays where they last
checked in until the next check-in, whatever ``stay_min`` says, since check-ins are sparse); slots before the
first check-in of the day take the first check-in's location (back fill). ``stay_min`` is not used.

Store layout, region filter and BS mapping: see :mod:`mobscale.data.importers._trajectories`. With
``poi_counts`` the root also holds ``bs_poi`` (bs, venue_category): the summed venue counts of the visited
locations assigned to each BS (category names undocumented: venue_000, venue_001, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mobscale.data import schema
from mobscale.data.importers import _common as C
from mobscale.data.importers import _trajectories as TR
from mobscale.data.importers.stkdiff import load_npz
from mobscale.errors import ConfigError, InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)

COLUMNS = ("user", "traj", "loc", "tim_min")
SLOTS = 1440 // schema.USER_STEP_MINUTES


def find_sources(sources: list[Path]) -> tuple[Path, Path]:
    files: list[Path] = []
    for s in sources:
        s = Path(s)
        if s.is_dir():
            files += sorted(p for p in s.iterdir() if p.suffix in (".csv", ".npz"))
        elif s.exists():
            files.append(s)
        else:
            raise InputDataError(f"{s}: no such file or folder")
    csv = [p for p in files if p.suffix == ".csv"]
    npz = [p for p in files if p.suffix == ".npz"]
    if len(csv) != 1 or len(npz) != 1:
        raise ConfigError(f"foursquare needs one check-in .csv and one location .npz, got {[str(p) for p in files]}")
    return csv[0], npz[0]


def read_checkins(path: Path, n_loc: int) -> pd.DataFrame:
    """Checked check-ins: integer user/traj/loc (loc < n_loc), tim_min in [0, 1440), increasing within a day."""
    C.need_file(path, "check-in CSV")
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as e:
        raise InputDataError(f"{path}: {e}") from None
    except pd.errors.EmptyDataError:
        raise InputDataError(f"{path}: empty file") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputDataError(f"{path}: missing column(s) {missing} (has {list(df.columns)}; expected {list(COLUMNS)} [+ stay_min])")
    if df.empty:
        raise InputDataError(f"{path}: no check-ins (header only)")
    a = C.numeric_columns(df[list(COLUMNS)], path, first_line=2)
    line = np.arange(2, a.shape[0] + 2)
    empty = np.isnan(a)
    if empty.any():
        i, j = np.argwhere(empty)[0]
        raise InputDataError(f"{path}: line {line[i]}: column '{COLUMNS[j]}' is empty")
    ints = a[:, :3]
    bad = ints != np.round(ints)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputDataError(f"{path}: line {line[i]}: column '{COLUMNS[j]}' must be an integer, got {ints[i, j]}")
    loc = a[:, 2].astype(np.int64)
    bad = (loc < 0) | (loc >= n_loc)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputDataError(f"{path}: line {line[i]}: loc {loc[i]} outside 0..{n_loc - 1} (the location table)")
    tim = a[:, 3]
    bad = (tim < 0) | (tim >= 1440)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputDataError(f"{path}: line {line[i]}: tim_min {tim[i]} is not a minute of the day (0 <= tim_min < 1440)")
    out = pd.DataFrame({"user": a[:, 0].astype(np.int64), "traj": a[:, 1].astype(np.int64), "loc": loc, "tim": tim, "line": line})
    prev = out.groupby(["user", "traj"], sort=False)["tim"].shift()
    back = (out["tim"] <= prev).to_numpy()
    if back.any():
        i = int(np.argmax(back))
        what = "duplicate" if out["tim"].iloc[i] == prev.iloc[i] else "earlier"
        raise InputDataError(f"{path}: line {line[i]}: {what} tim_min {out['tim'].iloc[i]} after {prev.iloc[i]} in user {out['user'].iloc[i]}, traj {out['traj'].iloc[i]} (check-ins of a day must be in time order)")
    return out


def day_slots(tim: np.ndarray, loc: np.ndarray) -> np.ndarray:
    """(48,) location per half-hour of one day: the latest check-in before each slot's end, back-filled."""
    ends = (np.arange(SLOTS) + 1) * schema.USER_STEP_MINUTES
    idx = np.searchsorted(tim, ends, side="left") - 1
    return loc[np.maximum(idx, 0)]


def import_foursquare(
    sources: list[Path],
    *,
    city: str | None = None,
    start: str | None = None,
    bs_coords: str | Path | None = None,
    bs_spacing_m: float = 500.0,
    max_radius_km: float = 50.0,
    max_bs_distance_km: float = 5.0,
) -> C.Built:
    """Import Foursquare check-ins into a users-only store of half-hourly user-day trajectories."""
    csv, npz = find_sources(sources)
    z = load_npz(npz)
    if "gps_latlng" not in z:
        raise InputDataError(f"{npz}: no 'gps_latlng' array (has {sorted(z)})")
    g = np.asarray(z["gps_latlng"], dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != 2 or g.shape[0] == 0:
        raise InputDataError(f"{npz}: gps_latlng has shape {g.shape}, expected (locations, 2)")
    TR.check_latlon(g[:, 0], g[:, 1], f"{npz}: gps_latlng", first_line=0, unit="row")
    df = read_checkins(csv, g.shape[0])
    groups = df.groupby(["user", "traj"], sort=True)
    rows = np.empty((groups.ngroups, SLOTS), np.int64)
    src_user = np.empty(groups.ngroups, np.int64)
    src_traj = np.empty(groups.ngroups, np.int64)
    for k, ((u, t), grp) in enumerate(groups):
        rows[k] = day_slots(grp["tim"].to_numpy(), grp["loc"].to_numpy())
        src_user[k], src_traj[k] = u, t
    bs_vars = {}
    if "poi_counts" in z:
        poi = np.asarray(z["poi_counts"])
        if poi.ndim != 2 or poi.shape[0] != g.shape[0]:
            raise InputDataError(f"{npz}: poi_counts has shape {poi.shape}, expected ({g.shape[0]}, categories)")
        C.check_values(poi.astype(np.float64), f"{npz}: poi_counts", ("location", "category"))

        def bs_poi(loc_bs: np.ndarray, B: int):
            used = loc_bs >= 0
            out = np.zeros((B, poi.shape[1]), np.float64)
            np.add.at(out, loc_bs[used], poi[used].astype(np.float64))
            return (("bs", "venue_category"), out.astype(np.float32),
                    {"units": "1", "long_name": "venue counts of the visited source locations served by the BS (category names undocumented)"})

        bs_vars["bs_poi"] = bs_poi
    root, users, extra = TR.build_store(
        fmt="foursquare", city=city or csv.parent.name, loc_lat=g[:, 0], loc_lon=g[:, 1], rows=rows,
        row_coords={
            "source_user": (src_user, {"long_name": "Foursquare user id"}),
            "source_traj": (src_traj, {"long_name": "day (traj) index of the user in the source"}),
        },
        start=start, bs_coords=bs_coords, bs_spacing_m=bs_spacing_m, max_radius_km=max_radius_km,
        max_bs_distance_km=max_bs_distance_km, bs_vars=bs_vars,
        users_attrs={"fill_rule": "slot = latest check-in before the slot end (forward fill); before the first check-in: the first check-in (back fill); stay_min unused",
                     "checkins": int(len(df))},
    )
    if "bs_poi" in root:
        root = root.assign_coords(venue_category=("venue_category", np.array([f"venue_{k:03d}" for k in range(root.sizes["venue_category"])], dtype=object)))
    return C.Built(root, [csv, npz, *extra], users=users)
