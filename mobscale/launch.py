"""The mobscale command line: ``mobscale X`` == ``python -m mobscale.launch X``.

Subcommands (the pipeline): ``data`` (synth / import / validate / inspect / plot) -> ``train`` -> ``sample`` /
``refine`` -> ``eval``. ``--nodes N`` on train/sample submits to SLURM through submitit; without it the work
runs here (Ray with the local CPU workers for training, local processes for sampling).

Errors a user can fix print one line and exit non-zero (2); ``--debug`` shows the traceback.
Handlers are imported lazily so ``mobscale --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mobscale.errors import MobscaleError

IMPORT_FORMATS = ("milan-raw", "milan-block", "uomo", "grid-npy", "stkdiff", "movesim", "foursquare")


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = text.lower().split("x")
        return int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 64x64), got '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobscale", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # ------------------------------------------------------------ data
    d = sub.add_parser("data", help="make, import, validate, inspect and plot city stores")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    s = dsub.add_parser("synth", help="generate a synthetic city store")
    s.add_argument("--city", default="demo")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=_size, default=(64, 64), help="HxW in 50 m pixels (even)")
    s.add_argument("--days", type=int, default=7)
    s.add_argument("--users", type=int, default=None, help="synthetic users (default from the generator config)")
    s.add_argument("--pixels-per-bs", type=float, default=None)
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="other generator parameters (SynthConfig fields)")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(handler="mobscale.data.cli:synth")

    i = dsub.add_parser("import", help="import real data into a city store")
    i.add_argument("format", choices=IMPORT_FORMATS)
    i.add_argument("sources", nargs="+", help="source files or folders")
    i.add_argument("--out", required=True)
    i.add_argument("--grid", help="milan-raw: the Milano grid CSV (or GeoJSON)")
    i.add_argument("--layout", type=_size, help="grid-npy: HxW layout of the cell axis (row-major)")
    i.add_argument("--city", default=None, help="city name (default from the format)")
    i.add_argument("--split", default=None, help="uomo: train|val|test|all (default all)")
    i.add_argument("--step-minutes", type=int, default=None, help="native time step when the source does not say")
    i.add_argument("--start", default=None, help="first timestamp when the source does not say (ISO)")
    i.add_argument("--bs-coords", default=None, help="movesim/foursquare: base-station coordinates CSV to map points onto")
    i.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="format-specific option, e.g. negative=shift, column_order=row-major, pad=crop, missing=zero, "
                        "max_radius_km=100, lat0=..., lon0=..., pixel_size_m=...")
    i.add_argument("--overwrite", action="store_true")
    i.set_defaults(handler="mobscale.data.cli:import_")

    v = dsub.add_parser("validate", help="check a store against the schema; exit 0 when valid")
    v.add_argument("path")
    v.set_defaults(handler="mobscale.data.cli:validate")

    n = dsub.add_parser("inspect", help="levels, sizes, time span, totals, consistency")
    n.add_argument("path")
    n.add_argument("--json", action="store_true", help="print JSON instead of a table")
    n.set_defaults(handler="mobscale.data.cli:inspect")

    pl = dsub.add_parser("plot", help="PNG maps per level and context layer, time series per level")
    pl.add_argument("path")
    pl.add_argument("--out", required=True)
    pl.set_defaults(handler="mobscale.data.cli:plot")

    # ------------------------------------------------------------ train
    t = sub.add_parser("train", help="train a model from a run config (locally, on Ray workers, or on SLURM)")
    t.add_argument("--config", required=True)
    t.add_argument("--out", required=True, help="run folder (re-running the same command resumes)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    t.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: distributed.workers)")
    t.add_argument("--nodes", type=int, default=None, help="submit to SLURM through submitit on N nodes")
    t.add_argument("--gpus-per-node", type=int, default=None)
    t.add_argument("--partition", default=None)
    t.add_argument("--engine", choices=["auto", "local", "ray"], default="auto",
                   help="local = one process without Ray; ray = Ray Train (+DeepSpeed); auto = ray when workers > 1")
    t.add_argument("--init-from", default=None, help="start from an exported model (few-shot transfer fine-tuning)")
    t.add_argument("--task", default=None, metavar="MODULE:CLASS", help="Task class overriding the model.kind registry (plug-ins, tests)")
    t.add_argument("--wait", action="store_true", help="with --nodes: wait for the SLURM job and print its result")
    t.set_defaults(handler="mobscale.train.cli:train")

    # ------------------------------------------------------------ sample / refine
    sm = sub.add_parser("sample", help="generate a synthetic city store from an exported model and a context store")
    sm.add_argument("--checkpoint", required=True, help="export folder (RUN/export)")
    sm.add_argument("--context", required=True, help="city store providing the urban context (and coordinates)")
    sm.add_argument("--out", required=True)
    sm.add_argument("--seed", type=int, default=None)
    sm.add_argument("--reconcile", dest="reconcile", action="store_true", default=None)
    sm.add_argument("--no-reconcile", dest="reconcile", action="store_false")
    sm.add_argument("--reconcile-levels", default=None, metavar="bs[,cell]",
                    help="stage outputs the 50 m output is reconciled to (default: the model's sample.reconcile_levels)")
    sm.add_argument("--steps-per-stage", type=int, default=None, help="fast DDIM-style sampler")
    sm.add_argument("--nest-stages", action=argparse.BooleanOptionalAction, default=None,
                    help="scale each stage output to the previous stage's unit totals inside the sampler (default: the model's sample.nest_stages)")
    sm.add_argument("--shards", type=int, default=1)
    sm.add_argument("--workers", type=int, default=None, help="local worker processes")
    sm.add_argument("--nodes", type=int, default=None, help="run shard tasks as a SLURM array")
    sm.add_argument("--local", action="store_true", help="force local execution (no SLURM)")
    sm.add_argument("--partition", default=None)
    sm.add_argument("--num-samples", type=int, default=None)
    sm.add_argument("--blend", choices=["ramp", "core"], default=None,
                    help="how overlapping patches combine (default: the model's sample.blend); see mobscale.sample.tiles")
    sm.add_argument("--users", type=int, default=None, help="mstdiff / csdi_users: users to generate (default: the context's user count)")
    sm.add_argument("--keep-stages", action="store_true", help="also write every stage's output (multi-scale sample)")
    sm.add_argument("--overwrite", action="store_true")
    sm.set_defaults(handler="mobscale.sample.cli:sample")

    r = sub.add_parser("refine", help="refine coarse traffic (e.g. BS level) into the finer levels")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--coarse", required=True, help="city store holding the coarse level (and the context)")
    r.add_argument("--level", required=True, choices=["bs", "cell", "grid100"])
    r.add_argument("--out", required=True)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--steps-per-stage", type=int, default=None)
    r.add_argument("--nest-stages", action=argparse.BooleanOptionalAction, default=None,
                   help="scale each generated stage to the previous stage's unit totals (default: the model's sample.nest_stages)")
    r.add_argument("--reconcile-levels", default=None, metavar="bs[,cell]",
                   help="model stage outputs reconciled to besides the given level (default: the model's sample.reconcile_levels)")
    r.add_argument("--anchor", dest="refine_anchor", choices=["hourly", "stage"], default="hourly",
                   help="hourly (default): the output matches the given coarse traffic hour by hour; stage: only over the "
                        "refine stage's time blocks (e.g. daily totals for S4T4; the behaviour before 2026-12-07)")
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(handler="mobscale.sample.cli:refine")

    # ------------------------------------------------------------ eval
    e = sub.add_parser("eval", help="metrics, tables and an HTML report (traffic stores or trajectories)")
    e.add_argument("target", nargs="?", choices=["traffic", "trajectories", "users"], default="traffic")
    e.add_argument("--real", required=True)
    e.add_argument("--synthetic", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--levels", nargs="*", default=None)
    e.add_argument("--resolutions", nargs="*", default=None)
    e.add_argument("--gps", default=None, help="trajectories: location-id -> lat/lon table")
    e.add_argument("--mode", choices=["clean", "movesim", "mstdiff"], default="clean",
                   help="trajectories: clean|movesim; JSD of traffic/users: clean|movesim = divergence (nats), mstdiff = scipy distance base 2")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    e.add_argument("--train", default=None, help="training data for the privacy audit (distance to closest record)")
    e.add_argument("--no-report", action="store_true")
    e.set_defaults(handler="mobscale.eval.cli:evaluate")
    return p


def _dispatch(args: argparse.Namespace) -> int:
    mod, _, fn = args.handler.partition(":")
    handler = getattr(importlib.import_module(mod), fn)
    rc = handler(args)
    return int(rc or 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from mobscale.log import setup_logging

    setup_logging("DEBUG" if args.debug else "INFO")
    try:
        return _dispatch(args)
    except MobscaleError as e:
        if args.debug:
            raise
        print(f"mobscale: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mobscale: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: still one line unless --debug, but say how to see more
        if args.debug:
            raise
        print(f"mobscale: internal error: {type(e).__name__}: {e} (re-run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
