"""The evaluation report: rich tables on the terminal, PNG figures and one self-contained-folder HTML page.

Figures (matplotlib, Agg): maps real vs generated per level (time-mean density on the 50 m grid), time series of
the busiest unit of each level, value / first-difference distributions on the shared bins of the metrics, the
intermediate denoising states of a multi-scale sample (ZoomDiff Fig. 11) when the generated store has a ``stages``
group, and for users / trajectories the distributions behind each JSD. Every figure reads only what it shows
(time means and single series are reduced lazily with Dask), so reports of city-scale stores stay cheap.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mobscale.data import pyramid, schema  # noqa: E402
from mobscale.errors import StoreError  # noqa: E402
from mobscale.eval.metrics import HIGHER_IS_BETTER, TrafficStatistics  # noqa: E402
from mobscale.eval.trajectories import TRAJECTORY_METRICS, trajectory_statistics  # noqa: E402
from mobscale.log import get_logger  # noqa: E402

log = get_logger(__name__)

MAX_SERIES_SAMPLES = 5
_GEN = "tab:orange"
_REAL = "black"


# ---------------------------------------------------------------- terminal tables


def _fmt(mean: float, spread: float | None) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "–"
    s = f"{mean:.4g}"
    if spread is not None and np.isfinite(spread):
        s += f" ± {spread:.2g}"
    return s


def print_traffic_table(ds: xr.Dataset, console: Console | None = None) -> None:
    """One table per resolution: rows = metrics, columns = levels, cells = mean ± spread over samples."""
    console = console or Console()
    levels = ds["level"].values.tolist()
    for res in ds["resolution"].values.tolist():
        t = Table(title=f"traffic metrics at {res} ({int(ds.attrs.get('n_samples', 1))} generated sample(s))")
        t.add_column("metric")
        for lvl in levels:
            t.add_column(lvl, justify="right")
        for m in ds["metric"].values.tolist():
            row = [m + (" ↑" if m in HIGHER_IS_BETTER else "")]
            for lvl in levels:
                sel = dict(metric=m, level=lvl, resolution=res)
                row.append(_fmt(float(ds["value"].sel(sel)), float(ds["spread"].sel(sel))))
            t.add_row(*row)
        console.print(t)


def print_summary_table(title: str, metrics: dict, console: Console | None = None) -> None:
    """``metrics``: {name: value} or {name: {"mean", "spread"}}."""
    console = console or Console()
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        if isinstance(v, dict):
            t.add_row(k, _fmt(v.get("mean"), v.get("spread")))
        elif isinstance(v, (int, float)):
            t.add_row(k, _fmt(float(v), None))
    console.print(t)


# ---------------------------------------------------------------- traffic figures


def _first_sample(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(sample=0) if "sample" in ds.dims else ds


def _samples(da: xr.DataArray) -> list[xr.DataArray]:
    if "sample" not in da.dims:
        return [da]
    return [da.isel(sample=i) for i in range(min(da.sizes["sample"], MAX_SERIES_SAMPLES))]


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def fig_maps(real: xr.Dataset, synth: xr.Dataset, levels: Sequence[str], path: Path) -> Path:
    """Rows = levels; columns = real, generated (sample 0), generated - real: time-mean density on the 50 m grid."""
    gen = _first_sample(synth)
    fig, axes = plt.subplots(len(levels), 3, figsize=(11, 3.2 * len(levels)), squeeze=False, layout="constrained")
    extent = None
    if real.sizes["x"] > 1 and real.sizes["y"] > 1:
        x, y = real["x"].values, real["y"].values
        extent = [x[0] / 1000, x[-1] / 1000, y[0] / 1000, y[-1] / 1000]
    for i, lvl in enumerate(levels):
        r = pyramid.density(real, lvl).mean("time").compute().values
        g = pyramid.density(gen, lvl).mean("time").compute().values
        vmax = float(np.percentile(r, 99)) or float(r.max()) or 1.0
        for j, (img, title, kw) in enumerate((
            (r, f"{lvl}: real", dict(vmin=0, vmax=vmax, cmap="viridis")),
            (g, f"{lvl}: generated", dict(vmin=0, vmax=vmax, cmap="viridis")),
            (g - r, f"{lvl}: generated − real", dict(vmin=-vmax / 2, vmax=vmax / 2, cmap="RdBu_r")),
        )):
            ax = axes[i, j]
            im = ax.imshow(img, origin="lower", extent=extent, interpolation="nearest", **kw)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("x (km)", fontsize=8)
            ax.set_ylabel("y (km)", fontsize=8)
            fig.colorbar(im, ax=ax, shrink=0.8)
    units = real[schema.TRAFFIC_VAR[levels[0]]].attrs.get("units", "traffic")
    fig.suptitle(f"time-mean traffic density per level ({units} per 50 m pixel per native step)")
    return _save(fig, path)


def fig_series(real: xr.Dataset, synth: xr.Dataset, levels: Sequence[str], path: Path) -> Path:
    """Rows = levels: the native series of the unit with the highest real mean, real vs generated samples."""
    fig, axes = plt.subplots(len(levels), 1, figsize=(11, 2.6 * len(levels)), squeeze=False)
    t = real["time"].values
    for i, lvl in enumerate(levels):
        var = schema.TRAFFIC_VAR[lvl]
        space = schema.LEVEL_DIMS[lvl][1:]
        mean = real[var].mean("time").compute()
        flat = int(np.argmax(mean.values))
        where = dict(zip(space, np.unravel_index(flat, mean.shape)))
        ax = axes[i, 0]
        ax.plot(t, real[var].isel(where).values, color=_REAL, lw=1.2, label="real")
        for k, s in enumerate(_samples(synth[var].isel(where))):
            ax.plot(t, s.values, color=_GEN, lw=0.9, alpha=1.0 if k == 0 else 0.35, label="generated" if k == 0 else None)
        ax.set_title(f"{lvl}: busiest unit ({', '.join(f'{d}={int(v)}' for d, v in where.items())})", fontsize=9)
        ax.set_ylabel(real[var].attrs.get("units", ""))
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def _hist_panel(ax, edges: np.ndarray, real_counts: np.ndarray, gen_counts: Sequence[np.ndarray], xlabel: str, title: str):
    centres = 0.5 * (edges[:-1] + edges[1:])
    width = np.diff(edges)

    def dens(c):
        c = np.asarray(c, np.float64)
        return c / max(c.sum(), 1) / width

    ax.step(centres, dens(real_counts), where="mid", color=_REAL, lw=1.2, label="real")
    for k, g in enumerate(gen_counts[:MAX_SERIES_SAMPLES]):
        ax.step(centres, dens(g), where="mid", color=_GEN, lw=0.9, alpha=1.0 if k == 0 else 0.35,
                label="generated" if k == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def fig_distributions(ts: TrafficStatistics, path: Path) -> Path:
    """Rows = levels; columns = value and first-difference distributions at the finest evaluated resolution, real
    vs generated sample 0 on the bins the metrics used (no extra pass over the data)."""
    res = ts.resolutions[-1]
    fig, axes = plt.subplots(len(ts.levels), 2, figsize=(11, 2.8 * len(ts.levels)), squeeze=False)
    for i, lvl in enumerate(ts.levels):
        pr = ts.stats[(lvl, res)].pairs[0]  # real and sample 0 on the bins they share
        vb, db = ts.bins[(lvl, res)][0]
        _hist_panel(axes[i, 0], vb.edges, pr.volume_real.counts, [pr.volume_synth.counts],
                    f"traffic ({vb.scale} bins)", f"{lvl} {res}: volume")
        _hist_panel(axes[i, 1], db.edges, pr.diff_real.counts, [pr.diff_synth.counts],
                    f"first difference along time ({db.scale} bins)", f"{lvl} {res}: first differences")
    fig.tight_layout()
    return _save(fig, path)


def _stage_order(name: str) -> int:
    m = re.fullmatch(r"stage_(\d+)", name)
    return int(m.group(1)) if m else 10**9


def fig_stages(stages: xr.Dataset, real: xr.Dataset, path: Path, store_name: str = "synthetic") -> Path:
    """ZoomDiff Fig. 11: each intermediate denoising state (rows, coarse -> fine) as a time-mean map and as the
    series of the busiest pixel, against the real density at the stage's (level, time resolution)."""
    names = sorted([v for v in stages.data_vars if v.startswith("stage_")], key=_stage_order)
    if not names:
        raise StoreError(f"{store_name}/stages: no stage_k variables")
    native = pyramid.time_step_minutes(real)
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 2.8 * len(names)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 3]})
    first = stages[names[-1]]
    first = first.isel(sample=0) if "sample" in first.dims else first
    pix = np.unravel_index(int(np.argmax(first.mean("time").compute().values)), first.shape[1:])
    for i, name in enumerate(names):
        da = stages[name]
        for a in ("level", "time_resolution"):
            if a not in da.attrs:
                raise StoreError(f"{store_name}/stages/{name}: missing attribute '{a}' (schema: level, time_resolution)")
        lvl, res = str(da.attrs["level"]), str(da.attrs["time_resolution"])
        if da.dims[-3:] != ("time", "y", "x"):
            raise StoreError(f"{store_name}/stages/{name}: dims {da.dims}, expected (sample?, time, y, x)")
        da = da.isel(sample=0) if "sample" in da.dims else da
        ax = axes[i, 0]
        ax.imshow(da.mean("time").compute().values, origin="lower", interpolation="nearest", cmap="viridis")
        ax.plot([pix[1]], [pix[0]], "r+", ms=8)
        ax.set_title(f"{name}: {lvl} @ {res}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax = axes[i, 1]
        series = da.isel(y=pix[0], x=pix[1]).compute()
        ax.plot(series["time"].values, series.values, color=_GEN, lw=1.0, label=f"{name} (generated)")
        if lvl in schema.SPATIAL_LEVELS and res in schema.TEMPORAL_RESOLUTIONS and \
                schema.TEMPORAL_RESOLUTIONS[res] % native == 0:
            ref = pyramid.density(real, lvl, res).isel(y=pix[0], x=pix[1]).compute()
            ax.plot(ref["time"].values, ref.values, color=_REAL, lw=1.0, alpha=0.8, label=f"real density {lvl} @ {res}")
        ax.set_ylabel("density")
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"intermediate denoising states at pixel (y={pix[0]}, x={pix[1]})")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- users / trajectories figures


def fig_trajectory_distributions(real: np.ndarray, synth: Sequence[np.ndarray], coords: np.ndarray, mode: str,
                                 path: Path, slot_minutes: float = 30.0) -> Path:
    """Six panels: the statistic behind each trajectory JSD, real vs generated (first samples)."""
    a = trajectory_statistics(real, coords, mode, slot_minutes=slot_minutes)
    bs = [trajectory_statistics(s, coords, mode, slot_minutes=slot_minutes) for s in synth[:MAX_SERIES_SAMPLES]]
    units = {"clean": {"distance": "jump (km)", "radius": "radius of gyration (km)", "duration": "stay (h)",
                       "dailyloc": "distinct locations / day", "grank": "rank", "irank": "rank"},
             "movesim": {"distance": "squared jump (deg²)", "radius": "mean sq. distance (deg²)",
                         "duration": "stay / slots", "dailyloc": "distinct / slots", "grank": "rank", "irank": "rank"}}[mode]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, m in zip(axes.ravel(), TRAJECTORY_METRICS):
        if m in ("grank", "irank"):
            ax.plot(np.arange(1, a[m].size + 1), a[m], color=_REAL, label="real")
            for k, b in enumerate(bs):
                ax.plot(np.arange(1, b[m].size + 1), b[m], color=_GEN, alpha=1.0 if k == 0 else 0.35,
                        label="generated" if k == 0 else None)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylabel("visit share")
        else:
            hi = max([a[m].max(initial=0)] + [b[m].max(initial=0) for b in bs]) or 1.0
            edges = np.linspace(0, hi, 51)
            ax.hist(a[m], bins=edges, density=True, histtype="step", color=_REAL, label="real")
            for k, b in enumerate(bs):
                ax.hist(b[m], bins=edges, density=True, histtype="step", color=_GEN, alpha=1.0 if k == 0 else 0.35,
                        label="generated" if k == 0 else None)
            ax.set_yscale("log")
        ax.set_xlabel(units[m], fontsize=8)
        ax.set_title(m, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"trajectory statistics ({mode} mode)")
    fig.tight_layout()
    return _save(fig, path)


def fig_user_traffic(details: dict, real_mean: xr.DataArray, synth_mean: xr.DataArray, path: Path) -> Path:
    """Per-user volume and difference distributions (shared bins) and the mean user's series."""
    vb, db = details["bins"][0]  # real users and generated sample 0 on the bins they share
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.4))
    _hist_panel(axes[0], vb.edges, details["real"].volume[0].counts, [details["synth"][0].volume[0].counts],
                f"traffic per user per step ({vb.scale} bins)", "per-user volume")
    _hist_panel(axes[1], db.edges, details["real"].diff[0].counts, [details["synth"][0].diff[0].counts],
                "first difference along time", "per-user first differences")
    ax = axes[2]
    ax.plot(real_mean["time"].values, real_mean.values, color=_REAL, label="real mean user")
    for k, s in enumerate(_samples(synth_mean)):
        ax.plot(s["time"].values, s.values, color=_GEN, alpha=1.0 if k == 0 else 0.35, label="generated" if k == 0 else None)
    ax.set_title("mean user traffic", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- HTML


def _json_table(obj, depth: int = 0) -> str:
    if isinstance(obj, dict):
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_json_table(v, depth + 1)}</td></tr>" for k, v in obj.items())
        return f"<table class='kv'>{rows}</table>"
    if isinstance(obj, float):
        return f"{obj:.6g}"
    return html.escape(json.dumps(obj) if not isinstance(obj, str) else obj)


def traffic_table_html(ds: xr.Dataset) -> str:
    parts = []
    metrics = ds["metric"].values.tolist()
    for res in ds["resolution"].values.tolist():
        head = "".join(f"<th>{html.escape(m)}{' ↑' if m in HIGHER_IS_BETTER else ''}</th>" for m in metrics)
        rows = []
        for lvl in ds["level"].values.tolist():
            cells = []
            for m in metrics:
                sel = dict(metric=m, level=lvl, resolution=res)
                cells.append(f"<td>{html.escape(_fmt(float(ds['value'].sel(sel)), float(ds['spread'].sel(sel))))}</td>")
            rows.append(f"<tr><th>{html.escape(lvl)}</th>{''.join(cells)}</tr>")
        parts.append(f"<h3>{html.escape(res)}</h3><table class='m'><tr><th>level</th>{head}</tr>{''.join(rows)}</table>")
        if "ensemble" in ds and int(ds.attrs.get("n_samples", 1)) > 1:  # CRPS etc. need several samples
            ens = [m for m in ds["ensemble_metric"].values.tolist() if m != "members"]
            erows = "".join(
                f"<tr><th>{html.escape(lvl)}</th>" + "".join(
                    f"<td>{float(ds['ensemble'].sel(ensemble_metric=m, level=lvl, resolution=res)):.4g}</td>" for m in ens) + "</tr>"
                for lvl in ds["level"].values.tolist())
            parts.append(f"<p>All {int(ds.attrs['n_samples'])} samples together (crps: fair ensemble CRPS; *_of_mean: errors of "
                         f"the sample mean)</p><table class='m'><tr><th>level</th>{''.join(f'<th>{html.escape(m)}</th>' for m in ens)}</tr>{erows}</table>")
    return "".join(parts)


def summary_table_html(metrics: dict) -> str:
    rows = []
    for k, v in metrics.items():
        if isinstance(v, dict) and "mean" in v:
            rows.append(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v['mean'], v.get('spread')))}</td></tr>")
        elif isinstance(v, (int, float)):
            rows.append(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(float(v), None))}</td></tr>")
    return f"<table class='m'>{''.join(rows)}</table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#f4f4f4;text-align:left}
table.kv td{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f4f4f4}"""


def write_html(path: Path, title: str, inputs: dict, sections: Sequence[tuple[str, str]], figures: Sequence[tuple[str, Path]],
               conventions: dict) -> Path:
    """One HTML page: inputs, metric sections (heading, HTML), figures (caption, PNG path relative to the page)."""
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Inputs</h2>", _json_table(inputs)]
    for head, content in sections:
        body += [f"<h2>{html.escape(head)}</h2>", content]
    if figures:
        body.append("<h2>Figures</h2>")
        for cap, p in figures:
            rel = p.relative_to(path.parent).as_posix()
            body.append(f"<figure><figcaption>{html.escape(cap)}</figcaption><img src='{html.escape(rel)}' alt='{html.escape(cap)}'></figure>")
    body += ["<h2>Conventions</h2>", _json_table(conventions)]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    path.write_text(page, encoding="utf-8")
    return path
