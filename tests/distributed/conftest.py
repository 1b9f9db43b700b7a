"""tests/distributed on the import path of this process and of every Ray/submitit worker it starts, so the
toy Task loads as ``toy_task:ToyTask`` (the folder name would shadow dask's ``distributed`` as a package)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
if HERE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [HERE, os.environ.get("PYTHONPATH", "")] if p)
