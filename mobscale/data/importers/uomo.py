"""``uomo``: UoMo's China Mobile windows (``uomo_Traffic{NJ_15min,NC_30min}.npz``).

Source: per split ``s`` in train/val/test, ``traffic_s`` and ``users_s`` (N, L, 4, 4) (L = 64 steps over a 4x4
patch of cells), ``poi_s`` (N, C, 4, 4) POI counts (category names undocumented) and ``timestamps_s`` (N, L, 2)
= (day-of-week, slot of day). The windows are overlapping crops of a few continuous patch series: in the
shared release every patch has one window starting at each slot of one week (NJ: 6 train patches, 1 val,
1 test; NC: 28/4/5), and consecutive windows agree exactly on their overlap.

So the importer *stitches* the windows back into one continuous series per patch (no window is a store of its
own and no data is duplicated): windows are grouped by start, and a window continues the patch whose
previous window has the same POI and the same traffic and users on the overlap. Every patch of a split must
cover the same starts (a uniform stride < L); the result is one series of (starts - 1) * stride + L steps per
patch (NJ: 735 steps of 15 min = 7 days + 63 steps). Anything inconsistent (windows that continue no patch,
two patches identical on an overlap, uneven starts, steps that do not advance one slot) is an error.

Store layout (a grid store on a *mosaic*; geometry nominal, ``georeferenced`` False):

* each patch is one 4x4 tile; tiles are laid out row-major from the SW corner on a near-square mosaic
  (``ceil(sqrt(P))`` tiles per row); tile adjacency is NOT geographic (cut training windows on tile boundaries,
  e.g. ``windows.patch = 4``); unused mosaic tiles are zero padding (``observed`` = 0);
* patch row 0 is stored at the tile's southern edge (the source orientation is undocumented);
* traffic -> ``traffic_grid50`` (the finest level: one UoMo cell per pixel, ``pixel_size_m`` nominal),
  grid100 = 2x2 cells, pseudo cells = 2x2 cells, pseudo BS = the whole 4x4 tile, so ``bs`` = tile index;
* users -> ``population`` (time, y, x); poi -> ``poi`` (poi_category, y, x) with names poi_00, poi_01, ...;
* ``bs_split`` (bs) CF flags (train, val, test, padding), ``bs_patch`` (bs) index of the patch within its split
  (patches ordered by the position of their first window in the source),
  ``bs_poi_twin`` (bs) the first other tile with identical POI (-1 if none: e.g. NJ val/test patches repeat
  the POI of a train patch although their traffic differs);
* time: one shared axis (every patch of every imported split must start at the same (day-of-week, slot) and
  have the same length, true for the release), from ``--start`` or the nominal Monday 2001-01-01 aligned to
  the first (day-of-week, slot) with day 0 = Monday (undocumented by UoMo); ``day_of_week``/``slot_of_day``
  (time) keep the source values. ``--split train|val|test|all`` (default all).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobscale.data.importers import _common as C
from mobscale.data.importers.stkdiff import load_npz
from mobscale.errors import ConfigError, InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_ATTRS = {"long_name": "UoMo split of the tile's patch", "flag_values": [0, 1, 2, 3],
               "flag_meanings": "train val test padding", "units": "1"}


@dataclass
class Patch:
    """One stitched patch: traffic/users (S, h, w) float32, poi (C, h, w), first absolute slot, window count."""

    traffic: np.ndarray
    users: np.ndarray | None
    poi: np.ndarray
    start_slot: int
    windows: int


def slots_per_day(path: Path, step_minutes: int | None, max_slot: int) -> int:
    """From --step-minutes, else the file name (``..._15min.npz``), else the largest slot + 1."""
    m = re.search(r"(\d+)min", path.stem)
    if step_minutes is not None:
        step = step_minutes
    elif m:
        step = int(m.group(1))
    else:
        return max_slot + 1
    if 1440 % step:
        raise ConfigError(f"{path}: a {step}-min step does not divide a day")
    if max_slot >= 1440 // step:
        raise InputDataError(f"{path}: slot {max_slot} does not exist at {step} min ({1440 // step} slots per day)")
    return 1440 // step


def _key(*arrays: np.ndarray) -> bytes:
    return b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)


def stitch(traffic: np.ndarray, users: np.ndarray | None, poi: np.ndarray, abs_slot: np.ndarray, week: int, where: str) -> list[Patch]:
    """Chain overlapping windows into continuous patch series.

    traffic/users: (N, L, h, w); poi: (N, C, h, w); abs_slot: (N, L) slot of the week (day * per_day + slot).
    """
    N, L = traffic.shape[:2]
    d = np.diff(abs_slot, axis=1) % week
    if (d != 1).any():
        i, j = np.argwhere(d != 1)[0]
        raise InputDataError(f"{where}: window {i}: timestamps do not advance one slot at step {j + 1}")
    start = abs_slot[:, 0]
    starts, counts = np.unique(start, return_counts=True)
    if starts.size > 1:
        # starts live on the circular week: begin after the widest gap, so a series running from Sunday night
        # into Monday is ordered in time, then unwrap to a linear slot count
        # (when the wrap-around gap is as wide as any, as for windows at every slot of the week, keep Monday first)
        gaps = np.diff(np.append(starts, starts[0] + week))
        g = 0 if gaps[-1] >= gaps.max() else int(np.argmax(gaps)) + 1
        order = np.roll(np.arange(starts.size), -g)
        lin = starts[order] + week * (np.arange(starts.size) >= starts.size - g) * (g > 0)
        start = start + week * (start < starts[order][0])
        starts, counts = lin, counts[order]
    if (counts != counts[0]).any():
        k = int(np.argmax(counts != counts[0]))
        raise InputDataError(f"{where}: {counts[0]} windows start at week slot {starts[0]} but {counts[k]} at {starts[k]}: patches do not cover the same starts")
    stride = int(starts[1] - starts[0]) if starts.size > 1 else L
    if starts.size > 1 and ((np.diff(starts) != stride).any() or stride >= L):
        raise InputDataError(f"{where}: window starts are not evenly spaced by less than the window length {L} (strides {np.unique(np.diff(starts)).tolist()})")
    by_start = {int(s): np.flatnonzero(start == s) for s in starts}
    u = users if users is not None else np.zeros((N, 0))
    chains = [[int(i)] for i in by_start[int(starts[0])]]
    for s in starts[1:]:
        tails: dict[bytes, list[int]] = {}
        for c, chain in enumerate(chains):
            a = chain[-1]
            tails.setdefault(_key(poi[a], traffic[a, stride:], u[a, stride:] if users is not None else u[a]), []).append(c)
        for b in by_start[int(s)]:
            k = _key(poi[b], traffic[b, : L - stride], u[b, : L - stride] if users is not None else u[b])
            cand = tails.get(k)
            if not cand:
                raise InputDataError(f"{where}: window {b} (week slot {int(s) % week}) continues no window starting {stride} slot(s) earlier: the windows do not overlap consistently")
            if len(cand) > 1:
                raise InputDataError(f"{where}: windows of {len(cand)} patches are identical on their overlap before week slot {int(s) % week}: cannot tell the patches apart")
            chains[cand.pop()].append(int(b))
    S = (starts.size - 1) * stride + L
    patches = []
    for chain in chains:
        tr = np.empty((S, *traffic.shape[2:]), dtype=np.float32)
        us = np.empty_like(tr) if users is not None else None
        for n, w in enumerate(chain):
            tr[n * stride : n * stride + L] = traffic[w]
            if us is not None:
                us[n * stride : n * stride + L] = users[w]
        patches.append(Patch(tr, us, poi[chain[0]].astype(np.float32), int(starts[0]) % week, len(chain)))
    return patches


def read_split(z: dict, path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Shapes and values of one split checked. Returns (traffic (N, L, h, w), users (same) or None,
    poi (N, C, h, w), timestamps (N, L, 2) int64)."""
    need = [f"traffic_{split}", f"timestamps_{split}", f"poi_{split}"]
    missing = [k for k in need if k not in z]
    if missing:
        raise InputDataError(f"{path}: missing array(s) {missing} for split '{split}' (has {sorted(z)})")
    tr, ts, poi = z[f"traffic_{split}"], z[f"timestamps_{split}"], z[f"poi_{split}"]
    us = z.get(f"users_{split}")
    if tr.ndim != 4 or tr.shape[0] == 0:
        raise InputDataError(f"{path}: traffic_{split} has shape {tr.shape}, expected (windows, steps, h, w)")
    N, L, h, w = tr.shape
    if ts.shape != (N, L, 2):
        raise InputDataError(f"{path}: timestamps_{split} has shape {ts.shape}, expected {(N, L, 2)}")
    if poi.ndim != 4 or poi.shape[0] != N or poi.shape[2:] != (h, w):
        raise InputDataError(f"{path}: poi_{split} has shape {poi.shape}, expected ({N}, categories, {h}, {w})")
    if us is not None and us.shape != tr.shape:
        raise InputDataError(f"{path}: users_{split} has shape {us.shape}, expected {tr.shape}")
    win = ("window", "step", "row", "col")
    for name, a, dims in ((f"traffic_{split}", tr, win), (f"users_{split}", us, win), (f"poi_{split}", poi, ("window", "category", "row", "col"))):
        if a is not None:
            C.check_values(np.asarray(a, dtype=np.float64), f"{path}: {name}", dims)
    tsi = ts.astype(np.int64)
    if (tsi != ts).any() or tsi[..., 0].min() < 0 or tsi[..., 0].max() > 6 or tsi[..., 1].min() < 0:
        raise InputDataError(f"{path}: timestamps_{split} must be whole (day-of-week 0..6, slot >= 0) pairs")
    return tr, us, poi, tsi


def import_uomo(
    sources: list[Path],
    *,
    split: str | None = None,
    city: str | None = None,
    step_minutes: int | None = None,
    start: str | None = None,
    lat0: float | None = None,
    lon0: float | None = None,
    pixel_size_m: float | None = None,
) -> C.Built:
    """Import one UoMo .npz: split = train | val | test | all (default all)."""
    if len(sources) != 1:
        raise ConfigError(f"uomo takes one .npz file, got {len(sources)}")
    split = split or "all"
    if split not in (*SPLITS, "all"):
        raise ConfigError(f"uomo: --split '{split}' (choose train, val, test or all)")
    path = Path(sources[0])
    z = load_npz(path)
    wanted = list(SPLITS) if split == "all" else [split]
    raw = {s: read_split(z, path, s) for s in wanted}
    max_slot = max(int(r[3][..., 1].max()) for r in raw.values())
    per_day = slots_per_day(path, step_minutes, max_slot)
    step = C.check_step(1440 // per_day, "uomo")
    week = 7 * per_day
    patches: list[tuple[str, int, Patch]] = []
    for s, (tr, us, poi, ts) in raw.items():
        got = stitch(tr, us, poi, ts[..., 0] * per_day + ts[..., 1], week, f"{path}: {s}")
        patches += [(s, i, p) for i, p in enumerate(got)]
        log.info("uomo %s: %d windows -> %d patch series of %d steps", s, tr.shape[0], len(got), got[0].traffic.shape[0])
    first = patches[0][2]
    for s, i, p in patches:
        if p.traffic.shape != first.traffic.shape or p.start_slot != first.start_slot or p.poi.shape != first.poi.shape:
            raise InputDataError(
                f"{path}: split '{s}' patch {i} covers {p.traffic.shape[0]} steps from week slot {p.start_slot} but split "
                f"'{patches[0][0]}' covers {first.traffic.shape[0]} from {first.start_slot}: import the splits separately (--split)"
            )
    if any(p.users is None for _, _, p in patches) and any(p.users is not None for _, _, p in patches):
        raise InputDataError(f"{path}: some splits have users_* arrays and others not")
    P = len(patches)
    S, h, w = first.traffic.shape
    n_poi = first.poi.shape[0]
    ncols = math.ceil(math.sqrt(P))
    nrows = math.ceil(P / ncols)
    if h % 2 or w % 2:
        raise InputDataError(f"{path}: patches of {h}x{w} cells are not even (grid100 = 2x2)")
    H, W = nrows * h, ncols * w
    traffic = np.zeros((S, H, W), np.float32)
    pop = np.zeros((S, H, W), np.float32) if first.users is not None else None
    poi = np.zeros((n_poi, H, W), np.float32)
    observed = np.zeros((H, W), np.int8)
    n_tiles = nrows * ncols
    bs_split = np.full(n_tiles, 3, np.int8)
    bs_patch = np.full(n_tiles, -1, np.int32)
    for t, (s, i, p) in enumerate(patches):
        r, c = divmod(t, ncols)
        sl = (slice(r * h, (r + 1) * h), slice(c * w, (c + 1) * w))
        traffic[:, sl[0], sl[1]] = p.traffic
        if pop is not None:
            pop[:, sl[0], sl[1]] = p.users
        poi[:, sl[0], sl[1]] = p.poi
        observed[sl] = 1
        bs_split[t] = SPLITS.index(s)
        bs_patch[t] = i
    twin = np.full(n_tiles, -1, np.int32)
    keys = [p.poi.tobytes() for _, _, p in patches]
    for a in range(P):
        for b in range(P):
            if a != b and keys[a] == keys[b]:
                twin[a] = b
                break
    abs0 = first.start_slot + np.arange(S)
    dow = (abs0 // per_day) % 7
    slot = abs0 % per_day
    t0, nominal = C.parse_start(start, C.nominal_start_for(dow[0], slot[0], step), "uomo")
    georef = lat0 is not None and lon0 is not None and pixel_size_m is not None
    size = float(pixel_size_m) if pixel_size_m is not None else 50.0
    la0 = float(lat0) if lat0 is not None else 0.0
    lo0 = float(lon0) if lon0 is not None else 0.0
    y, x, lat, lon = C.regular_axes(H, W, size, la0, lo0)
    # pseudo BS = one whole tile, so the block hierarchy's BS index equals the tile index
    hier = C.block_hierarchy(H, W, cell_px=2, bs_px=h) if h == w else None
    if hier is None:
        raise InputDataError(f"{path}: patches of {h}x{w} cells are not square")
    data_vars = {"poi": (("poi_category", "y", "x"), poi, {"units": "1", "long_name": "POI count per cell (UoMo; category names undocumented)"})}
    if pop is not None:
        data_vars["population"] = (("time", "y", "x"), pop, {"units": "1", "long_name": "users present per cell per step (UoMo 'users'; units undocumented)"})
    coords = {
        "poi_category": ("poi_category", np.array([f"poi_{k:02d}" for k in range(n_poi)], dtype=object)),
        "day_of_week": ("time", dow.astype(np.int16), {"long_name": "source day of week (0 taken as Monday)"}),
        "slot_of_day": ("time", slot.astype(np.int16), {"long_name": f"source slot of the day ({per_day} per day)"}),
        "bs_split": ("bs", bs_split, dict(SPLIT_ATTRS)),
        "bs_patch": ("bs", bs_patch, {"long_name": "index of the stitched patch within its split, in order of its first window in the source (-1 = padding tile)"}),
        "bs_poi_twin": ("bs", twin, {"long_name": "another tile with identical POI counts (-1 = none)"}),
    }
    ds = C.grid_dataset(
        traffic, C.time_axis(t0, step, S), y=y, x=x, lat=lat, lon=lon, hierarchy=hier,
        traffic_attrs={"units": "1", "long_name": "traffic per unit per step (UoMo China Mobile; units undocumented)"},
        observed=observed if P < n_tiles else None, data_vars=data_vars, coords=coords,
    )
    ds.attrs = C.store_attrs(
        city=city or path.stem.replace("uomo_", ""),
        lat0=la0, lon0=lo0, pixel_size_m=size, time_step_minutes=step,
        levels_present=["bs", "cell", "grid100", "grid50"],
        levels_built_by={
            "grid50": f"UoMo cells of {h}x{w} patches stitched from overlapping {raw[wanted[0]][0].shape[1]}-step windows, laid out as a mosaic of tiles (not geographic)",
            "grid100": "sum of 2x2 cells",
            "cell": "pseudo cells: sum of 2x2 cells",
            "bs": f"pseudo BS: the whole {h}x{w} tile (one patch)",
        },
        georeferenced=georef,
        geometry_note=("from the lat0/lon0/pixel_size_m options; tiles are still a mosaic" if georef else
                       "nominal: UoMo has no coordinates; tiles form a mosaic whose adjacency is not geographic"),
        mosaic={"tiles": P, "tiles_per_row": ncols, "rows": nrows, "tile_cells": [h, w],
                "splits": {s: int(sum(1 for q in patches if q[0] == s)) for s in wanted}},
        windows={"length": int(raw[wanted[0]][0].shape[1]), "per_patch": first.windows, "split": split},
        **C.time_attrs(nominal, "aligned to the first (day-of-week, slot), day 0 = Monday" if nominal else ""),
    )
    return C.Built(ds, [path], chunks=C.day_chunks(step))
