"""Single-process engine (mobscale.train.loop) and the pieces every engine shares; CPU, seconds."""

from __future__ import annotations

import json
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
from mobscale.errors import CheckpointError, ConfigError
from mobscale.model.export import load_export
from mobscale.train import checkpoint as ckpt
from mobscale.train import deepspeed_cfg
from mobscale.train.engine_utils import LrSchedule, ResumableSampler, read_metrics
from mobscale.train.loop import train_local

TOY = "toy_task:ToyTask"
CURVE_KEYS = ("step", "loss", "grad_norm", "lr", "t_mean")


def toy_cfg(**train) -> dict:
    base = {"steps": 12, "batch_size": 4, "lr": 1e-2, "warmup_steps": 2, "log_every": 1, "checkpoint_every": 4}
    return {"name": "toy", "seed": 3, "model": {"kind": "zoomdiff", "width": 16}, "train": {**base, **train}, "distributed": {"keep_checkpoints": 5}}


def curve(run: Path) -> list[tuple]:
    return [tuple(m[k] for k in CURVE_KEYS) for m in read_metrics(run / "metrics.jsonl")]


def export_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_export(run / "export").state_dict


def assert_same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fixed_seed_is_bit_reproducible(tmp_path):
    cfg = load_dict(toy_cfg())
    train_local(cfg, tmp_path / "a", task_factory=TOY)
    train_local(cfg, tmp_path / "b", task_factory=TOY)
    assert curve(tmp_path / "a") == curve(tmp_path / "b")
    assert [s for s, *_ in curve(tmp_path / "a")] == list(range(1, 13))
    assert_same_weights(export_weights(tmp_path / "a"), export_weights(tmp_path / "b"))
    other = load_dict({**toy_cfg(), "seed": 4})
    train_local(other, tmp_path / "c", task_factory=TOY)
    assert curve(tmp_path / "c") != curve(tmp_path / "a")


def test_killed_run_resumes_on_the_same_curve(tmp_path):
    """k steps, SIGKILL, re-run the same command -> metrics and weights bitwise equal to an uninterrupted run."""
    raw = toy_cfg(steps=16, ema=0.9)
    ref = tmp_path / "ref"
    train_local(load_dict(raw), ref, task_factory=TOY)

    cfg_file = tmp_path / "toy.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mobscale.launch", "train", "--config", str(cfg_file), "--out", str(run), "--engine", "local"]
    env = {**os.environ, "MOBSCALE_TASK_FACTORY": "toy_task:SlowToyTask"}  # 0.25 s per step, same numbers
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while ckpt.last_step(run) < 4:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint of step 4 within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.last_step(run)
    assert 4 <= killed_at < 16, f"kill came too late (step {killed_at})"
    assert not (run / "export").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("export")
    assert curve(run) == curve(ref)
    assert_same_weights(export_weights(run), export_weights(ref))
    assert load_export(run / "export").extra["weights"] == "ema"


def test_torn_files_after_kill_are_ignored(tmp_path):
    """A kill can leave a half-written checkpoint temp file and a cut metrics line: resume ignores both."""
    cfg = load_dict(toy_cfg())
    ref, run = tmp_path / "ref", tmp_path / "run"
    train_local(cfg, ref, task_factory=TOY)
    train_local(cfg, run, task_factory=TOY)
    # make `run` look killed after the checkpoint of step 8: later checkpoint gone, debris left behind
    (ckpt.local_dir(run) / "step_00000012.pt").unlink()
    (ckpt.local_dir(run) / ".step_00000012.pt.tmp").write_bytes(b"\x80\x02garbage")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 13, "loss": 0.')
    train_local(cfg, run, task_factory=TOY)
    assert curve(run) == curve(ref)


def test_checkpoint_has_every_state_and_loads_weights_only(tmp_path):
    cfg = load_dict(toy_cfg(ema=0.5))
    train_local(cfg, tmp_path, task_factory=TOY)
    steps = [s for s, _ in ckpt.list_local(tmp_path)]
    assert steps == [4, 8, 12]
    state = torch.load(ckpt.list_local(tmp_path)[-1][1], weights_only=True)
    assert {"model", "optimizer", "scheduler", "ema", "rng", "step"} <= set(state)
    assert state["step"] == 12 and state["scheduler"]["last_epoch"] == 12
    # the export holds the EMA weights, not the raw ones
    exported = export_weights(tmp_path)
    assert_same_weights(exported, ckpt.ema_module_state(state["ema"]))
    assert not torch.equal(exported["net.0.weight"], state["model"]["net.0.weight"])
    meta = json.loads((tmp_path / "export" / "meta.json").read_text())
    assert meta["step"] == 12 and meta["toy"] is True and meta["engine"] == "local"
    exp = load_export(tmp_path / "export")
    assert exp.normalisation["std"] > 0 and exp.config.train.steps == 12


def test_init_from_export_with_trainable_subset(tmp_path):
    cfg = load_dict(toy_cfg())
    train_local(cfg, tmp_path / "src", task_factory=TOY)
    src = export_weights(tmp_path / "src")
    train_local(load_dict({**toy_cfg(steps=3), "name": "fewshot"}), tmp_path / "dst", task_factory="toy_task:SubsetToyTask", init_from=tmp_path / "src" / "export")
    dst = export_weights(tmp_path / "dst")
    for k in src:
        if k.startswith("net.5."):  # the only trainable layer
            assert not torch.equal(src[k], dst[k]), k
        elif k != "seen":  # the buffer counts forward passes
            assert torch.equal(src[k], dst[k]), k


def test_init_from_rejects_other_architectures(tmp_path):
    train_local(load_dict(toy_cfg(steps=2)), tmp_path / "src", task_factory=TOY)
    wider = load_dict({**toy_cfg(steps=2), "model": {"kind": "zoomdiff", "width": 24}})
    with pytest.raises(CheckpointError, match="do not fit"):
        train_local(wider, tmp_path / "dst", task_factory=TOY, init_from=tmp_path / "src" / "export")
    other_kind = load_dict({**toy_cfg(steps=2), "model": {"kind": "csdi", "width": 16}})
    with pytest.raises(CheckpointError, match="'zoomdiff' model"):
        train_local(other_kind, tmp_path / "dst2", task_factory=TOY, init_from=tmp_path / "src" / "export")


def test_same_folder_with_another_config_is_refused(tmp_path):
    train_local(load_dict(toy_cfg(steps=4)), tmp_path, task_factory=TOY)
    with pytest.raises(ConfigError, match="model.width"):
        train_local(load_dict({**toy_cfg(steps=4), "model": {"kind": "zoomdiff", "width": 24}}), tmp_path, task_factory=TOY)
    # extending the run is allowed and continues from its last checkpoint
    train_local(load_dict(toy_cfg(steps=6)), tmp_path, task_factory=TOY)
    assert [s for s, *_ in curve(tmp_path)] == list(range(1, 7))


def test_resumable_sampler_restarts_anywhere():
    n, total = 7, 40
    full = [i for _, i in zip(range(total), ResumableSampler(n, seed=5, rank=1))]
    for epoch in range(total // n):
        assert sorted(full[epoch * n:(epoch + 1) * n]) == list(range(n))
    for start in (0, 3, 7, 13, 20):
        assert [i for _, i in zip(range(total - start), ResumableSampler(n, seed=5, rank=1, start=start))] == full[start:]
    other_rank = [i for _, i in zip(range(total), ResumableSampler(n, seed=5, rank=0))]
    assert other_rank != full


def test_lr_schedule():
    s = LrSchedule(total=100, warmup=10, kind="cosine")
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0) and s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.5) and s(100) == pytest.approx(0.0)
    c = LrSchedule(total=100, warmup=0, kind="constant")
    assert c(0) == c(99) == 1.0


def test_deepspeed_config_from_run_config():
    cfg = load_dict({**toy_cfg(grad_clip=0.5, weight_decay=0.01), "distributed": {"deepspeed": {"zero_stage": 3, "precision": "bf16", "gradient_accumulation_steps": 2}}})
    ds = deepspeed_cfg.build(cfg, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["train_batch_size"] == 4 * 2 * 4
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["gradient_clipping"] == 0.5
    opt = ds["optimizer"]
    assert opt["type"] == "AdamW" and opt["params"]["torch_adam"] and opt["params"]["weight_decay"] == 0.01
    off = load_dict({**toy_cfg(), "distributed": {"use_gpu": True, "deepspeed": {"zero_stage": 2, "offload_optimizer": True}}})
    ds_off = deepspeed_cfg.build(off, world_size=2)
    assert ds_off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds_off["optimizer"]["params"]["torch_adam"] is False  # DeepSpeedCPUAdam for GPU offload
    assert "reduce_bucket_size" not in ds["zero_optimization"]  # DeepSpeed's default without a model size
    sized = deepspeed_cfg.build(cfg, world_size=4, n_params=40_000_000)["zero_optimization"]
    assert sized["reduce_bucket_size"] == sized["allgather_bucket_size"] == sized["stage3_prefetch_bucket_size"] == 10_000_000
    assert deepspeed_cfg.bucket_elements(1000) == 2**20 and deepspeed_cfg.bucket_elements(10**10) == 500_000_000
    with pytest.raises(ConfigError, match="bf16 needs zero_stage"):
        deepspeed_cfg.build(load_dict({**toy_cfg(), "distributed": {"deepspeed": {"zero_stage": 0, "precision": "bf16"}}}), 2)
    with pytest.raises(ConfigError, match="ema"):
        deepspeed_cfg.build(load_dict({**toy_cfg(ema=0.9), "distributed": {"deepspeed": {"zero_stage": 3}}}), 2)
    with pytest.raises(ConfigError, match="ema"):
        deepspeed_cfg.build(load_dict({**toy_cfg(ema=0.9), "distributed": {"deepspeed": {"zero_stage": 2, "precision": "bf16"}}}), 2)


def test_nodes_without_slurm_is_a_clear_error(tmp_path, monkeypatch):
    import mobscale.train.submit as submit

    monkeypatch.setattr(submit.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="sbatch"):
        submit.submit_train(load_dict(toy_cfg()), tmp_path, nodes=2)


def test_colocated_ray_ports_are_distinct_and_below_the_ephemeral_range(monkeypatch):
    """Fake SLURM nodes share one host: every node's fixed Ray ports must differ from the other nodes' and the head's,
    and stay out of 32768-60999, where an outgoing connection can hold a port and `ray start` fails at random."""
    import mobscale.train.submit as submit

    monkeypatch.setattr(submit, "_node_ip", lambda: "10.0.0.1")
    for job in (1, 8, 10, 11, 12, 999, 12345):
        monkeypatch.setenv("SLURM_JOB_ID", str(job))
        head = submit._head_port()
        taken = set()
        for rank in range(1, 16):
            monkeypatch.setenv("SLURM_NODEID", str(rank))
            args = dict(a.lstrip("-").split("=", 1) for a in submit._colocated_ports(f"10.0.0.1:{head}"))
            ports = {int(v) for k, v in args.items() if k.endswith("port")}
            ports |= set(range(int(args["min-worker-port"]), int(args["max-worker-port"]) + 1))
            assert min(ports) >= 21000 and max(ports) < 32768, (job, rank)
            assert not ports & taken and head not in ports
            assert args["temp-dir"] == f"/tmp/mobscale-ray-{job}-{rank}"
            taken |= ports
        assert 20000 <= head < 21000
    # a node on its own host (a real cluster) sets nothing
    assert submit._colocated_ports("10.0.0.2:20001") == []


def test_failed_node_stops_the_head_waiting(tmp_path, monkeypatch):
    """A node whose `ray start` fails reports it in the rendezvous directory; the head's wait ends at once with
    that node's error instead of its timeout."""
    from types import SimpleNamespace

    import mobscale.train.submit as submit

    env = SimpleNamespace(job_id="7", global_rank=1, num_tasks=2, hostname="n2")
    monkeypatch.setattr(submit.submitit, "JobEnvironment", lambda: env)

    def broken_worker(self, rdv, timeout_s):
        raise RuntimeError("`ray start` exited with 1")

    monkeypatch.setattr(submit.TrainJob, "_worker", broken_worker)
    cfg = load_dict({**toy_cfg(), "distributed": {"rendezvous_timeout_s": 120}})
    job = submit.TrainJob(cfg.model_dump(mode="json"), str(tmp_path), 2, 1, 0)
    with pytest.raises(RuntimeError, match="exited with 1"):
        job()
    rdv = tmp_path / "slurm" / "ray-7-0"
    assert "node 1 (n2)" in (rdv / "failed-1").read_text()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"2 Ray nodes: node 1 \(n2\): RuntimeError: `ray start` exited with 1"):
        submit._wait_for(lambda: False, 120, "2 Ray nodes", failed=rdv)
    assert time.monotonic() - t0 < 5
    with pytest.raises(TimeoutError, match="gave up after 1 s"):
        submit._wait_for(lambda: False, 1.0, "nothing", failed=tmp_path)


def test_cli_local_engine(tmp_path, monkeypatch, capsys):
    from mobscale.launch import main

    cfg_file = tmp_path / "toy.yaml"
    cfg_file.write_text(yaml.safe_dump(toy_cfg(steps=3)))
    monkeypatch.setenv("MOBSCALE_TASK_FACTORY", TOY)
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "run"), "--set", "train.lr=0.002"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "run" / "export")
    assert load_export(tmp_path / "run" / "export").config.train.lr == 0.002
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "r2"), "--engine", "local", "--workers", "2"]) == 2
    assert "--engine ray" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "r3"), "--partition", "gpu"]) == 2
    assert "--nodes" in capsys.readouterr().err
