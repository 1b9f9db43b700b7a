"""Handlers of ``mobscale data ...`` (argument definitions live in mobscale/launch.py)."""

from __future__ import annotations

import json
from pathlib import Path

from mobscale.config.data import SynthConfig
from mobscale.config.loader import parse_overrides
from mobscale.errors import ConfigError
from mobscale.log import get_logger

log = get_logger(__name__)


def synth(args) -> int:
    from pydantic import ValidationError

    from mobscale.data.synthetic import synth_city

    fields = {"city": args.city, "seed": args.seed, "height": args.size[0], "width": args.size[1], "days": args.days}
    if args.users is not None:
        fields["users"] = args.users
    if args.pixels_per_bs is not None:
        fields["pixels_per_bs"] = args.pixels_per_bs
    fields.update(parse_overrides(args.set))
    try:
        cfg = SynthConfig(**fields)
    except ValidationError as e:
        raise ConfigError("invalid synthetic city parameters: " + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None
    synth_city(cfg, Path(args.out), overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0


def import_(args) -> int:
    from mobscale.data.importers import run_import

    options = {k: getattr(args, k) for k in ("grid", "layout", "city", "split", "step_minutes", "start", "bs_coords")}
    options.update(parse_overrides(args.option))
    out = run_import(args.format, [Path(s) for s in args.sources], Path(args.out), overwrite=args.overwrite, **options)
    print(f"wrote {out}")
    return 0


def validate(args) -> int:
    from mobscale.data.validate import validate_store

    summary = validate_store(args.path)
    print(f"{args.path}: valid (levels: {', '.join(summary['levels']) or 'none'}; users: {'yes' if summary['users'] else 'no'})")
    return 0


def inspect(args) -> int:
    from mobscale.data.inspect import render, summarize

    s = summarize(args.path)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        render(s)
    return 0


def plot(args) -> int:
    from mobscale.data.plot import plot_store

    files = plot_store(args.path, args.out)
    for f in files:
        print(f)
    return 0
