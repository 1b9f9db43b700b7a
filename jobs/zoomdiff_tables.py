"""Regenerate ZoomDiff's tables on our data, one command per table; each writes Markdown + raw JSON.

    python jobs/zoomdiff_tables.py table1  [--data synthetic|CITY.zarr] [--steps N] [--out results]
    python jobs/zoomdiff_tables.py table3  (noise schedules: [CN,CA,CD] ... [SN,SA,SD])
    python jobs/zoomdiff_tables.py table4  (RGP: uniform / coarse-greedy / fine-greedy on S3T2)
    python jobs/zoomdiff_tables.py table6  (refinement of BS traffic into the 50 m grid)
    python jobs/zoomdiff_tables.py table7  (cross-city transfer: A -> B zero-shot and few-shot)
    python jobs/zoomdiff_tables.py efficiency  (parameters, train and sample speed, one pass vs K runs)
    python jobs/zoomdiff_tables.py sampler  (fast sampler: DDIM steps per stage vs accuracy, time, consistency)

Protocol (the same for every table, stated in each Markdown header):
* data: the synthetic city (default ``--size 64x64 --days 7``; cross-city: a second city with another seed and
  generator parameters) or a city store given with ``--data``; training windows 16 px x 24 h;
* split: ``split_by=band`` -- the southern quarter of the city is held out (a district the models never saw,
  so cells and BS lie wholly inside it); every number is computed on that district only, all 7 days;
* every model is trained with the single-process engine for ``--steps`` optimizer steps (same batch, lr),
  sampled once (seed 0) with the same sampler settings, and scored with ``mobscale.eval.traffic_metrics``;
* references beside every model: ``context_profile`` (per AoI and hour-of-week traffic per person x population,
  + noise; fitted on the training district), the same without noise (its mean), and all-zeros.
Trained models and generated stores are cached under ``--work`` (default runs/tables): re-running a table reuses
them (delete the folder to retrain). Markdown and JSON go to ``--out`` (default results/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobscale.config import load  # noqa: E402
from mobscale.config.data import SynthConfig  # noqa: E402
from mobscale.data import pyramid, schema  # noqa: E402
from mobscale.data.store import is_store, open_city  # noqa: E402
from mobscale.log import get_logger, setup_logging  # noqa: E402

log = get_logger("jobs.zoomdiff_tables")

LEVEL_COLS = {"bs": ("mae", "rmse"), "cell": ("mae", "rmse"), "grid100": ("mae", "rmse", "sprmse", "psnr"), "grid50": ("mae", "rmse", "sprmse", "psnr")}


# ----------------------------------------------------------------------------------------------- pieces


def city(args, name: str = "city", seed: int | None = None, **over) -> Path:
    if args.data != "synthetic" and seed is None:
        return Path(args.data)
    from mobscale.data.synthetic import synth_city

    p = Path(args.work) / "data" / f"{name}.zarr"
    if not is_store(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        h, w = map(int, args.size.split("x"))
        synth_city(SynthConfig(city=name, seed=args.city_seed if seed is None else seed, height=h, width=w, days=args.days, users=0, **over), p)
    return p


def train(args, table: str, name: str, config: str, store: Path, sets: list[str] | None = None, init_from: Path | None = None) -> Path:
    from mobscale.train.loop import train_local

    run = Path(args.work) / f"{table}{args.tag}" / "runs" / name
    export = run / "export" / "model.pt"
    base = [f"data.store={store}", f"train.steps={args.steps}", "train.log_every=50", f"train.checkpoint_every={max(50, args.steps // 2)}"]
    common = list(args.set)
    if "profile" in config or "historical" in config:  # statistical references have no network or diffusion
        common = [x for x in common if not x.startswith(("model.", "diffusion.", "train."))]
    if config == "demo.yaml":  # ZoomDiff's own overrides (e.g. model.tpe_periodic=0 for the paper's TPE alone)
        common += list(args.zd_set)
    cfg = load(REPO / "configs" / config, base + common + list(sets or []))
    if export.exists():
        return run / "export"
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_local(cfg, run, init_from=init_from)  # statistical references are fitted inside (task.fit)
    (run / "wall.json").write_text(json.dumps({"train_wall_s": time.perf_counter() - t0}))
    return run / "export"


def sample(args, export: Path, context: Path, out: Path, **kw) -> dict:
    from mobscale.sample.city import SampleSpec, sample_city

    if (out / "zarr.json").exists():
        rep = json.loads(Path(str(out) + ".sampling").joinpath("reconcile.json").read_text())
        return rep
    from mobscale.model.export import load_export

    own = load_export(export).config.sample  # each model samples with its own configured sampler unless overridden
    sps = own.steps_per_stage if args.steps_per_stage is None else args.steps_per_stage
    eta = own.eta if args.eta is None or not sps else args.eta  # eta applies to DDIM samplers only
    kw.setdefault("num_samples", args.samples)
    # a table that needs one setting passes it (the stage tables score raw stages: False); else --[no-]reconcile;
    # else refinement reconciles to the given coarse traffic; else the model's own config
    if "reconcile" not in kw:
        kw["reconcile"] = args.reconcile if args.reconcile is not None else True if kw.get("refine_level") else own.reconcile
    kw.setdefault("reconcile_levels", tuple(args.reconcile_levels.split(",")) if args.reconcile_levels else tuple(own.reconcile_levels))
    kw.setdefault("nest_stages", own.nest_stages if args.nest_stages is None else args.nest_stages)
    spec = SampleSpec(export=str(export), context=str(context), out=str(out), seed=0, steps_per_stage=sps,
                      eta=eta, overlap=own.overlap, blend=args.blend or own.blend, batch_size=16, **kw)
    return sample_city(spec, progress=False)


def test_region(args, store: Path, config: str) -> tuple[slice, slice, slice]:
    """(rows, columns, hours) of the held-out test split of the configured windows: the southern band of patch
    rows (split_by=band: the whole period), or the last days over the whole city (split_by=time)."""
    from mobscale.data.windows import CityWindows

    cfg = load(REPO / "configs" / config, [f"data.store={store}", *args.set])
    w = CityWindows(store, cfg.data.windows, "test", [("grid50", "1h")])
    reg = w.test_region()
    P = cfg.data.windows.patch
    if cfg.data.windows.split_by == "time":
        return slice(0, w.arr.H), slice(0, w.arr.W), slice(*reg["hours"])
    if cfg.data.windows.split_by != "band":
        raise SystemExit("the table driver scores a contiguous held-out region: use data.windows.split_by=band or time")
    ys = sorted({y for y, _ in reg["patches"]})
    return slice(min(ys), max(ys) + P), slice(0, w.arr.W), slice(*reg["hours"])


def score(real: Path, synth: Path | xr.Dataset, region, levels=("bs", "cell", "grid100", "grid50"), resolutions=("1h",)) -> dict:
    from mobscale.eval import traffic_metrics
    from mobscale.eval.metrics import to_synthetic_step

    ys, xs, ts = region
    s = synth if isinstance(synth, xr.Dataset) else open_city(synth)
    ts = slice(ts.start, min(ts.stop, s.sizes["time"]))
    r = pyramid.region_subset(to_synthetic_step(open_city(real), s, str(real), "generated"), ys, xs).isel(time=ts)
    s = pyramid.region_subset(s, ys, xs).isel(time=ts)
    ds = traffic_metrics(r, s, levels=list(levels), resolutions=list(resolutions))
    out = {}
    for lvl in levels:
        for res in resolutions:
            for m in ds["metric"].values.tolist():
                out.setdefault(f"{lvl}@{res}", {})[m] = float(ds["value"].sel(metric=m, level=lvl, resolution=res))
            out[f"{lvl}@{res}"]["psnr_data_range"] = float(ds["data_range"].sel(level=lvl, resolution=res))
            for m in ds["ensemble_metric"].values.tolist():
                out[f"{lvl}@{res}"][m] = float(ds["ensemble"].sel(ensemble_metric=m, level=lvl, resolution=res))
    return out


def gen_path(args, table: str, name: str) -> Path:
    """Where a model's generated store goes (cached): one per table, tag and number of samples."""
    p = Path(args.work) / "gen" / f"{args.tag}" / table / (f"{name}.zarr" if args.samples == 1 else f"{name}_s{args.samples}.zarr")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def oracle(args, store: Path, region, keep_pixel_factor: bool) -> dict:
    """The synthetic city's own generator drawn again ``--samples`` times (SynthConfig.realisation 1..S): same
    context, BS and cells, new noise, events and day factors, and -- unless ``keep_pixel_factor`` -- new hidden
    per-pixel usage factors. The latter is a perfect context-conditional generator: the best any model given only
    the context can do, in every metric, up to its own sampling noise."""
    from mobscale.data.synthetic import synth_city

    cfg = SynthConfig.model_validate_json(open_city(store).attrs["config"])
    tag = "keep" if keep_pixel_factor else "redraw"
    paths = []
    for r in range(1, args.samples + 1):
        p = Path(args.work) / "data" / f"{store.stem}_oracle_{tag}_{r}.zarr"
        if not is_store(p):
            synth_city(cfg.model_copy(update={"realisation": r, "redraw_pixel_factor": not keep_pixel_factor}), p, progress=False)
        paths.append(p)
    keep = [schema.TRAFFIC_VAR[l] for l in schema.SPATIAL_LEVELS]
    ens = xr.concat([open_city(p)[keep] for p in paths], dim="sample")
    base = open_city(store).drop_vars(keep)
    return score(store, base.assign({v: ens[v] for v in keep}), region)


def zeros_like(real: Path) -> xr.Dataset:
    """All-zeros traffic over the real city's whole period (at 1 h, as every model here writes)."""
    ds = pyramid.at_time_step(open_city(real), 60)
    out = ds.copy()
    for lvl in schema.SPATIAL_LEVELS:
        v = schema.TRAFFIC_VAR[lvl]
        out[v] = xr.zeros_like(ds[v]).astype(np.float32)
    return out


def stage_dataset(gen: Path, real: Path, k: int) -> tuple[xr.Dataset, str, str]:
    """Stage k's output of a generated store as a one-level traffic dataset at 1 h (block totals spread evenly
    over the block's hours, so summing to the stage's resolution gives the stage's unit totals exactly)."""
    st = open_city(gen, group=schema.STAGES_GROUP)
    var = st[f"stage_{k}"]
    lvl, res = var.attrs["level"], var.attrs["time_resolution"]
    root = open_city(gen)
    um, n = pyramid.unit_map(root, lvl)
    d = np.asarray(var.isel(sample=0).values, dtype=np.float64)
    vals = pyramid.units_sum(d, um, n).astype(np.float32)
    ds = root.copy()
    if lvl in ("grid50", "grid100"):
        arr = d if lvl == "grid50" else pyramid.block_sum(d)
    else:
        arr = vals
    ds[schema.TRAFFIC_VAR[lvl]] = (schema.LEVEL_DIMS[lvl], arr.astype(np.float32))
    return ds, lvl, res


def total_ratio(real: Path, synth: xr.Dataset, lvl: str, region) -> float:
    """Generated / real traffic of level ``lvl`` summed over the scored region (1 = no drift of the total). Why
    beside the MAE: a stage that is far off in MAE may be off in scale rather than in pattern."""
    ys, xs, ts = region
    var = schema.TRAFFIC_VAR[lvl]
    r = pyramid.region_subset(open_city(real), ys, xs).isel(time=ts)[var]
    s = pyramid.region_subset(synth, ys, xs).isel(time=ts)[var]
    s = s.isel(sample=0) if "sample" in s.dims else s
    return float(s.sum(dtype=np.float64)) / float(r.sum(dtype=np.float64))


def markdown(title: str, header: str, rows: dict[str, dict], cols: list[tuple[str, str]]) -> str:
    lines = [f"# {title}", "", header, "", "| method | " + " | ".join(f"{l} {m}" for l, m in cols) + " |",
             "|---|" + "---|" * len(cols)]
    best = {}
    for c in cols:
        vals = [rows[r].get(c[0], {}).get(c[1]) for r in rows]
        vals = [v for v in vals if v is not None and np.isfinite(v)]
        if vals:  # a total ratio is best nearest 1
            best[c] = max(vals) if c[1] == "psnr" else min(vals, key=lambda v: abs(np.log(v)) if v > 0 else np.inf) if c[1] == "total_ratio" else min(vals)
    for r, d in rows.items():
        cells = []
        for c in cols:
            v = d.get(c[0], {}).get(c[1])
            s = "-" if v is None or not np.isfinite(v) else f"{v:.4g}"
            cells.append(f"**{s}**" if v is not None and c in best and v == best[c] else s)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(args, table: str, md: str, raw: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"zoomdiff_{table}{args.tag}.md").write_text(md)
    (out / f"zoomdiff_{table}{args.tag}.json").write_text(json.dumps(raw, indent=2, default=str))
    print(md)


def protocol(args, store: Path) -> str:
    return (f"Data: `{store}` ({'synthetic city ' + args.size + ', ' + str(args.days) + ' days, seed ' + str(args.city_seed) if args.data == 'synthetic' else 'real store'}); "
            f"test split: {'the last days, all places (split_by=time)' if any('split_by=time' in x for x in args.set) else 'held-out southern band of patches, all hours (split_by=band)'}; "
            f"{args.steps} training steps per model; overrides {args.set or 'none'}{f', ZoomDiff only {args.zd_set}' if args.zd_set else ''}; "
            f"sampling: {args.samples} sample(s), seed 0, each model's configured sampler{'' if args.steps_per_stage is None else f' overridden to {args.steps_per_stage} DDIM steps per stage'}"
            f"{'' if args.eta is None else f', DDIM eta overridden to {args.eta}'}"
            f"{'' if args.blend is None else f', overlapping windows combined by {args.blend!r} (mobscale.sample.tiles)'}"
            f"{'' if args.reconcile is None else f', reconcile={args.reconcile}'}"
            f"{'' if args.reconcile_levels is None else f', reconciled to the {args.reconcile_levels} stage outputs'}"
            f"{'' if args.nest_stages is None else f', nest_stages={args.nest_stages}'}. "
            f"MAE/RMSE/spRMSE in MB per unit per hour; PSNR with L = max of the real data of that level. "
            f"{'With several samples, MAE etc. are means over the samples; crps = fair CRPS of the samples as a forecast distribution (for a noise-free reference: its MAE); mae_of_mean = MAE of the sample mean. ' if args.samples > 1 else ''}"
            f"{'Oracle rows: the synthetic city generator itself drawn again (mobscale.config.data.SynthConfig.realisation). ' if args.oracle and args.data == 'synthetic' else ''}"
            f"Command: `python jobs/zoomdiff_tables.py {args.table} {' '.join(sys.argv[2:])}`. Lower is better except PSNR; best in bold.")


REFERENCES = [("context_profile", "context-profile-demo.yaml", []),
              ("context_profile (mean, no noise)", "context-profile-demo.yaml", ["model.noise=none"])]


def references(args, table: str, store: Path, region) -> dict:
    rows = {}
    ds = open_city(store)
    refs = list(REFERENCES) if "population" in ds else []  # the context profile needs population
    if any(x.startswith("data.windows.split_by=time") for x in args.set):  # same places in training: history exists
        refs.append(("historical profile", "historical-demo.yaml", []))
        refs.append(("historical profile (mean, no noise)", "historical-demo.yaml", ["model.noise=none"]))
    for name, cfgp, sets in refs:
        exp = train(args, table, name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", ""), cfgp, store, sets)
        gen = gen_path(args, table, exp.parent.name)
        sample(args, exp, store, gen)
        rows[name] = score(store, gen, region)
    rows["zeros"] = score(store, zeros_like(store), region)
    if open_city(store).attrs.get("kind") == "synthetic" and args.oracle:
        rows["oracle: the city's generator redrawn (perfect context-conditional model)"] = oracle(args, store, region, False)
        rows["oracle, knowing the hidden per-pixel factors"] = oracle(args, store, region, True)
    return rows


# ----------------------------------------------------------------------------------------------- tables


def table1(args) -> None:
    store = city(args)
    region = test_region(args, store, "demo.yaml")
    rows, raw = {}, {}
    models = (("ZoomDiff", "demo.yaml"), ("CSDI-style", "csdi-demo.yaml"), ("DiT-style", "dit-demo.yaml"))
    for name, cfgp in [m for m in models if args.models is None or m[0] in args.models]:
        exp = train(args, "table1", name, cfgp, store)
        gen = gen_path(args, "table1", name)
        raw[name] = {"sample": sample(args, exp, store, gen)}
        rows[name] = score(store, gen, region)
    rows.update(references(args, "table1", store, region))
    cols = [("bs@1h", "mae"), ("bs@1h", "rmse"), ("cell@1h", "mae"), ("cell@1h", "rmse")]
    cols += [(f"{l}@1h", m) for l in ("grid100", "grid50") for m in ("mae", "rmse", "sprmse", "psnr")]
    cols += [(f"{l}@1h", "jsd_volume") for l in ("bs", "grid50")]
    if args.samples > 1:
        cols += [(f"{l}@1h", m) for l in ("bs", "cell", "grid100", "grid50") for m in ("crps", "mae_of_mean")]
    md = markdown("ZoomDiff Table I/II on our data: all models x levels (1 h)", protocol(args, store), rows, cols)
    write(args, "table1", md, {"rows": rows, "raw": raw})


SAMPLING_ONLY = {"denoising"}  # DRDM settings read by the sampler only (mobscale.diffusion.drdm.DRDM.sample)


def sampled_as(export: Path, dst: Path, diffusion: dict[str, str]) -> Path:
    """``export``'s weights with ``diffusion`` settings that act only when sampling (``diffusion.denoising``:
    CD/SD) changed in its config, written to ``dst``. Why: training never reads them, so the CD and SD rows of
    Table III are one trained model sampled two ways (three trainings for five rows, and the rows differ only in what they
    compare)."""
    import yaml

    from mobscale.config import load_dict
    from mobscale.model.export import load_export, save_export

    if set(diffusion) - SAMPLING_ONLY:
        raise ValueError(f"{sorted(set(diffusion) - SAMPLING_ONLY)} change training; only {sorted(SAMPLING_ONLY)} may differ from the trained model")
    if (dst / "model.pt").exists():
        return dst
    e = load_export(export)
    d = yaml.safe_load(e.config_yaml)
    d["diffusion"].update(diffusion)
    y = yaml.safe_dump(d, sort_keys=False)
    load_dict(yaml.safe_load(y), source=str(dst))  # validated like any config
    return save_export(dst, kind=e.kind, config_yaml=y, state_dict=e.state_dict, normalisation=e.normalisation, extra=e.extra)


def _stage_rows(args, table: str, variants: list[tuple[str, list[str], dict[str, str]]], store: Path, region,
                config: str = "demo.yaml") -> tuple[dict, list]:
    """Train (once per distinct training setting), sample and score every stage of each variant (name, training
    overrides, sampling-only diffusion settings)."""
    rows, cols, stage_of = {}, [], {}  # stage_of: column key -> (level, resolution)
    slug = lambda n: n.replace(",", "").replace(" ", "_")  # noqa: E731
    for name, sets, at_sampling in variants:
        # variants that train alike share the model of the first of them, trained with its sampling settings
        first, _, first_at = next(v for v in variants if v[1] == sets)
        exp = train(args, table, slug(first), config, store, sets + [f"diffusion.{k}={v}" for k, v in first_at.items()])
        if name != first:
            exp = sampled_as(exp, exp.parent.parent / slug(name) / "export", at_sampling)
        gen = Path(args.work) / "gen" / f"{args.tag}" / table / f"{slug(name)}.zarr"
        gen.parent.mkdir(parents=True, exist_ok=True)
        rep = sample(args, exp, store, gen, reconcile=False)
        st = open_city(gen, group=schema.STAGES_GROUP)
        d = {}
        for k in range(len(st.data_vars)):
            sds, lvl, res = stage_dataset(gen, store, k)
            key = f"stage{k} ({res}, {lvl})"
            stage_of[key] = (lvl, res)
            d[key] = score(store, sds, region, levels=(lvl,), resolutions=(res,))[f"{lvl}@{res}"]
            d[key]["total_ratio"] = total_ratio(store, sds, lvl, region)
            if (key, "mae") not in cols:
                cols += [(key, "mae"), (key, "rmse"), (key, "total_ratio")]
        d["consistency"] = rep.get("stages")
        rows[name] = d
    # references at every stage's level and resolution: the noise-free context profile (the best reference of
    # Table I on this split) and all-zeros (total ratio 0 by construction, so that column is left out for it)
    refs = {}
    if "population" in open_city(store):  # the context profile needs population
        name, cfgp, sets = REFERENCES[1]
        e = train(args, table, "context_profile_mean", cfgp, store, sets)
        refs[f"reference: {name}"] = gen_path(args, table, e.parent.name)
        sample(args, e, store, refs[f"reference: {name}"], num_samples=1)  # deterministic: one sample is the reference
    refs["reference: all zeros"] = None
    for ref, g in refs.items():
        ds = open_city(g) if g is not None else zeros_like(store)
        rows[ref] = {}
        for key, (lvl, res) in stage_of.items():
            rows[ref][key] = score(store, ds, region, levels=(lvl,), resolutions=(res,))[f"{lvl}@{res}"]
            if g is not None:
                rows[ref][key]["total_ratio"] = total_ratio(store, ds, lvl, region)
    return rows, cols


def table3(args) -> None:
    store = city(args)
    region = test_region(args, store, "demo.yaml")
    # the denoising (CD/SD) acts only in the sampler: rows with the same noise and adding sample one trained model
    variants = [(f"{n}, {a}, {d}", [f"diffusion.noise={n}", f"diffusion.adding={a}"], {"denoising": d})
                for n, a, d in (("CN", "CA", "CD"), ("CN", "CA", "SD"), ("CN", "SA", "SD"), ("SN", "SA", "CD"), ("SN", "SA", "SD"))]
    rows, cols = _stage_rows(args, "table3", variants, store, region)
    md = markdown("ZoomDiff Table III on our data: noise schedules (stage outputs, S4T4, fine-greedy)", protocol(args, store), rows, cols)
    write(args, "table3", md, rows)


def table4(args) -> None:
    store = city(args)
    region = test_region(args, store, "demo.yaml")
    s3t2 = ["diffusion.spatial=[bs,cell,grid100]", "diffusion.temporal=[2h,1h]"]
    variants = [(n, s3t2 + [f"diffusion.rgp={r}"], {}) for n, r in (("Uniform", "uniform"), ("Coarse Gr.", "coarse_greedy"), ("Fine Gr.", "fine_greedy"))
                if args.rgp is None or r in args.rgp]
    rows, cols = _stage_rows(args, "table4", variants, store, region)
    md = markdown("ZoomDiff Table IV on our data: resolution greediness preference (S3T2)", protocol(args, store), rows, cols)
    write(args, "table4", md, rows)


def table6(args) -> None:
    store = city(args)
    region = test_region(args, store, "demo.yaml")
    rows = {}
    exp = train(args, "table1", "ZoomDiff", "demo.yaml", store)  # the generation model, refined zero-shot
    gen = gen_path(args, "table6", "zoomdiff_zero_shot")
    sample(args, exp, store, gen, refine_level="bs")
    rows["ZoomDiff (zero-shot, from the S4T4 model)"] = score(store, gen, region)
    # the same samples as refinement wrote them before 2026-12-07: scaled to the BS stage's daily totals only (the
    # S4T4 BS stage is at 1 day), which threw away the within-day shape of the given hourly BS traffic
    from zoomdiff_rescore import rebuild

    written = json.loads(open_city(gen).attrs["config"])["sample"]  # the spec the samples were written with
    lv = ("bs", *written["reconcile_levels"])  # --anchor stage's anchors: the BS stage plus the reconcile levels
    rows["ZoomDiff (zero-shot), same samples anchored to daily BS totals only (refine --anchor stage)"] = score(store, rebuild(gen, lv), region)
    if not args.no_refiner:
        exp2 = train(args, "table6", "zoomdiff_bs_grid50", "demo.yaml", store, ["diffusion.spatial=[bs,grid50]", "diffusion.temporal=[1h]"])
        gen2 = gen_path(args, "table6", "zoomdiff_refine_model")
        sample(args, exp2, store, gen2, refine_level="bs")
        rows["ZoomDiff (trained bs -> 50 m)"] = score(store, gen2, region)
    # mean_share splits by each pixel's share in its own training history: only when the test places were in
    # training (split_by=time); on a held-out district there is no history to take shares from
    by_time = any(x.startswith("data.windows.split_by=time") for x in args.set)
    for method in ("population", "mean_share", "uniform") if by_time else ("population", "uniform"):
        e = train(args, "table6", f"split_{method}", "context-profile-demo.yaml", store, [f"model.refine={method}"])
        g = gen.parent / f"split_{method}.zarr"
        sample(args, e, store, g, refine_level="bs", num_samples=1)  # a split is deterministic: its CRPS is its MAE
        rows[f"{method} split of BS traffic"] = score(store, g, region)
    cols = [(f"{l}@1h", m) for l in ("cell", "grid100", "grid50") for m in ("mae", "rmse", "sprmse", "psnr")]
    if args.samples > 1:  # a generative refiner scored as a distribution (and by its mean) beside the point splits
        cols += [(f"{l}@1h", m) for l in ("cell", "grid100", "grid50") for m in ("crps", "mae_of_mean")]
    md = markdown("ZoomDiff Table VI on our data: refining BS traffic (1 h) into finer levels", protocol(args, store), rows, cols)
    write(args, "table6", md, rows)


def table7(args) -> None:
    a = city(args, "cityA", seed=args.city_seed)
    b = city(args, "cityB", seed=args.city_seed + 100, pixels_per_bs=45.0, event_rate=0.03)
    region = test_region(args, b, "demo.yaml")
    rows = {}
    # DiT-style rather than CSDI-style as the baseline here: three whole-city samplings of CSDI's 50-step ancestral
    # sampler do not fit a CPU budget (~25 min each on 2 cores); the paper compares CSDI.
    for model, cfgp in [m for m in (("ZoomDiff", "demo.yaml"), ("DiT-style", "dit-demo.yaml")) if args.models is None or m[0] in args.models]:
        eb = train(args, "table7", f"{model}_B", cfgp, b)
        g = Path(args.work) / "gen" / f"{args.tag}" / "table7" / f"{model}_B.zarr"
        g.parent.mkdir(parents=True, exist_ok=True)
        sample(args, eb, b, g)
        rows[f"{model}: trained on B"] = score(b, g, region)
        ea = train(args, "table7", f"{model}_A", cfgp, a)
        g = g.parent / f"{model}_A_to_B_zero.zarr"
        sample(args, ea, b, g, normaliser_from=str(b), normaliser_fraction=0.05)
        rows[f"{model}: A -> B zero-shot"] = score(b, g, region)
        few = ["data.windows.val_fraction=0.5"] + (["model.trainable=transfer"] if model == "ZoomDiff" else [])
        ef = train(args, "table7", f"{model}_A_to_B_few", cfgp, b, few + [f"train.steps={max(20, args.steps // 5)}"], init_from=ea)
        g = g.parent / f"{model}_A_to_B_few.zarr"
        sample(args, ef, b, g)
        rows[f"{model}: A -> B few-shot"] = score(b, g, region)
    rows.update({f"reference on B: {k}": v for k, v in references(args, "table7", b, region).items()})
    cols = [(f"{l}@1h", m) for l in ("bs", "grid50") for m in ("mae", "rmse", "psnr")]
    hdr = protocol(args, b) + (" Cross-city: city A = seed %d, city B = seed %d with denser BS and more events; zero-shot uses B's "
                               "context only, normalisation fitted on 5%% of B's training windows; few-shot fine-tunes on a quarter "
                               "of B's districts for a fifth of the steps (ZoomDiff: conditions, embeddings, fusion, last block)." % (args.city_seed, args.city_seed + 100))
    md = markdown("ZoomDiff Table VII on our data: cross-city transfer", hdr, rows, cols)
    write(args, "table7", md, rows)


def sampler(args) -> None:
    """Fast-sampler trade-off of the Table I ZoomDiff model: DDIM steps per stage vs accuracy of every level on the
    held-out district, generation time of the whole city, and the consistency of the generated levels before and
    after reconciliation (from the sampler's own report)."""
    store = city(args)
    region = test_region(args, store, "demo.yaml")
    exp = train(args, "table1", "ZoomDiff", "demo.yaml", store)
    rows = {}
    for sps in args.sweep:
        gen = Path(args.work) / "gen" / f"{args.tag}" / "sampler" / f"sps{sps}.zarr"
        from mobscale.model.export import load_export

        if sps == load_export(exp).config.sample.steps_per_stage:  # the Table I sample itself
            gen = Path(args.work) / "gen" / f"{args.tag}" / "table1" / "ZoomDiff.zarr"
        gen.parent.mkdir(parents=True, exist_ok=True)
        a2 = argparse.Namespace(**{**vars(args), "steps_per_stage": sps})
        rep = sample(a2, exp, store, gen)
        d = score(store, gen, region)
        d["time"] = {"generation_wall_s": rep["generation_wall_s"]}
        for st in rep.get("stages", []):
            d[f"consistency stage{st['stage']} ({st['level']})"] = {"before": st["rel_l1_stage_vs_children_raw"], "after": st["rel_l1_stage_vs_final"]}
        rows[f"{sps} DDIM steps per stage"] = d
    cols = [("bs@1h", "mae"), ("cell@1h", "mae"), ("grid100@1h", "mae"), ("grid50@1h", "mae"), ("grid50@1h", "jsd_volume"), ("time", "generation_wall_s")]
    k = next(iter(rows.values()))
    cols += [(c, w) for c in k if c.startswith("consistency") for w in ("before", "after")]
    md = markdown("ZoomDiff fast sampler: DDIM steps per stage vs accuracy, time and level consistency", protocol(args, store), rows, cols)
    md += ("\nconsistency = relative L1 between each stage's unit totals and the sum of the finest output inside the unit, before "
           "reconciliation (the model's own inconsistency) and after it (0 for the top anchor; see the sampler's report). "
           "generation_wall_s: whole 64x64 x 7-day city, one process, generation only.\n")
    write(args, "sampler", md, rows)


def efficiency(args) -> None:
    """Parameters, training speed and whole-city sampling time of the Table I models, read from their own runs
    (metrics.jsonl and the sampler's report), so the figures are those of the runs that made Table I."""
    import torch

    from mobscale.model.export import load_export

    store = city(args)
    rows = {}
    models = (("ZoomDiff", "demo.yaml"), ("CSDI-style", "csdi-demo.yaml"), ("DiT-style", "dit-demo.yaml"))
    for name, cfgp in [m for m in models if args.models is None or m[0] in args.models]:
        exp = train(args, "table1", name, cfgp, store)
        e = load_export(exp)
        n_par = sum(v.numel() for v in e.state_dict.values())
        wall = json.loads((exp.parent / "wall.json").read_text())["train_wall_s"] if (exp.parent / "wall.json").exists() else float("nan")
        gen = Path(args.work) / "gen" / f"{args.tag}" / "table1" / f"{name}.zarr"
        rep = sample(args, exp, store, gen)
        cfg = e.config
        calls = (len(rep.get("stages", [])) + 1) * (cfg.sample.steps_per_stage or 0) if name == "ZoomDiff" else (cfg.sample.steps_per_stage or cfg.diffusion.steps)
        if name == "ZoomDiff" and not cfg.sample.steps_per_stage:
            calls = cfg.diffusion.steps
        rows[name] = {"parameters": n_par, "train_s_per_step": wall / max(1, args.steps), "sample_city_s": rep["generation_wall_s"],
                      "network_calls_per_window": calls, "levels_per_pass": len(rep.get("stages", [])) + 1 if name == "ZoomDiff" else 1}
    K = 4
    rows[f"CSDI-style x {K} (one single-level run per level)"] = {"sample_city_s": K * rows["CSDI-style"]["sample_city_s"], "levels_per_pass": K}
    rows[f"DiT-style x {K} (one single-level run per level)"] = {"sample_city_s": K * rows["DiT-style"]["sample_city_s"], "levels_per_pass": K}
    lines = ["# Efficiency (ZoomDiff Table V on our data)", "", protocol(args, store), "",
             "| method | parameters | train s/step | network calls per window | levels | sample whole city (s) |", "|---|---|---|---|---|---|"]
    for r, d in rows.items():
        lines.append(f"| {r} | {d.get('parameters', '-')} | {d.get('train_s_per_step', float('nan')):.3g} | {d.get('network_calls_per_window', '-')} | "
                     f"{d['levels_per_pass']} | {d['sample_city_s']:.1f} |")
    md = "\n".join(lines) + (f"\n\nTimes from the Table I runs (training wall time / steps, including data preparation; sampling wall time of the "
                             f"whole 64x64 x 7-day city, generation only). One ZoomDiff pass yields all {K} levels; a single-resolution model "
                             f"yields one level per run, so K levels cost K runs. Threads: {torch.get_num_threads()}.\n")
    write(args, "efficiency", md, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", choices=["table1", "table3", "table4", "table6", "table7", "efficiency", "sampler"])
    ap.add_argument("--sweep", type=int, nargs="+", default=[1, 2, 5, 10, 20], help="sampler: DDIM steps per stage to compare")
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--size", default="64x64")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--city-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--no-refiner", action="store_true",
                    help="table6: skip the model trained for BS -> 50 m (its BS stage is hourly, so its row does not depend on the refine anchor)")
    ap.add_argument("--models", nargs="+", choices=["ZoomDiff", "CSDI-style", "DiT-style"], default=None,
                    help="table1, table7: only these models (default: all that table has); the references are always reported")
    ap.add_argument("--rgp", nargs="+", choices=["uniform", "coarse_greedy", "fine_greedy"], default=None,
                    help="table4: only these RGP settings (default: all three)")
    ap.add_argument("--samples", type=int, default=1,
                    help="samples per model (K > 1 adds the ensemble columns: fair CRPS and the MAE of the sample mean); "
                         "mae/rmse/... are then means over the samples")
    ap.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=True,
                    help="synthetic city: add the oracle rows (the city's own generator redrawn, --samples times)")
    ap.add_argument("--steps-per-stage", type=int, default=None, help="override every model's sampler steps (default: each config's)")
    ap.add_argument("--eta", type=float, default=None, help="override the DDIM eta of models that sample with DDIM (0 = deterministic)")
    ap.add_argument("--blend", choices=["ramp", "core"], default=None,
                    help="override how every model's overlapping windows combine (default: each config's sample.blend)")
    ap.add_argument("--reconcile", action=argparse.BooleanOptionalAction, default=None,
                    help="override every model's sample.reconcile (scale the finest output to its own stage outputs)")
    ap.add_argument("--reconcile-levels", default=None, metavar="bs[,cell]",
                    help="override every model's sample.reconcile_levels (which stage outputs reconciliation scales to)")
    ap.add_argument("--nest-stages", action=argparse.BooleanOptionalAction, default=None,
                    help="override every model's sample.nest_stages (ZoomDiff: each stage scaled to the previous one's totals in the sampler)")
    ap.add_argument("--out", default=str(REPO / "results"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides for every model (e.g. data.windows.patch=8)")
    ap.add_argument("--zd-set", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides for the ZoomDiff models only (e.g. model.tpe_periodic=0)")
    ap.add_argument("--work", default=str(REPO / "runs" / "tables"), help="trained models and generated stores (cached)")
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. _mobilebj)")
    args = ap.parse_args()
    setup_logging()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    globals()[args.table](args)


if __name__ == "__main__":
    main()
