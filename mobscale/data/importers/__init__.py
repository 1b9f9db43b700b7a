"""Real-data importers: ``mobscale data import FORMAT SOURCE... --out PATH`` -> one city store.

:func:`run_import` is the single entry point; each format lives in its own module and returns the store's
datasets, which are written atomically by :func:`mobscale.data.store.write_city` (an existing output is refused
unless ``overwrite``) and validated. Every store gets the attrs ``city``, ``crs``, ``lat0``/``lon0``,
``pixel_size_m``, ``time_step_minutes``, ``levels_present``, ``levels_built_by``, ``kind="real"``,
``provenance`` (JSON: file name, path, bytes, sha256 and the shared-data MANIFEST/PROVENANCE row of every
source file) and ``config`` (JSON of the format, sources and options).

Layouts (details in each module's docstring):

=============  ==============================================================================================
format         store
=============  ==============================================================================================
milan-raw      grid: Milano squares (~235 m) as the finest grid over the bounding box of the squares present
               (even-padded, ``observed`` mask); 2x2 -> grid100 and pseudo cells, 4x4 -> pseudo BS;
               traffic = internet, + smsin/smsout/callin/callout (time, y, x); 10 min, CET wall clock
milan-block    grid: as milan-raw for DGRN's 5x5 block CSV (column order col-major by assumption; pad or crop)
grid-npy       grid: a (T, H*W) / (T, H, W) array on a nominal frame (unless lat0/lon0/pixel_size_m);
               negatives refused unless negative=shift|clip; time from the _ts file or --step-minutes
uomo           grid mosaic: overlapping windows stitched into one continuous series per patch, each patch a
               4x4 tile (= one pseudo BS), users -> population, poi -> poi; split labels per tile
stkdiff        BS only: traffic_bs (time, bs) + bs_kg_embedding (bs, kg_dim); no coordinates exist
movesim        users only: root BS (pseudo BS on a 500 m grid, or --bs-coords nearest) + users group
               (trajectory = BS index, location = source id) with one user-day per row
foursquare     users only: check-ins -> 48 half-hour slots per (user, traj) day by forward fill
=============  ==============================================================================================

Options beyond the CLI's (``grid, layout, city, split, step_minutes, start, bs_coords, overwrite``) are keyword
arguments of the format's function (e.g. ``negative`` for grid-npy, ``column_order``/``pad`` for milan-block,
``max_radius_km`` for the trajectory formats); an option a format does not take is an error, and text values
(as a generic ``--option KEY=VALUE`` flag would pass them) are converted to the number type the format declares.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Callable

from mobscale.data.importers import _common
from mobscale.data.importers.foursquare import import_foursquare
from mobscale.data.importers.grid_npy import import_grid_npy
from mobscale.data.importers.milan_block import import_milan_block
from mobscale.data.importers.milan_raw import import_milan_raw
from mobscale.data.importers.movesim import import_movesim
from mobscale.data.importers.stkdiff import import_stkdiff
from mobscale.data.importers.uomo import import_uomo
from mobscale.data.store import store_attrs_json, write_city
from mobscale.errors import ConfigError, InputDataError, OutputExistsError
from mobscale.log import get_logger

log = get_logger(__name__)

#: format name (as in ``mobscale.launch.IMPORT_FORMATS``) -> importer(sources, **options) -> Built
FORMATS: dict[str, Callable[..., _common.Built]] = {
    "milan-raw": import_milan_raw,
    "milan-block": import_milan_block,
    "uomo": import_uomo,
    "grid-npy": import_grid_npy,
    "stkdiff": import_stkdiff,
    "movesim": import_movesim,
    "foursquare": import_foursquare,
}


def format_options(fmt: str) -> dict[str, object]:
    """Options a format takes, with their defaults."""
    sig = inspect.signature(FORMATS[fmt])
    return {n: p.default for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _coerce(fmt: str, name: str, value):
    """Text option values (from ``--option KEY=VALUE``) converted to the number type the importer declares."""
    hint = typing.get_type_hints(FORMATS[fmt]).get(name)
    if not isinstance(value, str) or hint is None:
        return value
    kinds = set(typing.get_args(hint)) or {hint}
    for kind in (int, float):
        if kind in kinds:
            try:
                return kind(value)
            except ValueError:
                raise ConfigError(f"{fmt}: option {name}={value!r} is not a {kind.__name__}") from None
    return value


def run_import(fmt: str, sources: list[str | Path], out: str | Path, *, overwrite: bool = False, validate: bool = True, **options) -> Path:
    """Import ``sources`` of format ``fmt`` into the city store ``out``; returns ``out``.

    options: the format's keyword options; None means "not given" (so the CLI can pass every flag). Raises
    ConfigError for an unknown format or an option the format does not take, InputDataError for bad sources,
    OutputExistsError when ``out`` exists without ``overwrite``, StoreError if the result fails validation.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown import format '{fmt}' (choose from {', '.join(FORMATS)})")
    given = {k: v for k, v in options.items() if v is not None}
    accepted = format_options(fmt)
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ConfigError(f"{fmt}: option(s) {', '.join(unknown)} do not apply (it takes: {', '.join(accepted)})")
    given = {k: _coerce(fmt, k, v) for k, v in given.items()}
    if not sources:
        raise ConfigError(f"{fmt}: no source files given")
    paths = [Path(s) for s in sources]
    for p in paths:
        if not p.exists():
            raise InputDataError(f"{p}: no such file or folder")
    out = Path(out)
    if out.exists() and not overwrite:
        # refuse before reading gigabytes of input; write_city checks again atomically
        raise OutputExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    log.info("importing %s from %s", fmt, ", ".join(str(p) for p in paths))
    built = FORMATS[fmt](paths, **given)
    ds = built.ds
    ds.attrs["kind"] = "real"
    ds.attrs["provenance"] = _common.provenance(built.files)
    ds.attrs["config"] = store_attrs_json({
        "format": fmt,
        "sources": [str(p.resolve()) for p in paths],
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in given.items()},
        "defaults": {k: v for k, v in accepted.items() if k not in given and v is not inspect.Parameter.empty},
    })
    if built.users is not None:
        built.users.attrs.setdefault("provenance", f"mobscale data import {fmt} (source files and hashes: root attrs['provenance'])")
    return write_city(ds, out, users=built.users, overwrite=overwrite, chunks=built.chunks or None, validate=validate)


__all__ = ["FORMATS", "format_options", "run_import"]
