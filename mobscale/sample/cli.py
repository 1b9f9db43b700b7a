"""Handlers of ``mobscale sample`` and ``mobscale refine`` (arguments in mobscale/launch.py)."""

from __future__ import annotations

from pathlib import Path

from mobscale.log import get_logger
from mobscale.model.export import load_export

log = get_logger(__name__)


def _levels(flag: str | None, default: list[str]) -> tuple[str, ...]:
    from mobscale.errors import ConfigError
    from mobscale.sample.city import RECONCILE_LEVELS

    if flag is None:
        return tuple(default)
    levels = tuple(x.strip() for x in flag.split(",") if x.strip())
    bad = [x for x in levels if x not in RECONCILE_LEVELS]
    if bad or not levels:
        raise ConfigError(f"--reconcile-levels {flag!r}: give a comma-separated subset of {','.join(RECONCILE_LEVELS)}")
    return levels


def _spec(args, export, refine_level=None):
    from mobscale.sample.city import SampleSpec

    cfg = export.config.sample
    return SampleSpec(
        export=str(Path(args.checkpoint)),
        context=str(Path(getattr(args, "context", None) or args.coarse)),
        out=str(Path(args.out)),
        seed=cfg.seed if args.seed is None else args.seed,
        num_samples=(getattr(args, "num_samples", None) or cfg.num_samples),
        steps_per_stage=cfg.steps_per_stage if args.steps_per_stage is None else args.steps_per_stage,
        eta=cfg.eta,
        nest_stages=cfg.nest_stages if getattr(args, "nest_stages", None) is None else args.nest_stages,
        # refinement always scales the generated levels to the given coarse traffic, which is data, not a sample
        reconcile=True if refine_level else cfg.reconcile if getattr(args, "reconcile", None) is None else args.reconcile,
        reconcile_levels=_levels(getattr(args, "reconcile_levels", None), cfg.reconcile_levels),
        overlap=cfg.overlap,
        blend=getattr(args, "blend", None) or cfg.blend,
        batch_size=cfg.batch_size,
        shards=max(1, getattr(args, "shards", 1) or 1),
        refine_level=refine_level,
        refine_anchor=getattr(args, "refine_anchor", None) or "hourly",
    )


def _print_report(rep: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if rep.get("status") == "already complete":
        con.print(f"{rep['out']}: already complete")
        return
    tab = Table(title="consistency: stage outputs vs the sum of their children (relative L1)")
    for c in ("stage", "level", "resolution", "raw (before)", "vs written 50 m (after)"):
        tab.add_column(c)
    for s in rep["stages"]:
        tab.add_row(str(s["stage"]), s["level"], s["resolution"], f"{s['rel_l1_stage_vs_children_raw']:.3e}", f"{s['rel_l1_stage_vs_final']:.3e}")
    con.print(tab)
    worst = max(rep["root_consistency_max_rel_error"].values())
    con.print(f"written levels: every coarser unit = sum of its children (max rel. error {worst:.1e})")
    con.print(f"wrote {rep['out']} ({rep['shards']} shards, {rep['wall_s']:.1f} s; reconcile={rep['reconcile']}, anchors={rep['anchors']})")


def sample(args) -> int:
    export = load_export(args.checkpoint)
    from mobscale.sample.users import USER_MODEL_KINDS, sample_users_to_store

    if export.kind in USER_MODEL_KINDS:  # per-user models (MSTDiff, its CSDI-style baseline): a users group
        sample_users_to_store(export, args.context, args.out, n_users=args.users, seed=args.seed, overwrite=args.overwrite)
        print(f"wrote {args.out}")
        return 0
    from mobscale.sample.city import sample_city

    rep = sample_city(_spec(args, export), workers=args.workers, nodes=args.nodes, partition=args.partition,
                      local=args.local, overwrite=args.overwrite)
    _print_report(rep)
    return 0


def refine(args) -> int:
    from mobscale.sample.city import sample_city

    export = load_export(args.checkpoint)
    rep = sample_city(_spec(args, export, refine_level=args.level), overwrite=args.overwrite)
    _print_report(rep)
    return 0
