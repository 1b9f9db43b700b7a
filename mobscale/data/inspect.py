"""Summaries of a city store: levels, sizes, time span, totals, consistency (``mobscale data inspect``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mobscale.data import pyramid, schema
from mobscale.data.store import has_group, open_city, open_users
from mobscale.data.validate import levels_present


def summarize(path: str | Path) -> dict:
    """A JSON-able summary; totals and consistency are computed lazily (Dask, chunk by chunk)."""
    path = Path(path)
    ds = open_city(path)
    out: dict = {
        "path": str(path),
        "city": ds.attrs.get("city"),
        "kind": ds.attrs.get("kind"),
        "crs": ds.attrs.get("crs"),
        "provenance": ds.attrs.get("provenance"),
        "time_step_minutes": ds.attrs.get("time_step_minutes"),
        "levels": {},
    }
    if "time" in ds.coords and ds.sizes.get("time", 0):
        t = ds["time"].values
        out["time"] = {"start": str(np.datetime_as_string(t[0], unit="m")), "end": str(np.datetime_as_string(t[-1], unit="m")), "steps": int(t.size)}
    for lvl in levels_present(ds):
        da = ds[schema.TRAFFIC_VAR[lvl]]
        units = int(np.prod([da.sizes[d] for d in da.dims if d != "time"]))
        tot = float(da.sum().compute())
        out["levels"][lvl] = {"units": units, "shape": [int(s) for s in da.shape], "total": tot, "max": float(da.max().compute()),
                              "zero_fraction": float((da == 0).mean().compute())}
    if len(out["levels"]) == 4:
        out["consistency_max_rel_error"] = pyramid.consistency_errors(ds)
        step = int(ds.attrs["time_step_minutes"])
        out["resolutions"] = [r for r in schema.STANDARD_RESOLUTIONS if schema.TEMPORAL_RESOLUTIONS[r] % step == 0]
    out["context"] = [v for v in schema.CONTEXT_VARS if v in ds]
    if has_group(path, schema.USERS_GROUP):
        u = open_users(path)
        out["users"] = {"users": int(u.sizes.get("user", 0)), "steps": int(u.sizes.get("time", 0)),
                        "traffic": "traffic" in u, "trajectory": "trajectory" in u,
                        "kg_triples": int(u.sizes.get("triple", 0))}
    if has_group(path, schema.STAGES_GROUP):
        st = open_city(path, group=schema.STAGES_GROUP)
        out["stages"] = sorted(st.data_vars)
    return out


def render(summary: dict) -> None:
    """Rich tables on the terminal."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{summary['city']}[/bold] ({summary['kind']}) {summary['path']}")
    if "time" in summary:
        t = summary["time"]
        con.print(f"time: {t['start']} .. {t['end']}, {t['steps']} steps of {summary['time_step_minutes']} min")
    if summary.get("resolutions"):
        con.print("temporal pyramid: " + ", ".join(summary["resolutions"]))
    tab = Table(title="traffic levels")
    for c in ("level", "units", "shape", "total", "max", "zeros", "consistency (max rel. err.)"):
        tab.add_column(c)
    cons = summary.get("consistency_max_rel_error", {})
    for lvl, d in summary["levels"].items():
        tab.add_row(lvl, str(d["units"]), "x".join(map(str, d["shape"])), f"{d['total']:.6g}", f"{d['max']:.4g}",
                    f"{100 * d['zero_fraction']:.1f}%", f"{cons[lvl]:.2e}" if lvl in cons else "-")
    con.print(tab)
    con.print("context: " + (", ".join(summary["context"]) or "none"))
    if "users" in summary:
        con.print("users: " + json.dumps(summary["users"]))
    if "stages" in summary:
        con.print("stages: " + ", ".join(summary["stages"]))
