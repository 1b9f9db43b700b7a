"""jobs/transfer.py (train on city A -> fine-tune on B -> sample B -> evaluate B) on a tiny config: in sequence
on this machine, and as SLURM jobs chained by afterok dependencies on the local cluster (skipped without one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tiny_runs import TINY_RUN

REPO = Path(__file__).resolve().parents[2]


def _idle() -> int:
    if shutil.which("sinfo") is None:
        return 0
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
    return sum(1 for s in r.stdout.split() if s == "idle") if r.returncode == 0 else 0


def _run(tmp_path: Path, *extra: str) -> dict:
    cfg = tmp_path / "tiny.yaml"
    run = {**TINY_RUN, "model": {**TINY_RUN["model"], "blocks": 2}}  # two blocks: the transfer subset freezes the first
    cfg.write_text(yaml.safe_dump(run))
    out = tmp_path / "transfer"
    cmd = [sys.executable, str(REPO / "jobs" / "transfer.py"), "--config", str(cfg), "--size", "32x16", "--days", "2",
           "--few-shot-steps", "2", "--out", str(out), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"out": out, "stdout": r.stdout}


def _check(out: Path) -> None:
    from mobscale.data.validate import validate_store
    from mobscale.model.export import load_export

    a = load_export(out / "train_A" / "export")
    b = load_export(out / "finetune_B" / "export")
    assert Path(b.config.data.store).name == "cityB.zarr" and Path(a.config.data.store).name == "cityA.zarr"
    assert b.config.model.trainable == "transfer" and b.config.train.steps == 2
    # fine-tuning started from A's weights and changed only the transfer subset: some tensors equal A's, some differ
    same = [k for k in a.state_dict if torch.equal(a.state_dict[k], b.state_dict[k])]
    assert 0 < len(same) < len(a.state_dict)
    validate_store(out / "generated_B.zarr")
    m = json.loads((out / "eval_B" / "metrics.json").read_text())
    assert m  # the evaluation wrote its metrics of B's generated store against B


@pytest.mark.slow
def test_transfer_local_sequence(tmp_path):
    res = _run(tmp_path)
    _check(res["out"])
    # re-running the same command skips every finished step and prints the same outputs
    again = _run(tmp_path)
    assert json.loads(again["stdout"][again["stdout"].index("{"):])["generated_B"].endswith("generated_B.zarr")


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.skipif(_idle() == 0, reason="no idle SLURM (ci/start_slurm.sh DIR 2; export SLURM_CONF)")
def test_transfer_as_chained_slurm_jobs(tmp_path):
    res = _run(tmp_path, "--slurm")
    assert res["stdout"].count("SLURM job") == 6  # two cities, train A, fine-tune B, sample, eval
    _check(res["out"])
