"""City-scale sampling as SLURM array tasks on the local cluster: several tasks, one killed mid-write, re-run,
compared with an uninterrupted run. Skipped unless `sinfo` answers with idle nodes."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from mobscale.data.store import open_city
from mobscale.data.validate import validate_store
from mobscale.errors import MobscaleError
from mobscale.sample.city import SampleSpec, _state_dir, sample_city


def _idle() -> int:
    if shutil.which("sinfo") is None:
        return 0
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
    return sum(1 for s in r.stdout.split() if s == "idle") if r.returncode == 0 else 0


pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(_idle() == 0, reason="no idle SLURM (ci/start_slurm.sh DIR 2; export SLURM_CONF)")]


def _spec(exp, ctx, out):
    return SampleSpec(export=str(exp), context=str(ctx), out=str(out), seed=3, steps_per_stage=2, overlap=2, batch_size=4, shards=4)  # 2 time windows x 1 chunk tile -> 2 shards


def test_array_tasks_killed_task_rerun_equals_uninterrupted(tiny_export, tmp_path, monkeypatch):
    exp, ctx = tiny_export
    ref = tmp_path / "ref.zarr"
    sample_city(_spec(exp, ctx, ref), nodes=2, progress=False)  # uninterrupted, 2 array tasks
    validate_store(ref)
    logs = list((_state_dir(ref) / "_logs").glob("*_log.out"))
    assert len(logs) >= 2  # really ran as separate SLURM array tasks

    out = tmp_path / "killed.zarr"
    monkeypatch.setenv("MOBSCALE_FAULT", "mid-write:1")
    with pytest.raises(MobscaleError, match="re-run the same command"):
        sample_city(_spec(exp, ctx, out), nodes=2, progress=False)
    done = list((_state_dir(out) / "_shards").glob("*.done"))
    assert len(done) < 2 and not out.exists()
    monkeypatch.delenv("MOBSCALE_FAULT")
    rep = sample_city(_spec(exp, ctx, out), nodes=2, progress=False)
    assert rep["status"] == "complete"
    a, b = open_city(ref).load(), open_city(out).load()
    for v in ("traffic_grid50", "traffic_cell", "traffic_bs"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
