"""Score generated city stores as if they had been sampled with ``--no-reconcile``, without sampling again.

A generated store keeps every stage's output before reconciliation (its ``stages`` group); ``--no-reconcile``
writes the finest stage as the 50 m level and its sums as the coarser ones, and the stages do not depend on
the reconciliation. So re-scoring the finest stage's bottom-up sums gives exactly the no-reconcile numbers of
the same samples, on the Table I protocol of ``zoomdiff_tables.py`` (held-out district, 1 h, fair CRPS):

    python jobs/zoomdiff_bottom_up.py runs/tables/gen/_profile_3k/table1/ZoomDiff_s4.zarr [more stores]
"""

from __future__ import annotations

import argparse
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


def bottom_up(path: Path):
    """The store with every traffic level replaced by the sums of its finest stage output."""
    root, st = open_city(path), open_city(path, group=schema.STAGES_GROUP)
    g = st[f"stage_{len(st.data_vars) - 1}"].values.astype(np.float32)
    if g.ndim == 3:
        g = g[None]
    pc, cb = np.asarray(root["pixel_cell"].values), np.asarray(root["cell_bs"].values)
    cell = np.stack([pyramid.units_sum(x, pc, root.sizes["cell"]) for x in g])
    levels = {"grid50": g, "grid100": np.stack([pyramid.block_sum(x) for x in g]), "cell": cell,
              "bs": np.stack([pyramid.units_sum(x, cb, root.sizes["bs"]) for x in cell])}
    return root.load().assign({schema.TRAFFIC_VAR[l]: (("sample",) + schema.LEVEL_DIMS[l], v) for l, v in levels.items()})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stores", nargs="+", type=Path)
    ap.add_argument("--city", type=Path, default=REPO / "runs" / "tables" / "data" / "city.zarr", help="the real city the stores were generated for")
    ap.add_argument("--config", default="demo.yaml", help="config whose held-out split is scored")
    args = ap.parse_args(argv)
    setup_logging()
    region = zt.test_region(types.SimpleNamespace(set=[]), args.city, args.config)
    for p in args.stores:
        sc = zt.score(args.city, bottom_up(p), region)
        print(p)
        for lvl, d in sc.items():
            print(f"  {lvl:11s} crps {d['crps']:9.4g}  mae {d['mae']:9.4g}  mae_of_mean {d['mae_of_mean']:9.4g}  rmse {d['rmse']:9.4g}")


if __name__ == "__main__":
    main()
