"""City-scale generation into one Zarr store: template -> shard tasks (submitit) -> reconciliation -> rename.

1. **Template.** The output store is created first under ``.OUT.inprogress`` (coordinates, context copied
   from the context store, every traffic level and every stage output as empty chunked arrays, attrs with
   the model and config provenance) and a manifest of the run's parameters.
2. **Shards.** The city is split into chunk-aligned shards (``tiles.TilePlan.shards``: samples x time
   windows x blocks of 128x128-pixel chunks). One submitit task per shard group (SLURM array, or local
   processes) generates every window touching its shards, combines overlapping windows (``blend``: ramp
   weights, no seams; or each pixel from the window with the nearest centre, see tiles.py), writes only its own regions of the ``stages`` group, and only then writes the shard's
   completion marker. A task killed mid-write leaves no marker; its shard is redone on the next run.
3. **Reconciliation** (one pass, time chunk by time chunk, bounded memory): unit totals of every stage
   are computed over the whole city (units straddling tiles become consistent) and the stage outputs are
   re-projected onto whole units; the finest output becomes ``traffic_grid50`` -- with ``reconcile`` it is
   first scaled top-down so that it sums exactly to the stage outputs of ``reconcile_levels`` (BS by default;
   cells too on request; when the model has such stages) -- and the coarser root levels are its exact sums. The consistency error of the
   stage outputs against the sums of their children is reported before and after (``reconcile.json``).
4. **Rename** to OUT and validate. Re-running the same command resumes an interrupted run (finished shards
   are skipped) and is a no-op on a finished one.

Every window's noise comes from a seed derived from (seed, sample, t0, y0, x0), so a shard regenerated alone,
or after an interruption, is bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from mobscale.data import pyramid, schema
from mobscale.data.store import is_store, open_city, store_attrs_json, write_region, write_template
from mobscale.data.windows import HOURS
from mobscale.errors import ConfigError, MobscaleError, OutputExistsError, StoreError
from mobscale.log import get_logger
from mobscale.sample.tiles import Shard, TilePlan, shard_groups, window_weight

log = get_logger(__name__)

MANIFEST = "_mobscale_sample.json"
MARKERS = "_shards"
LOGS = "_logs"
REPORT = "reconcile.json"
CHUNK_XY = 128
RECONCILE_LEVELS = ("bs", "cell")  # levels the finest output can be reconciled to, coarse -> fine
REFINE_ANCHOR_LEVELS = ("bs", "cell", "grid100")  # ... and, when refining, the given level can also be grid100


@dataclass
class SampleSpec:
    """All parameters of one sampling run (its hash identifies the run for resuming)."""

    export: str
    context: str
    out: str
    seed: int = 0
    num_samples: int = 1
    steps_per_stage: int | None = None
    eta: float = 0.0
    nest_stages: bool = False  # DRDM.sample(nest=...): each stage scaled to the previous one's unit totals
    reconcile: bool = True
    reconcile_levels: tuple[str, ...] = ("bs",)  # anchors of `reconcile`, from RECONCILE_LEVELS
    overlap: int = 4
    blend: str = "ramp"  # "ramp" | "core" (mobscale.sample.tiles)
    batch_size: int = 16
    shards: int = 1
    keep_stages: bool = True
    refine_level: str | None = None  # refine mode: level of the coarse input taken from `context`
    # refine mode: "hourly" = the finest output matches the given coarse traffic hour by hour (all the input says);
    # "stage" = only its totals over the refine stage's time blocks (e.g. 1 day for S4T4; the behaviour before
    # 2026-12-07, which threw away the given within-day shape: results/README.md, "Refinement")
    refine_anchor: str = "hourly"
    normaliser_from: str | None = None  # zero-shot transfer: refit the normalisation on this store's traffic...
    normaliser_fraction: float = 0.05  # ...using this fraction of its training windows (ZoomDiff Table VII)
    threads: int = 1

    def run_hash(self) -> str:
        keys = {k: v for k, v in asdict(self).items() if k not in ("out", "batch_size", "threads")}
        keys["export_sha"] = _file_sha(Path(self.export) / "model.pt") if Path(self.export).is_dir() else _file_sha(Path(self.export))
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _file_sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def window_seed(seed: int, sample: int, t0: int, y0: int, x0: int) -> int:
    return int(np.random.SeedSequence([seed, sample, t0, y0, x0]).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


# ---------------------------------------------------------------------------------------------- planning


@dataclass
class Layout:
    """Geometry shared by the driver and the tasks (derived from the export and the context store)."""

    H: int
    W: int
    T: int  # hours generated (whole windows)
    P: int
    L: int
    K: int
    stages: list[tuple[str, str]]
    time_chunk: int
    plan: TilePlan = field(repr=False)


def make_layout(spec: SampleSpec, gen=None) -> Layout:
    from mobscale.data.windows import CityArrays
    from mobscale.sample.generators import load_generator

    gen = gen or load_generator(spec.export)
    arr = CityArrays(spec.context, cache_bytes=0, require_traffic=False)
    P, L = gen.patch, gen.hours
    if arr.H < P or arr.W < P:
        raise ConfigError(f"{spec.context}: city {arr.H}x{arr.W} px is smaller than the model's patch ({P})")
    if arr.T < L:
        raise ConfigError(f"{spec.context}: {arr.T} h of context is shorter than one window ({L} h)")
    plan = TilePlan.make(arr.H, arr.W, arr.T, P, L, spec.overlap)
    tc = 24 if L % 24 == 0 else math.gcd(L, 24)
    return Layout(arr.H, arr.W, plan.T_covered, P, L, len(gen.stages), [tuple(s) for s in gen.stages], tc, plan)


# ---------------------------------------------------------------------------------------------- template


def _template(spec: SampleSpec, lay: Layout, gen) -> tuple[xr.Dataset, xr.Dataset]:
    import dask.array as da

    ctx = open_city(spec.context)
    f = 60 // pyramid.time_step_minutes(ctx)
    hours = ctx["time"].values[::f][: lay.T]
    keep_coords = [c for c in schema.REQUIRED_COORDS if c in ctx.coords and c != "time"]
    keep_coords += [c for c in ("cell_sector", "cell_azimuth", "poi_category", "hour_of_week") if c in ctx.coords]
    root = xr.Dataset(coords={c: ctx[c].load() for c in keep_coords})
    root = root.assign_coords(time=("time", hours))
    root["pixel_cell"] = ctx["pixel_cell"].load()
    for v in ("aoi", "house_road", "poi", "zone", "observed"):
        if v in ctx:
            root[v] = ctx[v].load()
    if "population" in ctx and ctx["population"].dims[0] == "hour_of_week":
        root["population"] = ctx["population"].load()  # hour-of-week table: (168, H, W), written with the template
    S = spec.num_samples
    lead = (("sample",), (S,)) if S > 1 else ((), ())
    tc = lay.time_chunk
    for lvl in schema.SPATIAL_LEVELS:
        dims = lead[0] + schema.LEVEL_DIMS[lvl]
        shape = lead[1] + tuple(lay.T if d == "time" else root.sizes[d] for d in schema.LEVEL_DIMS[lvl])
        chunks = tuple(1 if d == "sample" else tc if d == "time" else -1 for d in dims)
        root[schema.TRAFFIC_VAR[lvl]] = (dims, da.zeros(shape, chunks=chunks, dtype=np.float32), dict(schema.TRAFFIC_ATTRS))
    if S > 1:
        root = root.assign_coords(sample=("sample", np.arange(S, dtype=np.int32)))
    exp = gen.export
    prov = {
        "generator": "mobscale sample" if spec.refine_level is None else "mobscale refine",
        "model_kind": exp.kind,
        "export": str(Path(spec.export).resolve()),
        "export_sha256": _file_sha(Path(spec.export) / "model.pt") if Path(spec.export).is_dir() else None,
        "context": str(Path(spec.context).resolve()),
        "context_city": ctx.attrs.get("city"),
    }
    root.attrs = {
        "mobscale_schema": schema.SCHEMA_VERSION,
        "city": ctx.attrs.get("city", "generated"),
        "kind": "generated",
        "crs": ctx.attrs.get("crs"),
        "lat0": ctx.attrs.get("lat0"),
        "lon0": ctx.attrs.get("lon0"),
        "pixel_size_m": ctx.attrs.get("pixel_size_m", schema.PIXEL_SIZE_M),
        "time_step_minutes": 60,
        "provenance": store_attrs_json(prov),
        "config": store_attrs_json({"sample": asdict(spec), "model_config_yaml": exp.config_yaml}),
        "levels_present": store_attrs_json(list(schema.SPATIAL_LEVELS)),
        "levels_built_by": store_attrs_json({"grid50": "finest stage output" + (_anchor_text(spec, lay) if spec.reconcile else "")
                                             + ("; 0 where the context's observed mask is 0" if "observed" in ctx else ""),
                                             "grid100": "2x2 sum of grid50", "cell": "sum of grid50 pixels", "bs": "sum of cells"}),
        "sample_run_hash": spec.run_hash(),
    }
    stages = xr.Dataset(coords={"time": ("time", hours), "y": root["y"], "x": root["x"], "sample": ("sample", np.arange(S, dtype=np.int32))})
    for k, (lvl, res) in enumerate(lay.stages):
        stages[f"stage_{k}"] = (("sample", "time", "y", "x"), da.zeros((S, lay.T, lay.H, lay.W), chunks=(1, tc, -1, -1), dtype=np.float32),
                                {**schema.DENSITY_ATTRS, "stage": k, "level": lvl, "time_resolution": res})
    stages.attrs = {"stages": store_attrs_json(lay.stages), "description": "per-pixel density of every DRDM stage's output (MB per pixel per hour)"}
    return root, stages


def _anchor_text(spec: SampleSpec, lay: Layout) -> str:
    lv = anchor_levels(spec, lay.stages)
    parts = [f"the given hourly {x} traffic of the context" if x == spec.refine_level and spec.refine_anchor == "hourly" else f"the {x} stage output" for x in lv]
    return " reconciled top-down to " + (", then ".join(parts) if parts else "nothing")


# ---------------------------------------------------------------------------------------------- shard task


def _state_dir(out: Path) -> Path:
    """Bookkeeping next to the store (Zarr warns about foreign files inside it): manifest, shard markers,
    task logs and the reconciliation report. Kept after success (the logs and the report are useful)."""
    return Path(str(out) + ".sampling")


def _marker(out: Path, shard: Shard) -> Path:
    return _state_dir(out) / MARKERS / f"{shard.key()}.done"


def _fault(point: str, shard: Shard) -> None:
    """Fault injection for the resume tests: MOBSCALE_FAULT=<point>:<shard index> kills the process there."""
    want = os.environ.get("MOBSCALE_FAULT", "")
    if want and want == f"{point}:{shard.index}":
        log.warning("fault injection: killing the task at %s of shard %d", point, shard.index)
        os._exit(17)


def load_for(spec: SampleSpec):
    """The window generator of ``spec``: the export, with its normalisation refitted on a small fraction of the
    target city's training windows when ``normaliser_from`` is set (zero-shot cross-city generation; the
    public ZoomDiff code fits its scaler on 5 % of the target city the same way)."""
    from mobscale.data.windows import CityWindows, fit_normaliser
    from mobscale.sample.generators import load_generator

    gen = load_generator(spec.export)
    if spec.normaliser_from:
        cfg = gen.export.config
        w = CityWindows(spec.normaliser_from, cfg.data.windows, "train", [("grid50", "1h")])
        n = max(1, int(math.ceil(spec.normaliser_fraction * len(w))))
        gen.norm = fit_normaliser(w, cfg.data.windows.transform, max_windows=n, seed=spec.seed)
        log.info("normalisation refitted on %d of %d training windows of %s: %s", n, len(w), spec.normaliser_from, gen.norm.state_dict())
    return gen


def generate_shard(spec: SampleSpec, lay: Layout, gen, shard: Shard, arr) -> np.ndarray:
    """Blended stage densities over the shard's region: (K, T_s, H_s, W_s) float32."""
    from mobscale.data.windows import ContextWindows

    coarse = None
    if spec.refine_level is not None:
        k_ref = _refine_stage(gen, spec.refine_level)
        coarse = lay.stages[k_ref]
    wins = lay.plan.windows_touching(shard.t, shard.y, shard.x)
    ds = ContextWindows(arr, wins, lay.P, lay.L, coarse=coarse)
    Ts, Hs, Ws = shard.t.stop - shard.t.start, shard.y.stop - shard.y.start, shard.x.stop - shard.x.start
    acc = np.zeros((lay.K, Ts, Hs, Ws), dtype=np.float64)
    wsum = np.zeros((Ts, Hs, Ws), dtype=np.float64)
    if spec.blend not in ("ramp", "core"):
        raise ConfigError(f"sample blend must be 'ramp' or 'core', got '{spec.blend}'")
    ramp_w = window_weight(lay.P, spec.overlap)
    collate = torch.utils.data.default_collate
    for b0 in range(0, len(wins), spec.batch_size):
        idx = list(range(b0, min(len(wins), b0 + spec.batch_size)))
        batch = collate([ds[i] for i in idx])
        gens = [torch.Generator().manual_seed(window_seed(spec.seed, shard.sample, w.t0, w.y0, w.x0)) for w in (wins[i] for i in idx)]
        refine = None
        if coarse is not None:
            refine = (_refine_stage(gen, spec.refine_level), batch.pop("coarse"))
        out = gen.generate(batch, gens, steps_per_stage=spec.steps_per_stage, eta=spec.eta, refine=refine, nest=spec.nest_stages).numpy()
        for j, i in enumerate(idx):
            w = wins[i]
            ty = slice(max(w.t0, shard.t.start), min(w.t0 + lay.L, shard.t.stop))
            yy = slice(max(w.y0, shard.y.start), min(w.y0 + lay.P, shard.y.stop))
            xx = slice(max(w.x0, shard.x.start), min(w.x0 + lay.P, shard.x.stop))
            src = (slice(None), slice(ty.start - w.t0, ty.stop - w.t0), slice(yy.start - w.y0, yy.stop - w.y0), slice(xx.start - w.x0, xx.stop - w.x0))
            dst_t = slice(ty.start - shard.t.start, ty.stop - shard.t.start)
            dst_y = slice(yy.start - shard.y.start, yy.stop - shard.y.start)
            dst_x = slice(xx.start - shard.x.start, xx.stop - shard.x.start)
            wgt = lay.plan.core_weight(w.y0, w.x0) if spec.blend == "core" else ramp_w
            wv = wgt[src[2], src[3]]
            acc[:, dst_t, dst_y, dst_x] += out[j][src] * wv
            wsum[dst_t, dst_y, dst_x] += wv
    if (wsum <= 0).any():
        raise StoreError(f"shard {shard.key()}: {int((wsum <= 0).sum())} cells not covered by any window (tiling bug)")
    return (acc / wsum).astype(np.float32)


def _refine_stage(gen, level: str) -> int:
    ks = [k for k, (lvl, _) in enumerate(gen.stages) if lvl == level]
    if not ks:
        raise ConfigError(f"the model has no stage at level '{level}' (stages: {gen.stages}); cannot refine from it")
    if ks[-1] == len(gen.stages) - 1:
        raise ConfigError(f"level '{level}' is the model's finest stage; nothing finer to refine into")
    return ks[-1]


def run_shard_group(spec_d: dict, shard_ds: list[dict]) -> dict:
    """submitit entry point: generate and write a group of shards (skipping finished ones)."""
    from mobscale.data.windows import CityArrays
    from mobscale.log import setup_logging

    setup_logging()
    spec = SampleSpec(**spec_d)
    torch.set_num_threads(max(1, spec.threads))
    tmp = _tmp_path(Path(spec.out))
    shards = [Shard(d["index"], d["sample"], slice(*d["t"]), slice(*d["y"]), slice(*d["x"])) for d in shard_ds]
    todo = [s for s in shards if not _marker(Path(spec.out), s).exists()]
    if not todo:
        return {"done": [s.index for s in shards], "skipped": len(shards)}
    gen = load_for(spec)
    lay = make_layout(spec, gen)
    arr = CityArrays(spec.context, cache_bytes=256 << 20, require_traffic=False)
    t_gen = t_write = 0.0
    for s in todo:
        t0 = time.perf_counter()
        dens = generate_shard(spec, lay, gen, s, arr)
        t1 = time.perf_counter()
        region = {"sample": slice(s.sample, s.sample + 1), "time": s.t, "y": s.y, "x": s.x}
        for k in range(lay.K):
            block = xr.Dataset({f"stage_{k}": (("sample", "time", "y", "x"), dens[k][None])})
            write_region(block, tmp, region, group=schema.STAGES_GROUP)
            if k == 0:
                _fault("mid-write", s)
        t2 = time.perf_counter()
        t_gen += t1 - t0
        t_write += t2 - t1
        _marker(Path(spec.out), s).write_text(json.dumps({"shard": s.key(), "generate_s": t1 - t0, "write_s": t2 - t1, "pid": os.getpid()}))
        _fault("after-marker", s)
    return {"done": [s.index for s in shards], "generate_s": t_gen, "write_s": t_write}


def _shard_dict(s: Shard) -> dict:
    return {"index": s.index, "sample": s.sample, "t": (s.t.start, s.t.stop), "y": (s.y.start, s.y.stop), "x": (s.x.start, s.x.stop)}


# ---------------------------------------------------------------------------------------------- reconciliation


def _block_sums(a: np.ndarray, b: int) -> np.ndarray:
    """Sum consecutive blocks of b steps along axis 0."""
    return a.reshape(a.shape[0] // b, b, *a.shape[1:]).sum(1) if b > 1 else a


def _unit_pixels(umap: np.ndarray, n: int, observed: np.ndarray | None) -> np.ndarray:
    """Pixels per unit that may carry traffic (all, or the observed ones), at least 1 to divide by."""
    if observed is None:
        return pyramid.unit_counts(umap, n).astype(np.float64)
    return np.maximum(np.bincount(umap[observed], minlength=n), 1).astype(np.float64)


def _top_down(F: np.ndarray, anchors: list[tuple[np.ndarray, int, np.ndarray]], observed: np.ndarray | None = None) -> np.ndarray:
    """Scale the fine field F (t, H, W) so that its unit sums over time blocks match each anchor in turn.

    anchors: [(unit_map (H, W), block hours, target (t/b, n_units))], coarse -> fine along the network tree
    (BS then cells), each target already consistent with the previous one. Units whose current sum is zero
    receive their target spread uniformly over their pixels (the ``observed`` ones when a mask is given) and hours.
    """
    F = F.astype(np.float64)
    for umap, b, target in anchors:
        n = target.shape[1]
        cur = _block_sums(pyramid.units_sum(F, umap, n), b)  # (t/b, n)
        counts = _unit_pixels(umap, n, observed)
        scale = np.where(cur > 0, target / np.where(cur > 0, cur, 1.0), 0.0)
        fill = np.where(cur > 0, 0.0, target / (counts[None, :] * b))  # per pixel-hour
        s_t = np.repeat(scale, b, axis=0)[:, umap]  # (t, H, W)
        f_t = np.repeat(fill, b, axis=0)[:, umap]
        F = F * s_t + (f_t if observed is None else f_t * observed)
    return F


def _nest_targets(child: np.ndarray, child_parent: np.ndarray, n_parent: int, b_child: int, parent: np.ndarray, b_parent: int) -> np.ndarray:
    """Scale child unit targets (t/b_child, n_child) so they sum to the parent targets (t/b_parent, n_parent)
    within each parent unit and parent block (blocks nest: b_parent is a multiple of b_child)."""
    r = b_parent // b_child
    cur = _block_sums(pyramid.units_sum(child.astype(np.float64), child_parent, n_parent), r)  # (t/b_parent, n_parent)
    scale = np.where(cur > 0, parent / np.where(cur > 0, cur, 1.0), 0.0)
    counts = pyramid.unit_counts(child_parent, n_parent).astype(np.float64)
    fill = np.where(cur > 0, 0.0, parent / (counts[None, :] * r))
    s = np.repeat(scale, r, axis=0)[:, child_parent]
    f = np.repeat(fill, r, axis=0)[:, child_parent]
    return child * s + f


def anchor_levels(spec: SampleSpec, stages: list[tuple[str, str]]) -> list[str]:
    """Levels whose stage outputs the finest output is scaled to (coarse -> fine): ``spec.reconcile_levels``, plus
    the level refined from (its stage output is the given coarse traffic), each only if the model has a stage there
    before the last one. When refining with ``refine_anchor="hourly"`` the refine level is anchored to the given
    traffic itself, and the model's stages coarser than it are dropped (the given traffic already fixes them)."""
    last_at = {lvl: k for k, (lvl, _) in enumerate(stages)}
    want = set(spec.reconcile_levels) | ({spec.refine_level} if spec.refine_level else set())
    order = list(REFINE_ANCHOR_LEVELS)
    out = [lvl for lvl in order if lvl in want and lvl in last_at and last_at[lvl] < len(stages) - 1]
    out = [lvl for lvl in out if lvl in RECONCILE_LEVELS or (lvl == spec.refine_level and spec.refine_anchor == "hourly")]
    if spec.refine_level is not None and spec.refine_anchor == "hourly":
        out = [lvl for lvl in out if order.index(lvl) >= order.index(spec.refine_level)]
    return out


def given_hourly(context: str | Path, level: str) -> np.ndarray:
    """(T, n_units) hourly totals of ``level`` as the context store holds them (the coarse input of refinement)."""
    from mobscale.data.windows import CityArrays

    arr = CityArrays(context, cache_bytes=0, require_traffic=False)
    t = arr.level_table(level)
    if t is None:
        raise StoreError(f"{context}: has no traffic_{level} to refine from")
    return t.reshape(t.shape[0], -1).astype(np.float64)


def reconcile_field(F: np.ndarray, totals: list[np.ndarray], stages: list[tuple[str, str]], umaps: dict, cell_bs: np.ndarray,
                    levels: list[str], observed: np.ndarray | None = None, given: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Top-down reconciliation of the finest output F (t, H, W) to the stage outputs at ``levels``.

    totals[k]: stage k's per-hour unit totals (t, n_units of its level); umaps: level -> (unit_map, n_units).
    Each anchor level's target is its last stage's totals over that stage's time blocks; a cell target is first
    rescaled to sum to the BS target above it, so the anchors are nested and all are met exactly.
    given: level -> (t, n_units) hourly totals that are data, not a stage output (refinement's coarse input): that
    level's target is them hour by hour. A finer anchor with longer blocks (cells at 4 h under hourly BS) is nested
    into their block sums, and the given level is applied once more at the end, so it is met exactly and the finer
    anchor up to the within-block shape the given hours impose.
    """
    given = given or {}
    last_at = {lvl: k for k, (lvl, _) in enumerate(stages)}
    anchors, prev = [], None
    for lvl in levels:
        if lvl in given:
            b, target = 1, given[lvl]
        else:
            k = last_at[lvl]
            b = HOURS[stages[k][1]]
            target = _block_sums(totals[k], b)
        if prev is not None and lvl == "cell" and prev[2] == "bs":  # cells nested in BS: make the cell targets sum to the BS targets
            pt, pb = prev[0], prev[1]
            if pb < b:  # hourly given BS over 4 h cells: nest into the BS totals of the cells' blocks
                pt, pb = _block_sums(pt, b // pb), b
            target = _nest_targets(target, cell_bs, umaps["bs"][1], b, pt, pb)
        anchors.append((umaps[lvl][0], b, target))
        prev = (target, b, lvl)
    if not anchors:
        return F
    first_given = next((i for i, lvl in enumerate(levels) if lvl in given), None)
    if first_given is not None and first_given < len(anchors) - 1:
        anchors.append(anchors[first_given])  # the given data wins over the model's finer stage
    return _top_down(F, anchors, observed)


def finalize(spec: SampleSpec, lay: Layout, progress: bool = True) -> dict:
    """Reconcile and write the root levels, time chunk by time chunk; returns the consistency report."""
    from tqdm.auto import tqdm

    tmp = _tmp_path(Path(spec.out))
    root = open_city(tmp)
    st = open_city(tmp, group=schema.STAGES_GROUP)
    pc = np.asarray(root["pixel_cell"].values)
    cb = np.asarray(root["cell_bs"].values)
    C, B = root.sizes["cell"], root.sizes["bs"]
    # pixels the context marks unobserved (importer padding, squares absent from the source) carry no traffic in
    # the real data by definition: every stage output is zeroed there before unit totals and reconciliation
    observed = np.asarray(root["observed"].values) > 0 if "observed" in root else None
    umaps = {lvl: pyramid.unit_map(root, lvl) for lvl in schema.SPATIAL_LEVELS}
    unit_pixels = {lvl: _unit_pixels(um, n, observed) for lvl, (um, n) in umaps.items()}
    anchors_lv = anchor_levels(spec, lay.stages)
    given_all = None
    if spec.reconcile and spec.refine_level is not None and spec.refine_anchor == "hourly" and spec.refine_level in anchors_lv:
        given_all = given_hourly(spec.context, spec.refine_level)
        if given_all.shape[0] < lay.T:
            raise StoreError(f"{spec.context}: traffic_{spec.refine_level} covers {given_all.shape[0]} h, fewer than the {lay.T} h generated")
    raw_err = {k: [0.0, 0.0] for k in range(lay.K - 1)}
    fin_err = {k: [0.0, 0.0] for k in range(lay.K - 1)}
    S = spec.num_samples
    tc = lay.time_chunk
    bar = tqdm(total=S * (lay.T // tc), desc="reconcile", unit="chunk", disable=not progress, leave=False)
    for s in range(S):
        for t0 in range(0, lay.T, tc):
            tsl = slice(t0, t0 + tc)
            D = np.stack([np.asarray(st[f"stage_{k}"].isel(sample=s, time=tsl).values, dtype=np.float64) for k in range(lay.K)])
            if observed is not None:
                D *= observed
            totals = []
            for k, (lvl, res) in enumerate(lay.stages):  # whole-unit totals per hour, re-projected onto units
                um, n = umaps[lvl]
                U = pyramid.units_sum(D[k], um, n)
                totals.append(U)
                D[k] = (U / unit_pixels[lvl])[:, um]
                if observed is not None:
                    D[k] *= observed
            F = D[-1]
            for k in range(lay.K - 1):
                lvl, res = lay.stages[k]
                um, n = umaps[lvl]
                want = _block_sums(totals[k], HOURS[res])
                got = _block_sums(pyramid.units_sum(F, um, n), HOURS[res])
                raw_err[k][0] += float(np.abs(want - got).sum())
                raw_err[k][1] += float(np.abs(got).sum())
            if spec.reconcile and anchors_lv:
                given = None if given_all is None else {spec.refine_level: given_all[tsl]}
                F = reconcile_field(F, totals, lay.stages, umaps, cb, anchors_lv, observed, given)
            F32 = F.astype(np.float32)
            cell = pyramid.units_sum(F32, pc, C)
            levels = {
                "grid50": F32,
                "grid100": pyramid.block_sum(F32),
                "cell": cell,
                "bs": pyramid.units_sum(cell, cb, B),
            }
            for k in range(lay.K - 1):
                lvl, res = lay.stages[k]
                um, n = umaps[lvl]
                want = _block_sums(totals[k], HOURS[res])
                got = _block_sums(pyramid.units_sum(F32.astype(np.float64), um, n), HOURS[res])
                fin_err[k][0] += float(np.abs(want - got).sum())
                fin_err[k][1] += float(np.abs(got).sum())
            lead = ("sample",) if S > 1 else ()
            block = xr.Dataset({schema.TRAFFIC_VAR[l]: (lead + schema.LEVEL_DIMS[l], v[None] if S > 1 else v) for l, v in levels.items()})
            region = {"time": tsl, **({"sample": slice(s, s + 1)} if S > 1 else {})}
            write_region(block, tmp, region)
            if spec.keep_stages:
                sblock = xr.Dataset({f"stage_{k}": (("sample", "time", "y", "x"), D[k][None].astype(np.float32)) for k in range(lay.K)})
                write_region(sblock, tmp, {"sample": slice(s, s + 1), "time": tsl}, group=schema.STAGES_GROUP)
            bar.update(1)
    bar.close()
    rel = lambda e: e[0] / e[1] if e[1] > 0 else 0.0  # noqa: E731
    report = {
        "reconcile": spec.reconcile,
        "anchors": anchors_lv if spec.reconcile else [],
        "stages": [
            {"stage": k, "level": lay.stages[k][0], "resolution": lay.stages[k][1],
             "rel_l1_stage_vs_children_raw": rel(raw_err[k]), "rel_l1_stage_vs_final": rel(fin_err[k])}
            for k in range(lay.K - 1)
        ],
        "definition": "raw: sum over units and time blocks of |stage-k unit total - sum of the raw finest output inside the unit| "
                      "/ sum of the latter (the inconsistency of the generated levels before reconciliation); final: the same "
                      "against the written 50 m traffic (0 for the top anchor; a lower anchor (cells under BS) matches its stage's "
                      "totals after they are rescaled to sum to the anchor above, so what remains is that stage's own "
                      "disagreement with the level above; the root levels are exact sums of the 50 m traffic, see "
                      "root_consistency_max_rel_error)",
    }
    return report


# ---------------------------------------------------------------------------------------------- driver


def _tmp_path(out: Path) -> Path:
    return out.parent / f".{out.name}.inprogress"


def _executor(mode: str, folder: Path, n_tasks: int, partition: str | None, nodes: int | None, threads: int, timeout_min: int = 240):
    import submitit

    if mode == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = dict(timeout_min=timeout_min, cpus_per_task=threads, mem_gb=4, slurm_array_parallelism=max(1, nodes or n_tasks))
        if partition:
            params["slurm_partition"] = partition
        ex.update_parameters(**params)
        return ex
    if mode == "local":
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        ex.update_parameters(timeout_min=timeout_min)
        return ex
    raise ConfigError(f"unknown executor mode {mode}")


def _watch(jobs, groups, out: Path, total: int, progress: bool) -> list[tuple[list[Shard], object]]:
    """Live view of shards done/running/failed until every job has ended; returns failed (shards, job)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="shards", unit="shard", disable=not progress)
    done_prev = 0
    last_sacct, has_sacct = 0.0, shutil.which("sacct") is not None
    while True:
        # submitit's SLURM watcher refreshes job states from sacct at most every 10 minutes by default, so a task
        # that died would show as running for minutes: ask sacct (one call for all jobs) every 10 s instead.
        if jobs and type(jobs[0]).__name__ == "SlurmJob" and has_sacct and time.monotonic() - last_sacct > 10:
            jobs[0].watcher.update()
            last_sacct = time.monotonic()
        done = len(list((_state_dir(out) / MARKERS).glob("*.done")))
        states = [j.state for j in jobs]
        finished = [j.done() for j in jobs]
        running = sum(1 for s, f in zip(states, finished) if not f and s in ("RUNNING", "COMPLETING"))
        failed_jobs = [j for j, f in zip(jobs, finished) if f and j.exception() is not None]
        bar.update(done - done_prev)
        done_prev = done
        bar.set_postfix(running=running, failed=len(failed_jobs), pending=sum(1 for f in finished if not f) - running)
        if all(finished):
            break
        time.sleep(0.5)
    bar.close()
    out = []
    for j, g in zip(jobs, groups):
        if j.exception() is not None:
            out.append((g, j))
    return out


def sample_city(spec: SampleSpec, *, workers: int | None = None, nodes: int | None = None, partition: str | None = None,
                local: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Generate (or refine) a whole city into ``spec.out``; resumable. Returns a summary dict."""
    from mobscale.sample.generators import load_generator

    if spec.refine_anchor not in ("hourly", "stage"):
        raise ConfigError(f"refine anchor must be 'hourly' or 'stage', got '{spec.refine_anchor}'")
    bad = [lvl for lvl in spec.reconcile_levels if lvl not in RECONCILE_LEVELS]
    if bad:
        raise ConfigError(f"reconcile levels {bad} unknown: the finest output can be reconciled to {list(RECONCILE_LEVELS)}")
    out = Path(spec.out)
    tmp = _tmp_path(out)
    state = _state_dir(out)
    h = spec.run_hash()
    if out.exists():
        if not overwrite:
            if is_store(out) and open_city(out).attrs.get("sample_run_hash") == h:
                log.info("%s is already complete for these parameters; nothing to do", out)
                return {"out": str(out), "status": "already complete"}
            raise OutputExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    if not out.parent.exists():
        raise StoreError(f"{out.parent}: output folder does not exist")
    if tmp.exists() or state.exists():
        man = json.loads((state / MANIFEST).read_text()) if (state / MANIFEST).exists() else {}
        if man.get("run_hash") != h or overwrite or not tmp.exists():
            if not overwrite and man.get("run_hash") != h:
                raise OutputExistsError(f"{state}: an interrupted run with different parameters is in the way (remove it and {tmp}, or pass --overwrite)")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)
    gen = load_generator(spec.export)
    if spec.refine_level is not None:
        _refine_stage(gen, spec.refine_level)
    lay = make_layout(spec, gen)
    t_start = time.perf_counter()
    if not tmp.exists():
        root, stages = _template(spec, lay, gen)
        tmp_build = tmp.parent / f"{tmp.name}.building"
        shutil.rmtree(tmp_build, ignore_errors=True)
        write_template(root, tmp_build, chunks={"time": lay.time_chunk, "y": CHUNK_XY, "x": CHUNK_XY, "y100": CHUNK_XY // 2, "x100": CHUNK_XY // 2, "cell": -1, "bs": -1, "sample": 1})
        write_template(stages, tmp_build, group=schema.STAGES_GROUP, mode="a", chunks={"time": lay.time_chunk, "y": CHUNK_XY, "x": CHUNK_XY, "sample": 1})
        (state / MARKERS).mkdir(parents=True)
        (state / LOGS).mkdir()
        (state / MANIFEST).write_text(json.dumps({"run_hash": h, "spec": asdict(spec)}, indent=2))
        os.replace(tmp_build, tmp)  # the template becomes visible only once complete
    shards = lay.plan.shards(spec.shards, CHUNK_XY, CHUNK_XY, spec.num_samples)
    todo = [s for s in shards if not _marker(out, s).exists()]
    log.info("%d shards (%d to do), %d windows of %d h x %d px, %d stages", len(shards), len(todo),
             len(lay.plan.ts) * len(lay.plan.ys) * len(lay.plan.xs) * spec.num_samples, lay.L, lay.P, lay.K)
    spec_d = asdict(spec)
    if todo:
        mode = "slurm" if (nodes or partition) and not local else "local" if (workers or 1) > 1 else "inline"
        n_tasks = nodes if mode == "slurm" else (workers or 1)
        groups = shard_groups(todo, n_tasks)
        if mode == "inline":
            for g in groups:
                run_shard_group(spec_d, [_shard_dict(s) for s in g])
        else:
            ex = _executor(mode, state / LOGS, len(groups), partition, nodes, spec.threads)
            jobs = ex.map_array(run_shard_group, [spec_d] * len(groups), [[_shard_dict(s) for s in g] for g in groups])
            log.info("submitted %d %s tasks (first job id %s)", len(jobs), mode, jobs[0].job_id)
            failed = _watch(jobs, groups, out, len(todo), progress)
            if failed:
                lines = []
                for g, j in failed:
                    left = [s.key() for s in g if not _marker(out, s).exists()]
                    lines.append(f"task {j.job_id}: {len(left)} shard(s) unfinished ({', '.join(left[:3])}{'...' if len(left) > 3 else ''}); log {j.paths.stderr}")
                raise MobscaleError(f"{len(failed)} of {len(jobs)} sampling tasks failed; re-run the same command to redo only the unfinished shards. " + " | ".join(lines))
    missing = [s.key() for s in shards if not _marker(out, s).exists()]
    if missing:
        raise MobscaleError(f"{len(missing)} shard(s) have no completion marker ({missing[:3]}); re-run the same command")
    t_gen = time.perf_counter() - t_start
    report = finalize(spec, lay, progress=progress)
    report["root_consistency_max_rel_error"] = pyramid.consistency_errors(open_city(tmp)) if spec.num_samples == 1 else \
        max((pyramid.consistency_errors(open_city(tmp).isel(sample=i)) for i in range(spec.num_samples)), key=lambda d: max(d.values()))
    marks = [json.loads(p.read_text()) for p in (state / MARKERS).glob("*.done")]
    report["shard_generate_s"] = float(sum(m["generate_s"] for m in marks))
    report["shard_write_s"] = float(sum(m["write_s"] for m in marks))
    from mobscale.data.validate import validate_store

    validate_store(tmp, display_path=out)
    if out.exists():  # only with --overwrite
        shutil.rmtree(out)
    os.replace(tmp, out)
    report.update({"out": str(out), "status": "complete", "shards": len(shards), "wall_s": time.perf_counter() - t_start, "generation_wall_s": t_gen})
    (state / REPORT).write_text(json.dumps(report, indent=2))
    return report
