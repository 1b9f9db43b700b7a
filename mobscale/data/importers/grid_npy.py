"""``grid-npy``: a traffic array on a regular grid stored as ``.npy``.

Accepted shapes: (T, N) or (T, N, 1) with ``--layout HxW`` (N = H*W, the cell axis row-major:
k = row * W + col), or (T, H, W) (``--layout``, if given, must agree). A second source, or the sibling
``<stem>_ts.npy`` when present, holds per-step (day-of-week, slot-of-day) pairs, e.g. NPDiff's
``MobileBJ_ts.npy`` (168, 2) (day 0 is taken as Monday; the source does not say).

Negative values are not traffic (e.g. the z-scored Milan mini arrays): they are refused unless
``negative="shift"`` (subtract the global minimum: a monotone map to >= 0, *not* traffic volume; the
shift is recorded in ``attrs["value_transform"]``) or ``negative="clip"`` (set negatives to 0).

Store layout: a grid store. Source row 0 is stored at the southern edge (y index 0); the source's
geographic orientation and position are unknown, so the frame is nominal (``georeferenced`` False,
``lat0``/``lon0``/``pixel_size_m`` options, default 0, 0, 50 m) unless those options are given. Odd H or W is
zero-padded north/east (``observed`` mask). grid100 = 2x2 pixels, pseudo cells = 2x2, pseudo BS = 4x4.
Time: step from the timestamps file (1440 / slots per day) or ``--step-minutes``; start from ``--start``, or
the nominal week (Monday 2001-01-01) aligned to the first (day-of-week, slot).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobscale.data.importers import _common as C
from mobscale.errors import ConfigError, InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)


def load_npy(path: Path) -> np.ndarray:
    C.need_file(path, "numpy array")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputDataError(f"{path}: not a numpy .npy array without pickles ({e})") from None


def read_timestamps(path: Path, T: int) -> tuple[np.ndarray, int]:
    """(T, 2) int (day-of-week, slot) checked to advance one slot per step; returns (ts, slots per day)."""
    ts = load_npy(path)
    if ts.ndim != 2 or ts.shape[1] != 2 or ts.shape[0] != T:
        raise InputDataError(f"{path}: timestamps of shape {ts.shape}, expected ({T}, 2) = (day-of-week, slot) per step")
    if not np.issubdtype(ts.dtype, np.number) or not np.isfinite(ts).all() or (ts != np.round(ts)).any():
        raise InputDataError(f"{path}: timestamps must be whole numbers")
    ts = ts.astype(np.int64)
    dow, slot = ts[:, 0], ts[:, 1]
    if dow.min() < 0 or dow.max() > 6:
        i = int(np.argmax((dow < 0) | (dow > 6)))
        raise InputDataError(f"{path}: row {i}: day-of-week {dow[i]} outside 0..6")
    per_day = int(slot.max()) + 1
    if slot.min() < 0:
        raise InputDataError(f"{path}: row {int(np.argmax(slot < 0))}: negative slot")
    k = dow * per_day + slot
    d = np.diff(k) % (7 * per_day)
    if (d != 1).any():
        i = int(np.argmax(d != 1))
        what = "duplicate" if d[i] == 0 else "missing"
        raise InputDataError(f"{path}: rows {i} -> {i + 1}: {what} timestamp(s) ({tuple(ts[i])} then {tuple(ts[i + 1])}, {per_day} slots per day)")
    return ts, per_day


def import_grid_npy(
    sources: list[Path],
    *,
    layout: tuple[int, int] | None = None,
    city: str | None = None,
    step_minutes: int | None = None,
    start: str | None = None,
    negative: str = "refuse",
    lat0: float | None = None,
    lon0: float | None = None,
    pixel_size_m: float | None = None,
) -> C.Built:
    """Import one grid array (+ optional timestamps file)."""
    if negative not in ("refuse", "shift", "clip"):
        raise ConfigError(f"grid-npy: negative='{negative}' (choose refuse, shift or clip)")
    paths = [Path(s) for s in sources]
    ts_paths = [p for p in paths if p.stem.endswith("_ts")]
    arrays = [p for p in paths if p not in ts_paths]
    if len(arrays) != 1 or len(ts_paths) > 1:
        raise ConfigError(f"grid-npy takes one array file and optionally its _ts file, got {[str(p) for p in paths]}")
    path = arrays[0]
    if not ts_paths and (sib := path.with_name(path.stem + "_ts.npy")).is_file():
        ts_paths = [sib]
    a = load_npy(path)
    source_shape = list(a.shape)
    if not np.issubdtype(a.dtype, np.number):
        raise InputDataError(f"{path}: dtype {a.dtype} is not numeric")
    if a.ndim == 3 and a.shape[2] == 1 and layout is not None:
        a = a[:, :, 0]
    if a.ndim == 2:
        if layout is None:
            raise ConfigError(f"{path}: array of shape {a.shape} (time, cells) needs --layout HxW (row-major cell axis)")
        H, W = layout
        if H * W != a.shape[1]:
            raise ConfigError(f"{path}: --layout {H}x{W} = {H * W} cells but the array has {a.shape[1]}")
        a = a.reshape(a.shape[0], H, W)
    elif a.ndim == 3:
        if layout is not None and tuple(layout) != a.shape[1:]:
            raise ConfigError(f"{path}: --layout {layout[0]}x{layout[1]} but the array is (time, {a.shape[1]}, {a.shape[2]})")
    else:
        raise InputDataError(f"{path}: array of shape {a.shape}; expected (time, cells), (time, cells, 1) or (time, H, W)")
    T, H, W = a.shape
    if T == 0 or H == 0 or W == 0:
        raise InputDataError(f"{path}: empty array of shape {a.shape}")
    a = a.astype(np.float64)
    C.check_values(a, str(path), ("time", "row", "col"), allow_negative=True)
    transform = "none"
    if (a < 0).any():
        i = tuple(np.argwhere(a < 0)[0])
        lo = float(a.min())
        if negative == "refuse":
            raise InputDataError(
                f"{path}: {int((a < 0).sum())} negative values (min {lo:.4g}, first at time={i[0]}, row={i[1]}, col={i[2]}); "
                "these are not traffic volumes (z-scored data?); to import them anyway set the option negative='shift' "
                "(subtract the minimum; CLI --option negative=shift) or negative='clip' (negatives -> 0)"
            )
        if negative == "shift":
            a = a - lo
            transform = f"shifted: stored = source - ({lo!r}) so the minimum is 0; NOT traffic volume"
        else:
            transform = f"clipped: {int((a < 0).sum())} negative source values set to 0"
            a = np.maximum(a, 0.0)
        log.warning("grid-npy %s: negative values %s", path.name, transform)
    if ts_paths:
        ts, per_day = read_timestamps(ts_paths[0], T)
        if 1440 % per_day:
            raise InputDataError(f"{ts_paths[0]}: {per_day} slots per day do not divide a day into whole minutes")
        ts_step = 1440 // per_day
        if step_minutes is not None and step_minutes != ts_step:
            raise ConfigError(f"--step-minutes {step_minutes} disagrees with {ts_paths[0].name} ({per_day} slots per day = {ts_step} min)")
        step = C.check_step(ts_step, "grid-npy")
        default_start = C.nominal_start_for(ts[0, 0], ts[0, 1], step)
    else:
        if step_minutes is None:
            raise ConfigError(f"{path}: no timestamps file ({path.stem}_ts.npy); pass --step-minutes")
        step = C.check_step(step_minutes, "grid-npy")
        ts, default_start = None, C.NOMINAL_START
    t0, nominal = C.parse_start(start, default_start, "grid-npy")
    time = C.time_axis(t0, step, T)
    traffic, observed = C.pad_to_even(a.astype(np.float32))
    H2, W2 = traffic.shape[1:]
    georef = lat0 is not None and lon0 is not None and pixel_size_m is not None
    size = float(pixel_size_m) if pixel_size_m is not None else 50.0
    la0 = float(lat0) if lat0 is not None else 0.0
    lo0 = float(lon0) if lon0 is not None else 0.0
    y, x, lat, lon = C.regular_axes(H2, W2, size, la0, lo0)
    coords = {}
    if ts is not None:
        coords["day_of_week"] = ("time", ts[:, 0].astype(np.int16), {"long_name": "source day of week (0 taken as Monday)"})
        coords["slot_of_day"] = ("time", ts[:, 1].astype(np.int16), {"long_name": "source slot of the day"})
    ds = C.grid_dataset(
        traffic, time, y=y, x=x, lat=lat, lon=lon, hierarchy=C.block_hierarchy(H2, W2, 2, 4),
        traffic_attrs={"units": "1", "long_name": "traffic per unit per time step (source units undocumented)"},
        observed=observed if (H2, W2) != (H, W) else None, coords=coords,
    )
    ds.attrs = C.store_attrs(
        city=city or path.stem,
        lat0=la0, lon0=lo0, pixel_size_m=size, time_step_minutes=step,
        levels_present=["bs", "cell", "grid100", "grid50"],
        levels_built_by={
            "grid50": f"source grid cells ({H}x{W}{', zero-padded to even' if (H2, W2) != (H, W) else ''}; source row 0 stored at y index 0)",
            "grid100": "sum of 2x2 source cells",
            "cell": "pseudo cells: sum of 2x2 source cells",
            "bs": "pseudo BS: sum of 4x4 source cells (partial at the north/east edge)",
        },
        georeferenced=georef,
        geometry_note=("from the lat0/lon0/pixel_size_m options" if georef else
                       "nominal: the source has no coordinates; lat/lon and pixel size are placeholders, not positions"),
        value_transform=transform,
        source_shape=source_shape,
        **C.time_attrs(nominal, "aligned to the first (day-of-week, slot), day 0 = Monday" if nominal and ts is not None else ""),
    )
    files = [path] + ts_paths
    log.info("grid-npy: %s (%d steps, %dx%d) -> %dx%d grid, %d-min step", path.name, T, H, W, H2, W2, step)
    return C.Built(ds, files, chunks=C.day_chunks(step))
