"""``mobscale train``: pick the engine and run it (argparse definition in mobscale.launch).

* no ``--nodes``: ``--engine local`` -> mobscale.train.loop (one process); ``ray`` -> mobscale.train.ray_job
  with ``--workers`` CPU workers (or ``distributed.workers``); ``auto`` = ray when workers > 1.
* ``--nodes N``: mobscale.train.submit (submitit -> SLURM; Ray over the allocation). ``--wait`` blocks until
  the job ends and prints the export path; otherwise the job id is printed.

``MOBSCALE_TASK_FACTORY=module:Class`` replaces the registry's Task (mobscale.train.tasks) for plug-ins and
tests; it is inherited by Ray workers and SLURM jobs like any environment variable.
"""

from __future__ import annotations

import os

from mobscale.config import load
from mobscale.errors import ConfigError
from mobscale.log import get_logger

log = get_logger(__name__)

TASK_FACTORY_ENV = "MOBSCALE_TASK_FACTORY"


def train(args) -> int:
    cfg = load(args.config, args.set)
    task_factory = getattr(args, "task", None) or os.environ.get(TASK_FACTORY_ENV) or None
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")

    if args.nodes is not None:
        if args.engine == "local":
            raise ConfigError("--nodes trains with Ray Train across the allocation; --engine local cannot be combined with it")
        from mobscale.train.submit import submit_train

        job = submit_train(cfg, args.out, nodes=args.nodes, gpus_per_node=args.gpus_per_node, partition=args.partition, workers=args.workers, task_factory=task_factory, init_from=args.init_from)
        if not args.wait:
            print(job.job_id)
            return 0
        print(job.results()[0])  # task 0 drives the training and returns the export path
        return 0
    if args.gpus_per_node is not None or args.partition is not None or args.wait:
        raise ConfigError("--gpus-per-node, --partition and --wait apply to SLURM submission; add --nodes N")

    if args.workers is not None:
        cfg.distributed.workers = args.workers
    engine = args.engine
    if engine == "auto":
        engine = "ray" if cfg.distributed.workers > 1 else "local"
    if engine == "local":
        if cfg.distributed.workers > 1:
            raise ConfigError(f"--engine local trains in one process, but {cfg.distributed.workers} workers were asked for; use --engine ray")
        from mobscale.train.loop import train_local

        export = train_local(cfg, args.out, task_factory=task_factory, init_from=args.init_from)
    else:
        from mobscale.train.ray_job import train_ray

        export = train_ray(cfg, args.out, task_factory=task_factory, init_from=args.init_from)
    print(export)
    return 0
