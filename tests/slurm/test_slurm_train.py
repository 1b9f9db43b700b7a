"""Training through a real SLURM (ci/start_slurm.sh DIR 2 + SLURM_CONF): `sbatch slurm/train.sh`, `mobscale train
--nodes 2` over two (fake) nodes, and a submitit preemption: checkpoint on SIGUSR2, requeue, resume.

Skipped unless `sinfo` answers and every node is idle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mobscale.config import load_dict
from mobscale.model.export import load_export
from mobscale.train import checkpoint as ckpt
from mobscale.train.engine_utils import read_metrics

REPO = Path(__file__).resolve().parents[2]
CURVE_KEYS = ("step", "loss", "grad_norm", "lr", "t_mean")


def _idle_nodes() -> int:
    if shutil.which("sinfo") is None:
        return 0
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
    states = r.stdout.split()
    return len(states) if r.returncode == 0 and states and all(s == "idle" for s in states) else 0


IDLE = _idle_nodes()
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(IDLE == 0, reason="no idle SLURM (run ci/start_slurm.sh DIR 2 and export SLURM_CONF)")]


def toy_cfg(**train) -> dict:
    base = {"steps": 12, "batch_size": 4, "lr": 1e-2, "warmup_steps": 2, "log_every": 1, "checkpoint_every": 4}
    return {"name": "toy", "seed": 3, "model": {"kind": "zoomdiff", "width": 16}, "train": {**base, **train}, "distributed": {"workers": 1, "deepspeed": {"enabled": False}}}


def curve(run: Path) -> list[tuple]:
    return [tuple(m[k] for k in CURVE_KEYS) for m in read_metrics(run / "metrics.jsonl")]


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True).stdout.split()
    return out[-1] if out else ""


def test_sbatch_train_sh_to_completion(tmp_path):
    cfg_file = tmp_path / "toy.yaml"
    cfg_file.write_text(yaml.safe_dump(toy_cfg()))
    run = tmp_path / "run"
    env = {**os.environ, "MOBSCALE_TASK_FACTORY": "toy_task:ToyTask"}
    r = subprocess.run(["sbatch", "--parsable", "--wait", "-o", str(tmp_path / "%j.out"), "slurm/train.sh", str(cfg_file), str(run)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    job = r.stdout.strip().split(";")[0]
    log = next(tmp_path.glob("*.out"), None)
    assert r.returncode == 0, (r.stderr, log.read_text()[-3000:] if log else "")
    assert sacct_state(job) == "COMPLETED"
    assert [c[0] for c in curve(run)] == list(range(1, 13))
    assert load_export(run / "export").extra["step"] == 12
    # one node without GPUs: one worker with the task's CPUs
    assert load_export(run / "export").config.distributed.cpus_per_worker == 2


@pytest.mark.parametrize("nodes", [2, 8])
def test_nodes_n_through_submitit(tmp_path, nodes):
    """--nodes N: a Ray cluster over N SLURM nodes (fake nodes share one host here: distinct ports and temp dirs)."""
    if IDLE < nodes:
        pytest.skip(f"needs {nodes} idle SLURM nodes (ci/start_slurm.sh DIR {nodes})")
    cfg = toy_cfg()
    # a node that never joins fails the job well before this test's own limit (the message is in the logs below)
    cfg["distributed"]["rendezvous_timeout_s"] = 240
    cfg_file = tmp_path / "toy.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    env = {**os.environ, "MOBSCALE_TASK_FACTORY": "toy_task:ToyTask"}

    def logs() -> str:
        return "\n".join(f"== {p.name}\n" + p.read_text()[-2000:] for p in sorted((run / "slurm").glob("*/*_log.out"))) if (run / "slurm").exists() else ""

    cmd = [sys.executable, "-m", "mobscale.launch", "train", "--config", str(cfg_file), "--out", str(run), "--nodes", str(nodes), "--wait"]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    except subprocess.TimeoutExpired as e:
        subprocess.run(["scancel", "--name", "mobscale-toy"], check=False)  # free the nodes for the tests after this one
        pytest.fail(f"no result within 540 s\n{(e.stderr or b'').decode()[-2000:]}\n{logs()}")
    assert r.returncode == 0, (r.stderr[-2000:], logs())
    assert r.stdout.strip().splitlines()[-1] == str(run / "export")
    state = ckpt.read_state(run / "toy" / "step_00000012")
    assert state["world_size"] == nodes and state["engine"] == "ddp"  # one worker per node
    (rdv,) = (run / "slurm").glob("ray-*")
    assert (rdv / "head").exists() and (rdv / "done").exists()
    assert [c[0] for c in curve(run)] == list(range(1, 13))


def test_submitit_preemption_checkpoints_requeues_and_resumes(tmp_path):
    """SIGUSR2 (what SLURM sends before the time limit) -> checkpoint now -> requeue -> resume from it; the
    curve equals an uninterrupted single-process run (1 Ray worker == the local loop, bitwise)."""
    from mobscale.train.loop import train_local
    from mobscale.train.submit import submit_train

    raw = toy_cfg(steps=30, checkpoint_every=10)
    ref = tmp_path / "ref"
    train_local(load_dict(raw), ref, task_factory="toy_task:ToyTask")

    run = tmp_path / "run"
    job = submit_train(load_dict(raw), run, nodes=1, task_factory="toy_task:SlowToyTask")
    deadline = time.monotonic() + 300
    while ckpt.last_step(run) < 10:
        assert not job.done(), job.stderr() or job.stdout()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    job._interrupt(timeout=True)  # SIGUSR2 only, as at the time limit
    while True:
        st = subprocess.run(["squeue", "-h", "-j", job.job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if st == "PENDING":
            break
        assert time.monotonic() < deadline, f"job not requeued (state {st!r})"
        time.sleep(0.2)
    preempt_step = ckpt.last_step(run)
    assert 10 < preempt_step < 30 and preempt_step % 10, f"no checkpoint written on the signal (last {preempt_step})"
    time.sleep(3)  # a restart in the same second as the requeue fails with "Job credential revoked"
    subprocess.run(["scontrol", "update", f"jobid={job.job_id}", "StartTime=now"], check=True)  # skip the 120 s hold
    assert job.result() == str(run / "export")
    log = job.stdout() or ""
    assert f"resumed from step {preempt_step}" in log
    assert curve(run) == curve(ref)
    a, b = load_export(ref / "export").state_dict, load_export(run / "export").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
