"""Opening and writing city stores (Zarr v3 through xarray), atomically.

Rules that every writer follows:
* output goes to a temporary sibling path and is renamed into place only when complete, so a crash or a
  bad input never leaves a half-written store under the requested name;
* an existing output is never replaced unless ``overwrite=True``;
* Zarr v3, ``consolidated=False`` on both write and open (v3 has no consolidated metadata in its spec);
* parallel writers first create a template (``write_template``), then each writes its own chunk-aligned
  region (``write_region``), as in xarray-beam.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import xarray as xr

from mobscale.data import schema
from mobscale.errors import OutputExistsError, StoreError
from mobscale.log import get_logger

log = get_logger(__name__)

ZARR_KW = {"zarr_format": 3, "consolidated": False}

#: default chunk sizes per dimension: one day of hourly data x 128x128-pixel tiles (6.4 km) of ~1.5 MB. Smaller
#: tiles (64x64) halve xarray/Dask read throughput (per-chunk overhead dominates; see jobs/bench_store.py).
DEFAULT_CHUNKS = {
    "time": 24,
    "y": 128,
    "x": 128,
    "y100": 64,
    "x100": 64,
    "cell": 4096,
    "bs": 4096,
    "poi_category": -1,
    "hour_of_week": 24,
    "user": 512,
    "triple": 65536,
    "sample": 1,
}


def is_store(path: str | Path) -> bool:
    """True if ``path`` looks like a Zarr v3 store (a directory with a group ``zarr.json``)."""
    p = Path(path)
    return p.is_dir() and (p / "zarr.json").is_file()


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise StoreError(f"{path}: no such file or directory (expected a city store made by `mobscale data synth` or `mobscale data import`)")
    if not path.is_dir():
        raise StoreError(f"{path}: is a file, not a Zarr store (a city store is a directory ending in .zarr)")
    meta = path / "zarr.json"
    if not meta.is_file():
        raise StoreError(f"{path}: not a Zarr v3 store (no zarr.json); was it written completely?")
    try:
        json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}/zarr.json: corrupt metadata ({e})") from None


def open_city(path: str | Path, chunks: dict | str | None = "auto", group: str | None = None) -> xr.Dataset:
    """Open a city store lazily (Dask arrays). Raises :class:`StoreError` with the path on any problem.

    ``chunks="auto"`` uses the store's own chunking (one Dask chunk per Zarr chunk, never loads data).
    """
    path = Path(path)
    _check_readable(path)
    if group is not None and not (path / group / "zarr.json").is_file():
        raise StoreError(f"{path}: has no '{group}' group")
    try:
        ds = xr.open_zarr(path, group=group, chunks={} if chunks == "auto" else chunks, **{"consolidated": False})
    except StoreError:
        raise
    except Exception as e:  # zarr/xarray raise many types for damaged stores; name the store and the cause
        raise StoreError(f"{path}{'/' + group if group else ''}: cannot be opened as a city store ({type(e).__name__}: {e})") from None
    return ds


def has_group(path: str | Path, group: str) -> bool:
    return (Path(path) / group / "zarr.json").is_file()


def open_users(path: str | Path, chunks: dict | str | None = "auto") -> xr.Dataset:
    """The optional ``users`` group (per-user traffic, trajectories, KG triples)."""
    return open_city(path, chunks=chunks, group=schema.USERS_GROUP)


def chunk_encoding(ds: xr.Dataset, chunks: dict | None = None) -> dict:
    """Zarr chunk encoding for every variable from per-dimension sizes (-1 or larger than dim = whole dim)."""
    sizes = dict(DEFAULT_CHUNKS)
    sizes.update(chunks or {})
    enc = {}
    for name, var in ds.variables.items():
        if var.ndim == 0:
            continue
        ch = []
        for dim, n in zip(var.dims, var.shape):
            c = sizes.get(dim, -1)
            ch.append(n if c in (-1, None) or c > n or c <= 0 else c)
        enc[name] = {"chunks": tuple(max(1, c) for c in ch)}
        if var.dtype.kind in "OUT":
            enc[name] = {}
    return enc


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to ``path`` (replacing only if ``overwrite``).

    On any exception the temporary path is removed and ``path`` is left exactly as it was.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists (pass --overwrite to replace it)")
    if not path.parent.exists():
        raise StoreError(f"{path.parent}: output folder does not exist")
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def to_zarr(ds: xr.Dataset, path: str | Path, group: str | None = None, mode: str = "w-", chunks: dict | None = None, compute: bool = True):
    """Write ``ds`` (numpy or Dask backed) with mobscale's encoding; returns the Dask delayed when compute=False."""
    ds = _drop_encoding(ds)
    enc = chunk_encoding(ds, chunks)
    # Dask chunks must line up with Zarr chunks for safe parallel writes
    ds = ds.chunk({d: enc_dim for d, enc_dim in _dim_chunks(ds, enc).items()}) if any(v.chunks is not None for v in ds.data_vars.values()) else ds
    return ds.to_zarr(path, group=group, mode=mode, encoding=enc, compute=compute, **ZARR_KW)


def _dim_chunks(ds: xr.Dataset, enc: dict) -> dict:
    out = {}
    for name, e in enc.items():
        if "chunks" not in e:
            continue
        for dim, c in zip(ds[name].dims, e["chunks"]):
            out.setdefault(dim, c)
    return out


def _drop_encoding(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    for v in ds.variables.values():
        v.encoding = {}
    return ds


def write_city(
    ds: xr.Dataset,
    path: str | Path,
    *,
    users: xr.Dataset | None = None,
    extra_groups: dict[str, xr.Dataset] | None = None,
    overwrite: bool = False,
    chunks: dict | None = None,
    validate: bool = True,
) -> Path:
    """Write a complete city store atomically (root + optional users / other groups), then validate it."""
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        to_zarr(ds, tmp, mode="w-", chunks=chunks)
        if users is not None:
            to_zarr(users, tmp, group=schema.USERS_GROUP, mode="w-", chunks=chunks)
        for g, gds in (extra_groups or {}).items():
            to_zarr(gds, tmp, group=g, mode="w-", chunks=chunks)
        if validate:
            from mobscale.data.validate import validate_store

            validate_store(tmp, display_path=path)
    log.info("wrote %s", path)
    return path


def write_template(ds: xr.Dataset, path: str | Path, group: str | None = None, mode: str = "w-", chunks: dict | None = None) -> None:
    """Create the store's metadata and coordinates without computing data variables (xarray-beam style)."""
    ds = _drop_encoding(ds)
    enc = chunk_encoding(ds, chunks)
    ds.to_zarr(path, group=group, mode=mode, encoding=enc, compute=False, **ZARR_KW)


def write_region(ds: xr.Dataset, path: str | Path, region: dict[str, slice], group: str | None = None) -> None:
    """Write ``ds`` into an existing template at ``region`` (must be chunk aligned; variables without the
    region's dims are dropped because the template already holds them)."""
    keep = [v for v in ds.data_vars if set(region).issubset(ds[v].dims)]
    sub = _drop_encoding(ds[keep])
    sub = sub.drop_vars([c for c in sub.coords if not set(region).issubset(sub[c].dims) or c in region], errors="ignore")
    sub = sub.drop_vars([c for c in sub.coords], errors="ignore")
    sub.to_zarr(path, group=group, region=region, mode="r+", **ZARR_KW)


def store_attrs_json(obj) -> str:
    """Attrs holding structured values are JSON strings (portable across Zarr readers)."""
    return json.dumps(obj, sort_keys=True, default=_json_default)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
