"""``mobscale eval {traffic | trajectories | users} --real PATH --synthetic PATH --out DIR``.

Writes DIR/metrics.json (always), DIR/metrics.nc (traffic: dims metric x level x resolution, plus sample),
DIR/report.html with DIR/figures/*.png (unless --no-report), and prints rich tables. DIR is written to a temporary
sibling and renamed into place when complete; an existing non-empty DIR is an error (as for every output).

``--train PATH`` adds a privacy audit (distance to the closest training record, mobscale.eval.privacy):
traffic = per-(unit, day) hourly profiles of the coarsest evaluated level; users = per-user traffic series and
per-user-day trajectories (those scored: `eval users` scores what both users groups hold, so trajectory-only
imports and traffic-only generators are accepted); trajectories = MoveSim rows (Hamming distance).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import xarray as xr
from rich.console import Console

from mobscale.data import pyramid, schema
from mobscale.data.store import atomic_output, has_group, open_city, open_users
from mobscale.errors import InputDataError, OutputExistsError, StoreError
from mobscale.eval import report
from mobscale.eval.distributions import jsd_convention
from mobscale.eval.metrics import finalize_traffic, metrics_to_dict, to_synthetic_step, traffic_statistics
from mobscale.eval.privacy import dcr_audit
from mobscale.eval.trajectories import read_gps, read_movesim, split_days, trajectory_metrics
from mobscale.eval.users import users_metrics
from mobscale.log import get_logger

log = get_logger(__name__)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return None if math.isnan(f) else (f if math.isfinite(f) else ("inf" if f > 0 else "-inf"))
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, Path):
        return str(o)
    return o


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_netcdf(ds: xr.Dataset, path: Path) -> None:
    """netCDF-4 through h5netcdf when h5py is importable, else netCDF-3 through scipy (64-bit integers, which
    netCDF-3 lacks, are stored as int32: sample ids and counts are small)."""
    import importlib.util

    if importlib.util.find_spec("h5py") is not None:
        ds.to_netcdf(path, engine="h5netcdf")
        return
    ds = ds.copy()
    for name, v in ds.variables.items():
        if v.dtype == np.int64:
            ds[name] = v.astype(np.int32)
    ds.to_netcdf(path, engine="scipy")


def _output_dir(out: Path, overwrite: bool | None):
    """atomic_output, but an existing *empty* folder (e.g. made by a job script) counts as free.

    ``overwrite=None``: the parser has no --overwrite flag, so the error must not suggest one."""
    if out.is_dir() and not any(out.iterdir()):
        overwrite = True
    elif out.exists() and overwrite is None:
        raise OutputExistsError(f"{out}: already exists and is not empty (remove it or choose another --out)")
    return atomic_output(out, overwrite=bool(overwrite))


# ---------------------------------------------------------------- privacy records


def _daily_profiles(ds: xr.Dataset, lvl: str, name: str) -> np.ndarray:
    """(units x days [x samples], steps per day) hourly (or native, if coarser) profiles of level ``lvl``."""
    native = pyramid.time_step_minutes(ds)
    res = "1h" if 60 % native == 0 and native <= 60 else None
    da = pyramid.level(ds, lvl, res) if res else ds[schema.TRAFFIC_VAR[lvl]]
    step = 60 if res else native
    per_day = 1440 // step
    days = da.sizes["time"] // per_day
    if days == 0:
        raise InputDataError(f"{name}: fewer than one day of traffic, no daily profiles for the privacy audit")
    da = da.isel(time=slice(0, days * per_day))
    space = schema.LEVEL_DIMS[lvl][1:]
    lead = ["sample"] if "sample" in da.dims else []
    x = da.transpose(*lead, *space, "time").values.astype(np.float64)
    return x.reshape(-1, days, per_day).reshape(-1, per_day)


# ---------------------------------------------------------------- targets


def _traffic(args, out: Path, console: Console) -> dict:
    synth = open_city(args.synthetic)
    real = to_synthetic_step(open_city(args.real), synth, str(args.real), str(args.synthetic))
    ts = traffic_statistics(real, synth, args.levels, args.resolutions, real_name=str(args.real),
                            synth_name=str(args.synthetic))
    ds = finalize_traffic(ts, jsd=args.mode)
    result = {
        "target": "traffic",
        "real": str(args.real),
        "synthetic": str(args.synthetic),
        "levels": list(ts.levels),
        "resolutions": list(ts.resolutions),
        "n_samples": int(len(ts.samples)),
        "metrics": metrics_to_dict(ds),
        "conventions": json.loads(ds.attrs["conventions"]),
    }
    if args.train:
        train = to_synthetic_step(open_city(args.train), synth, str(args.train), str(args.synthetic))
        lvl = ts.levels[0]
        result["privacy"] = dcr_audit(_daily_profiles(train, lvl, str(args.train)),
                                      _daily_profiles(synth, lvl, str(args.synthetic)),
                                      _daily_profiles(real, lvl, str(args.real)), "euclidean") | {
            "records": f"per-(unit, day) profiles of level {lvl}"}
    write_netcdf(ds, out / "metrics.nc")
    report.print_traffic_table(ds, console)
    if "privacy" in result:
        report.print_summary_table("privacy (distance to closest training record)", result["privacy"], console)
    if not args.no_report:
        figs_dir = out / "figures"
        figs_dir.mkdir()
        figs = [
            ("time-mean maps per level (real, generated sample 0, difference)", report.fig_maps(real, synth, ts.levels, figs_dir / "maps.png")),
            ("time series of the busiest unit per level", report.fig_series(real, synth, ts.levels, figs_dir / "series.png")),
            (f"distributions at {ts.resolutions[-1]} on the shared bins", report.fig_distributions(ts, figs_dir / "distributions.png")),
        ]
        if has_group(args.synthetic, schema.STAGES_GROUP):
            stages = open_city(args.synthetic, group=schema.STAGES_GROUP)
            figs.append(("intermediate denoising states (multi-scale sample)",
                         report.fig_stages(stages, real, figs_dir / "stages.png", str(args.synthetic))))
        sections = [("Traffic metrics (mean ± spread over generated samples)", report.traffic_table_html(ds))]
        if "privacy" in result:
            sections.append(("Privacy", report.summary_table_html(result["privacy"])))
        report.write_html(out / "report.html", "mobscale evaluation: traffic",
                          {"real": str(args.real), "synthetic": str(args.synthetic), "samples": len(ts.samples)},
                          sections, figs, result["conventions"])
    return result


def _trajectories(args, out: Path, console: Console) -> dict:
    if not args.gps:
        raise InputDataError("eval trajectories: --gps FILE is required (location id -> 'lat lng' per line)")
    real = read_movesim(args.real)
    synth = read_movesim(args.synthetic)
    gps = read_gps(args.gps)
    m = trajectory_metrics(real, synth, gps, args.mode)
    meta = {"target": "trajectories", "mode": args.mode, "real": str(args.real), "synthetic": str(args.synthetic),
            "gps": str(args.gps), "rows": {"real": int(real.shape[0]), "synthetic": int(synth.shape[0])},
            "slots": int(real.shape[1])}
    meta["jsd"] = jsd_convention(args.mode).as_dict()
    result = dict(m)
    if args.train:
        train = read_movesim(args.train)
        result["privacy"] = dcr_audit(train, synth, real, "hamming") | {"records": "trajectory rows (Hamming distance)"}
    result["meta"] = meta
    report.print_summary_table(f"trajectory metrics ({args.mode} mode, JSD)", m, console)
    if "privacy" in result:
        report.print_summary_table("privacy (distance to closest training record)", result["privacy"], console)
    if not args.no_report:
        figs_dir = out / "figures"
        figs_dir.mkdir()
        figs = [("trajectory statistics", report.fig_trajectory_distributions(real, [synth], gps, args.mode, figs_dir / "trajectories.png"))]
        sections = [("Trajectory metrics (JSD)", report.summary_table_html(m))]
        if "privacy" in result:
            sections.append(("Privacy", report.summary_table_html(result["privacy"])))
        report.write_html(out / "report.html", f"mobscale evaluation: trajectories ({args.mode})", meta, sections, figs, meta["jsd"])
    return result


def _users(args, out: Path, console: Console) -> dict:
    """Per-user metrics of whatever both users groups hold (traffic and/or trajectories; the rest is listed under
    "skipped"), the privacy audit of the scored variables the --train group also holds, and the report."""
    real_root, synth_root = open_city(args.real), open_city(args.synthetic)
    for p in (args.real, args.synthetic):
        if not has_group(p, schema.USERS_GROUP):
            raise StoreError(f"{p}: has no '{schema.USERS_GROUP}' group (needed by `mobscale eval users`)")
    real_u, synth_u = open_users(args.real), open_users(args.synthetic)
    m, details = users_metrics(real_root, real_u, synth_root, synth_u, jsd=args.mode, traj_mode="clean",
                               real_name=str(args.real), synth_name=str(args.synthetic), return_details=True)
    result = {"target": "users", "real": str(args.real), "synthetic": str(args.synthetic)} | m
    if args.train:
        if not has_group(args.train, schema.USERS_GROUP):
            raise StoreError(f"{args.train}: has no '{schema.USERS_GROUP}' group (needed by the users privacy audit)")
        train_u = open_users(args.train)
        privacy: dict = {}
        for var in m["scored"]:
            if var not in train_u.data_vars:
                privacy.setdefault("skipped", {})[var] = f"absent from {args.train}/users"
                log.warning("privacy audit: '%s' is absent from %s/users; not audited", var, args.train)
            elif var == "traffic":
                tr = np.asarray(train_u["traffic"].values, np.float64)
                st = np.asarray(synth_u["traffic"].values, np.float64).reshape(-1, synth_u.sizes["time"])
                privacy["traffic"] = dcr_audit(tr, st, np.asarray(real_u["traffic"].values, np.float64), "euclidean") | {
                    "records": "per-user traffic series"}
            else:
                per_day = details["real_trajectories"].shape[1]
                privacy["trajectories"] = dcr_audit(split_days(np.asarray(train_u["trajectory"].values), per_day),
                                                    np.concatenate(details["synth_trajectories"]), details["real_trajectories"],
                                                    "hamming") | {"records": "per-user-day trajectories (Hamming distance)"}
        result["privacy"] = privacy
    if "traffic" in m:
        report.print_summary_table("users: traffic distributions", m["traffic"], console)
    if "trajectories" in m:
        report.print_summary_table("users: trajectories (clean mode, JSD)", m["trajectories"], console)
    for var, why in m["skipped"].items():
        console.print(f"users: '{var}' not scored ({why})")
    if not args.no_report:
        figs_dir = out / "figures"
        figs_dir.mkdir()
        figs, sections = [], []
        if "traffic" in m:
            real_mean = real_u["traffic"].mean("user").compute()
            synth_mean = synth_u["traffic"].mean("user").compute()
            figs.append(("per-user traffic", report.fig_user_traffic(details, real_mean, synth_mean, figs_dir / "user_traffic.png")))
            sections.append(("User traffic", report.summary_table_html(m["traffic"])))
        if "trajectories" in m:
            figs.append(("trajectory statistics (user-days)", report.fig_trajectory_distributions(
                details["real_trajectories"], details["synth_trajectories"], details["coords"], "clean",
                figs_dir / "trajectories.png")))
            sections.append(("Trajectories", report.summary_table_html(m["trajectories"])))
        meta = {"real": str(args.real), "synthetic": str(args.synthetic), "samples": m["n_samples"]}
        if m["skipped"]:
            meta["not scored"] = "; ".join(f"{v} ({why})" for v, why in m["skipped"].items())
        report.write_html(out / "report.html", "mobscale evaluation: users", meta, sections, figs, m["conventions"])
    return result


_TARGETS = {"traffic": _traffic, "trajectories": _trajectories, "users": _users}


def evaluate(args) -> int:
    """Handler of ``mobscale eval`` (see module docstring). Returns 0; user errors raise MobscaleError."""
    out = Path(args.out)
    target = getattr(args, "target", None) or "traffic"
    console = Console()
    with _output_dir(out, getattr(args, "overwrite", None)) as tmp:
        tmp.mkdir()
        result = _TARGETS[target](args, tmp, console)
        _write_json(tmp / "metrics.json", result)
    log.info("wrote %s", out / "metrics.json")
    return 0
