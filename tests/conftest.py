"""Test-wide setup: tests/ on the import path (also for Ray/submitit workers, which unpickle test helpers by
module name), one thread per process, and the location of the optional shared real data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()

if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")] if p)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # single-node Ray binds to 127.0.0.1
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; tests using it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


# ------------------------------------------------------------------ a tiny trained ZoomDiff export (sampling tests)

from tiny_runs import TINY_RUN  # noqa: E402


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    from mobscale.config import load_dict
    from mobscale.train.loop import train_local

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train_local(load_dict(TINY_RUN), run)
    return run / "export", run / "data" / "city.zarr"
