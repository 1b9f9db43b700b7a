"""The one logger of mobscale.

``get_logger(__name__)`` returns a child of the ``mobscale`` logger. ``setup_logging`` installs a single
handler on the root ``mobscale`` logger; in distributed runs only rank 0 logs at INFO, others at WARNING,
so one rank speaks.
"""

from __future__ import annotations

import logging
import os
import sys

_ROOT = "mobscale"
_configured = False


def _rank() -> int:
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


def setup_logging(level: str | int = "INFO", force: bool = False) -> logging.Logger:
    """Install the mobscale handler once (idempotent). Non-zero ranks log warnings only."""
    global _configured
    root = logging.getLogger(_ROOT)
    if _configured and not force:
        return root
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    rank = _rank()
    prefix = f"[rank {rank}] " if rank else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    if isinstance(level, str):
        level = getattr(logging, level.upper())
    root.setLevel(level if rank == 0 else max(level, logging.WARNING))
    root.propagate = False
    _configured = True
    return root


def get_logger(name: str | None = None) -> logging.Logger:
    """Logger under the ``mobscale`` namespace (``name`` is usually ``__name__``)."""
    if not name or name == _ROOT:
        return logging.getLogger(_ROOT)
    if not name.startswith(_ROOT + "."):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)
