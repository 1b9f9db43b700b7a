"""``stkdiff``: STK-Diff's base-station traffic (``beijing.npz``: ``bs_record`` (B, T) hourly traffic per BS,
``bs_kge`` (B, D) pretrained urban-KG embedding per BS).

Store layout (a BS-only store; the source has no coordinates and no grid):

* ``time`` (time): hourly (``--step-minutes`` to change), from ``--start`` or the nominal Monday 2001-01-01;
* ``bs`` (bs) int32 0..B-1 in source row order; no ``bs_x``/``bs_y``/``bs_lat``/``bs_lon`` (unknown);
* ``traffic_bs`` (time, bs) float32 (source float64; values up to ~3e7 keep 7 significant digits);
* ``bs_kg_embedding`` (bs, kg_dim) float32 when the source has ``bs_kge``;
* attrs ``levels_present = ["bs"]``, ``georeferenced = False``, ``crs``/``lat0``/``lon0``/``pixel_size_m`` = None.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import xarray as xr

from mobscale.data import schema
from mobscale.data.importers import _common as C
from mobscale.errors import ConfigError, InputDataError
from mobscale.log import get_logger

log = get_logger(__name__)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz (no pickles)."""
    C.need_file(path, "numpy .npz archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise InputDataError(f"{path}: not a numpy .npz archive without pickles ({e})") from None


def import_stkdiff(
    sources: list[Path],
    *,
    city: str | None = None,
    step_minutes: int | None = None,
    start: str | None = None,
) -> C.Built:
    """Import one STK-Diff .npz into a BS-only store."""
    if len(sources) != 1:
        raise ConfigError(f"stkdiff takes one .npz file, got {len(sources)}")
    path = Path(sources[0])
    z = load_npz(path)
    if "bs_record" not in z:
        raise InputDataError(f"{path}: no 'bs_record' array (has {sorted(z)})")
    rec = z["bs_record"]
    if rec.ndim != 2 or 0 in rec.shape:
        raise InputDataError(f"{path}: bs_record has shape {rec.shape}, expected (base stations, hours)")
    if not np.issubdtype(rec.dtype, np.number):
        raise InputDataError(f"{path}: bs_record dtype {rec.dtype} is not numeric")
    B, T = rec.shape
    C.check_values(rec.astype(np.float64), f"{path}: bs_record", ("bs", "hour"))
    step = C.check_step(step_minutes or 60, "stkdiff")
    t0, nominal = C.parse_start(start, C.NOMINAL_START, "stkdiff")
    data = {
        schema.TRAFFIC_VAR["bs"]: (("time", "bs"), rec.T.astype(np.float32),
                                   {"units": "1", "long_name": "traffic per BS per hour (STK-Diff; source units undocumented)"}),
    }
    if "bs_kge" in z:
        kge = z["bs_kge"]
        if kge.ndim != 2 or kge.shape[0] != B:
            raise InputDataError(f"{path}: bs_kge has shape {kge.shape}, expected ({B}, dim)")
        C.check_values(kge.astype(np.float64), f"{path}: bs_kge", ("bs", "dim"), allow_negative=True)
        data["bs_kg_embedding"] = (("bs", "kg_dim"), kge.astype(np.float32),
                                   {"units": "1", "long_name": "pretrained urban knowledge-graph embedding of the BS (STK-Diff)"})
    ds = xr.Dataset(
        data,
        coords={
            "time": ("time", C.time_axis(t0, step, T)),
            "bs": ("bs", np.arange(B, dtype=np.int32), {"long_name": "BS index = row of the source arrays"}),
        },
    )
    ds.attrs = C.store_attrs(
        city=city or path.stem,
        lat0=None, lon0=None, pixel_size_m=None, time_step_minutes=step,
        levels_present=["bs"],
        levels_built_by={"bs": "source BS traffic (bs_record); no grid or cell levels exist"},
        georeferenced=False,
        geometry_note="the source has no BS coordinates: bs_x/bs_y/bs_lat/bs_lon are absent",
        **C.time_attrs(nominal),
    )
    log.info("stkdiff: %d BS x %d steps of %d min%s", B, T, step, " + KG embeddings" if "bs_kge" in z else "")
    return C.Built(ds, [path], chunks={"time": max(1, min(T, 24 * 7 * 60 // step))})
