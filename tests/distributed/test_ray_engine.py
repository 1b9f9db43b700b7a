"""Ray Train engine (mobscale.train.ray_job) on 2 CPU workers with gloo: DDP and DeepSpeed ZeRO-2/3 agree,
checkpoints + export, kill and resume by re-running, a worker failure recovered by FailureConfig.

The DDP run of the module fixture is the reference curve: resumed and recovered runs must reproduce it
bitwise (same engine, same world size, fixed seed); DeepSpeed runs within a tolerance (see
test_deepspeed_matches_ddp).
"""

from __future__ import annotations

import os
import signal
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

pytestmark = pytest.mark.slow

TOY = "toy_task:ToyTask"
CURVE_KEYS = ("step", "loss", "grad_norm", "lr", "t_mean")


def toy_cfg(ds: dict | None = None, **train) -> dict:
    base = {"steps": 12, "batch_size": 4, "lr": 1e-2, "warmup_steps": 2, "log_every": 1, "checkpoint_every": 4}
    return {
        "name": "toy",
        "seed": 3,
        "model": {"kind": "zoomdiff", "width": 16},
        "train": {**base, **train},
        "distributed": {"workers": 2, "max_failures": 1, "keep_checkpoints": 2, "deepspeed": ds or {"enabled": False}},
    }


def curve(run: Path) -> list[tuple]:
    return [tuple(m[k] for k in CURVE_KEYS) for m in read_metrics(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the in-process runs of this module (train_ray reuses it and leaves it running)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ddp_run(ray_cluster, tmp_path_factory) -> Path:
    from mobscale.train.ray_job import train_ray

    run = tmp_path_factory.mktemp("ddp")
    train_ray(load_dict(toy_cfg()), run, task_factory=TOY)
    return run


def test_ddp_run_checkpoints_and_exports(ddp_run):
    assert [c[0] for c in curve(ddp_run)] == list(range(1, 13))
    kept = sorted(p.name for p in (ddp_run / "toy").glob("step_*"))
    assert kept == ["step_00000008", "step_00000012"]  # CheckpointConfig(num_to_keep=2)
    last = ddp_run / "toy" / "step_00000012"
    state = ckpt.read_state(last)
    assert state["step"] == 12 and state["world_size"] == 2 and state["engine"] == "ddp"
    assert (last / "rng" / "rank_0.pt").exists() and (last / "rng" / "rank_1.pt").exists()  # merged by Ray
    exp = load_export(ddp_run / "export")
    trained = torch.load(last / "train_state.pt", weights_only=True)["model"]
    assert sorted(exp.state_dict) == sorted(trained)
    assert all(torch.equal(exp.state_dict[k], trained[k]) for k in trained)
    assert exp.extra["engine"] == "ddp" and exp.extra["step"] == 12 and exp.extra["toy"] is True
    assert ckpt.last_step(ddp_run) == 12


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_matches_ddp(ray_cluster, ddp_run, tmp_path, stage):
    """ZeRO-2/3 (fp32, torch AdamW, same clipping) on 2 workers follow DDP's loss curve on the same seed.

    Tolerance: both average the same fp32 gradients over 2 ranks; only the order of floating-point sums can
    differ (DDP bucket all-reduce vs ZeRO reduce-scatter, and the clipping norm computed over partitions), a
    relative error of ~1e-7 per step. Over 12 Adam steps of this toy that stays far below 1e-5 relative; a
    real mismatch (wrong lr schedule, no clipping, wrong averaging, other data order) moves the loss by >1e-2.
    """
    from mobscale.train.ray_job import train_ray

    train_ray(load_dict(toy_cfg({"enabled": True, "zero_stage": stage})), tmp_path, task_factory=TOY)
    ref, got = curve(ddp_run), curve(tmp_path)
    assert [c[0] for c in got] == [c[0] for c in ref]
    for r, g in zip(ref, got):
        assert g[1] == pytest.approx(r[1], rel=1e-5, abs=1e-7), f"loss at step {r[0]}"
        assert g[3] == pytest.approx(r[3], rel=1e-12), f"lr at step {r[0]}"
    a, b = load_export(ddp_run / "export").state_dict, load_export(tmp_path / "export").state_dict
    assert sorted(a) == sorted(b)  # consolidated (ZeRO-3: gathered from partitions), buffers included
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    assert ckpt.read_state(tmp_path / "toy" / "step_00000012")["zero_stage"] == stage
    assert (tmp_path / "toy" / "step_00000012" / ckpt.DS_TAG).is_dir()


def test_worker_failure_recovered_on_the_same_curve(ray_cluster, ddp_run, tmp_path):
    """Rank 1 raises once at step 7; FailureConfig(max_failures=1) restarts from the step-4 checkpoint."""
    from mobscale.train.ray_job import train_ray

    train_ray(load_dict(toy_cfg()), tmp_path, task_factory="toy_task:FailOnceToyTask")
    assert (tmp_path / "toy_failed_once").exists()
    assert curve(tmp_path) == curve(ddp_run)
    a, b = load_export(ddp_run / "export").state_dict, load_export(tmp_path / "export").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def kill_session(sid: int, timeout: float = 30.0) -> None:
    """SIGKILL every process of session ``sid`` until none is left, as scancel's cgroup kill would.

    Not only the driver's process group: Ray's actors (the training workers among them) run in process groups
    of their own within the driver's session, and outlive a killed driver by seconds -- long enough to train
    on and write checkpoints into the run a rerun is resuming (seen in CI: they finished the run first).
    """
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    # a zombie (the driver until proc.wait, orphans where PID 1 does not reap) is already dead
                    zombie = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                    if not zombie and os.getsid(int(name)) == sid:
                        os.kill(int(name), signal.SIGKILL)
                        left.append(int(name))
                except (ProcessLookupError, PermissionError, FileNotFoundError):
                    pass
        if not left:
            return
        assert time.monotonic() < deadline, f"processes {left} of session {sid} survived SIGKILL for {timeout} s"
        time.sleep(0.1)


def test_newest_checkpoint_prefers_the_newer_of_ray_and_ours(ddp_run, tmp_path):
    """Resume and export take RUN/last_checkpoint.json's checkpoint when Ray recorded an older one, and Ray's
    otherwise: a rerun that resumes at the last step reports nothing and must still export that step."""
    import shutil

    from ray.train import Checkpoint

    from mobscale.train.ray_job import _newest_checkpoint

    cfg = load_dict(toy_cfg())
    for step in (8, 12):
        shutil.copytree(ddp_run / "toy" / f"step_{step:08d}", tmp_path / "toy" / f"step_{step:08d}")
    old, new = (Checkpoint.from_directory(str(tmp_path / "toy" / f"step_{s:08d}")) for s in (8, 12))

    def step_of(c):
        return ckpt.read_state(Path(c.path))["step"]

    assert _newest_checkpoint(tmp_path, cfg, old) is old  # no last_checkpoint.json: Ray's
    ckpt.record_last(tmp_path, 12, tmp_path / "toy" / "step_00000012")
    assert step_of(_newest_checkpoint(tmp_path, cfg, old)) == 12
    assert step_of(_newest_checkpoint(tmp_path, cfg, None)) == 12
    assert _newest_checkpoint(tmp_path, cfg, new) is new
    ckpt.record_last(tmp_path, 8, tmp_path / "toy" / "step_00000008")
    assert _newest_checkpoint(tmp_path, cfg, new) is new  # Ray's is newer


def test_kill_midway_and_resume_by_rerunning(ddp_run, tmp_path):
    """`mobscale train --workers 2` killed (driver and all Ray processes, SIGKILL) after a checkpoint; the same
    command again finishes the run on the uninterrupted curve."""
    cfg_file = tmp_path / "toy.yaml"
    cfg_file.write_text(yaml.safe_dump(toy_cfg()))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mobscale.launch", "train", "--config", str(cfg_file), "--out", str(run), "--workers", "2"]
    env = {**os.environ, "MOBSCALE_TASK_FACTORY": "toy_task:SlowToyTask"}  # 0.25 s per step, ToyTask's numbers
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while ckpt.last_step(run) < 4:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
    finally:
        kill_session(proc.pid)
        proc.wait()
    killed_at = ckpt.last_step(run)
    assert 4 <= killed_at < 12, f"kill came too late (step {killed_at})"
    assert not (run / "export").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert curve(run) == curve(ddp_run)
    a, b = load_export(ddp_run / "export").state_dict, load_export(run / "export").state_dict
    # on a mismatch say where (which tensors, by how much) and what the rerun resumed from: a failure seen once
    # under heavy load (CI beside other jobs) could not be reproduced, so the next one must explain itself
    diff = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    resumed = [ln for ln in (done.stdout + done.stderr).splitlines() if "resum" in ln]
    assert not diff, f"killed at step {killed_at}; differing tensors (max abs diff): {diff}; rerun log: {resumed}"
