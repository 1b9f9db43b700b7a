"""Score generated city stores under other top-down reconciliations, without sampling again.

A generated store keeps every stage's output before reconciliation (its ``stages`` group), and the stage
outputs do not depend on the reconciliation. So the written levels of the same samples under any
``--reconcile-levels`` (or ``--no-reconcile``: the finest stage's own sums) can be rebuilt exactly from it, with
the sampler's own function (``mobscale.sample.city.reconcile_field``), and scored on the Table I protocol of
``zoomdiff_tables.py`` (held-out district, 1 h, fair CRPS over the samples):

    python jobs/zoomdiff_rescore.py runs/tables/gen/_profile_3k/table1/ZoomDiff_s4.zarr [more stores] \\
        --levels none bs bs,cell [--out results/NAME.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "jobs"))

import zoomdiff_tables as zt  # noqa: E402
from mobscale.data import pyramid, schema  # noqa: E402
from mobscale.data.store import open_city  # noqa: E402
from mobscale.log import setup_logging  # noqa: E402
from mobscale.sample.city import RECONCILE_LEVELS, reconcile_field  # noqa: E402


def rebuild(path: Path, levels: tuple[str, ...] = ()):
    """The store with every traffic level rebuilt from its stages group: the finest stage output reconciled
    top-down to the stage outputs at ``levels`` (none: left as it is), the coarser levels its exact sums."""
    root, st = open_city(path), open_city(path, group=schema.STAGES_GROUP)
    stages = [tuple(x) for x in json.loads(st.attrs["stages"])]
    K = len(stages)
    have = {lvl for lvl, _ in stages[:-1]}
    levels = [lvl for lvl in RECONCILE_LEVELS if lvl in levels and lvl in have]
    observed = np.asarray(root["observed"].values) > 0 if "observed" in root else None
    umaps = {lvl: pyramid.unit_map(root, lvl) for lvl in schema.SPATIAL_LEVELS}
    pc, cb = np.asarray(root["pixel_cell"].values), np.asarray(root["cell_bs"].values)
    D = [st[f"stage_{k}"].values.astype(np.float64) for k in range(K)]
    if D[0].ndim == 3:
        D = [d[None] for d in D]
    finest = []
    for s in range(D[0].shape[0]):
        # stored stage outputs are unit means re-projected onto pixels: their unit sums are the stage's totals
        totals = [pyramid.units_sum(D[k][s], *umaps[lvl]) for k, (lvl, _) in enumerate(stages)]
        F = reconcile_field(D[-1][s], totals, stages, umaps, cb, levels, observed) if levels else D[-1][s]
        finest.append(F.astype(np.float32))
    g = np.stack(finest)
    cell = np.stack([pyramid.units_sum(x, pc, root.sizes["cell"]) for x in g])
    out = {"grid50": g, "grid100": np.stack([pyramid.block_sum(x) for x in g]), "cell": cell,
           "bs": np.stack([pyramid.units_sum(x, cb, root.sizes["bs"]) for x in cell])}
    return root.load().assign({schema.TRAFFIC_VAR[lvl]: (("sample",) + schema.LEVEL_DIMS[lvl], v) for lvl, v in out.items()})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stores", nargs="+", type=Path)
    ap.add_argument("--levels", nargs="+", default=["none", "bs", "bs,cell"],
                    help="reconciliations to score: 'none' (no reconciliation) or comma-separated anchor levels")
    ap.add_argument("--city", type=Path, default=REPO / "runs" / "tables" / "data" / "city.zarr", help="the real city the stores were generated for")
    ap.add_argument("--config", default="demo.yaml", help="config whose held-out split is scored")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (markdown; .json beside it)")
    args = ap.parse_args(argv)
    setup_logging()
    region = zt.test_region(types.SimpleNamespace(set=[]), args.city, args.config)
    rows, cols = {}, ("crps", "mae", "mae_of_mean")
    for p in args.stores:
        for lv in args.levels:
            levels = () if lv == "none" else tuple(lv.split(","))
            if any(x not in RECONCILE_LEVELS for x in levels):
                raise SystemExit(f"--levels {lv!r}: use 'none' or a comma-separated subset of {','.join(RECONCILE_LEVELS)}")
            sc = zt.score(args.city, rebuild(p, levels), region)
            rows[f"{p} | {lv}"] = sc
            print(f"{p}  reconciled to: {lv}")
            for lvl, d in sc.items():
                print(f"  {lvl:11s} " + "  ".join(f"{c} {d[c]:9.4g}" for c in cols))
    if args.out:
        lvls = list(next(iter(rows.values())))
        head = "| store | reconciled to | " + " | ".join(f"{lv} {c}" for lv in lvls for c in cols) + " |"
        lines = [f"Command: `python jobs/zoomdiff_rescore.py {' '.join(sys.argv[1:])}` (real city `{args.city}`, held-out "
                 f"split of {args.config}; crps = fair CRPS over the samples, mae = mean over samples, mae_of_mean = MAE of "
                 "the sample mean; MB per unit per hour)", "", head, "|" + "---|" * (2 + len(lvls) * len(cols))]
        for k, sc in rows.items():
            lines.append(f"| {k} | " + " | ".join(f"{sc[lv][c]:.4g}" for lv in lvls for c in cols) + " |")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=float))


if __name__ == "__main__":
    main()
