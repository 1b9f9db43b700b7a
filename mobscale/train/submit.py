"""``mobscale train --nodes N``: submit training to SLURM through submitit, with preemption handling.

:func:`submit_train` (on the login node) sizes the job from the config and the flags: one task per node;
per node one worker per GPU (``--gpus-per-node``) or, without GPUs, one worker using the node's CPUs
(``distributed.cpus_per_node``, default ``distributed.cpus_per_worker``). It submits a :class:`TrainJob`.

:class:`TrainJob` runs in every task of the allocation (submitit's ``srun``):

* one node: the task starts a local Ray (bound to 127.0.0.1) and runs mobscale.train.ray_job.train_ray;
* N nodes: task 0 starts the Ray head (``ray start --head --num-cpus/--num-gpus`` of its allocation),
  publishes its address in RUN/slurm/ray-<job>-<restart>/head, waits for the other N-1 nodes to join and runs
  train_ray against that cluster; tasks 1..N-1 join with ``ray start --address`` and leave when task 0 writes
  ``done`` (``ray stop`` would also stop unrelated Ray instances on a shared host, so each task ends only the
  processes it started).
  A node whose ``ray start`` fails writes ``failed-<rank>`` (its error) there, and the head stops waiting at once
  with that error instead of waiting out ``distributed.rendezvous_timeout_s`` (a job that would otherwise sit on
  N nodes doing nothing).

Preemption / time limit: SLURM sends SIGUSR2 (``--signal=USR2@90``, set by submitit) to every process of the
job. Ray's processes are started with SIGUSR2 ignored (its default action would kill them). In task 0,
submitit calls :meth:`TrainJob.checkpoint`, which asks the workers for a checkpoint now (RUN/.checkpoint_request,
see ray_job) and waits for it to be persisted (at most ``CHECKPOINT_WAIT_S``), then lets submitit requeue the
job. The requeued job runs the same TrainJob, and train_ray resumes from the newest checkpoint (same storage
path + name). A SIGTERM before SIGUSR2 (SLURM preemption) stops Ray's processes at once; the requeued job then
resumes from the last periodic checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit

from mobscale.config import load_dict
from mobscale.errors import ConfigError
from mobscale.log import get_logger, setup_logging
from mobscale.train.checkpoint import last_step
from mobscale.train.engine_utils import check_same_run
from mobscale.train.loop import CHECKPOINT_REQUEST

log = get_logger(__name__)

#: how long the preemption handler waits for the requested checkpoint (SLURM's warning comes 90 s ahead)
CHECKPOINT_WAIT_S = 60.0


def _preempt_signal() -> signal.Signals:
    # submitit's own rule (SUBMITIT_PREEMPT_SIGNAL, default USR2)
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _ignore_preempt_signal() -> None:
    """preexec_fn for Ray processes: an ignored signal stays ignored across exec, and Ray installs no handler."""
    signal.signal(_preempt_signal(), signal.SIG_IGN)


@contextlib.contextmanager
def preempt_signal_ignored():
    """While inside, processes started by this one (e.g. ``ray.init``'s) inherit SIGUSR2 = ignored."""
    sig = _preempt_signal()
    old = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(sig, old)


def request_checkpoint(run_dir: Path, timeout_s: float = CHECKPOINT_WAIT_S) -> int | None:
    """Ask a running training for a checkpoint at its next step and wait until one newer than the current
    newest is persisted. Returns its step, or None after ``timeout_s``."""
    run_dir = Path(run_dir)
    before = last_step(run_dir)
    (run_dir / CHECKPOINT_REQUEST).touch()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        step = last_step(run_dir)
        if step > before:
            return step
        time.sleep(0.5)
    return None


# ============================================================================================== the job


class TrainJob(submitit.helpers.Checkpointable):
    """The callable submitit runs in every task of the training allocation (see module docstring)."""

    def __init__(self, cfg: dict, run_dir: str, nodes: int, cpus_per_node: int, gpus_per_node: int, task_factory: str | None = None, init_from: str | None = None):
        self.cfg, self.run_dir, self.nodes = cfg, run_dir, nodes
        self.cpus_per_node, self.gpus_per_node = cpus_per_node, gpus_per_node
        self.task_factory, self.init_from = task_factory, init_from

    def __call__(self) -> str | None:
        setup_logging()
        cfg = load_dict(self.cfg, source="submitted config")
        env = submitit.JobEnvironment()
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        log.info("%s: task %d of %d on %s (restart %s)", env.job_id, env.global_rank, env.num_tasks, env.hostname, restarts)
        if self.nodes == 1:
            return self._single(cfg)
        rdv = Path(self.run_dir) / "slurm" / f"ray-{env.job_id}-{restarts}"
        timeout = cfg.distributed.rendezvous_timeout_s
        if env.global_rank == 0:
            return self._head(cfg, rdv, timeout)
        try:
            self._worker(rdv, timeout)
        except Exception as e:
            # tell the head now (it would otherwise wait for this node until its timeout); then fail this task
            rdv.mkdir(parents=True, exist_ok=True)
            (rdv / f"failed-{env.global_rank}").write_text(f"node {env.global_rank} ({env.hostname}): {type(e).__name__}: {e}")
            raise
        return None

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """submitit's preemption hook (task 0, inside the SIGUSR2 handler): checkpoint now, then requeue."""
        step = request_checkpoint(Path(self.run_dir))
        if step is None:
            log.warning("no checkpoint within %.0f s of the preemption signal; the requeued job resumes from the last periodic one", CHECKPOINT_WAIT_S)
        else:
            log.info("checkpoint of step %d written for preemption; requeueing", step)
        return super().checkpoint(*args, **kwargs)

    # -------------------------------------------------------------------------------------------- roles

    def _single(self, cfg) -> str:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # one node: Ray on loopback (before import ray)
        from mobscale.train.ray_job import connect_ray, train_ray

        with preempt_signal_ignored():
            started = connect_ray(cfg)
        try:
            return str(train_ray(cfg, self.run_dir, task_factory=self.task_factory, init_from=self.init_from))
        finally:
            if started:
                import ray

                ray.shutdown()

    def _head(self, cfg, rdv: Path, timeout_s: float) -> str:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"  # other nodes must reach us: not loopback
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        ip = _node_ip()
        port = _head_port()
        address = f"{ip}:{port}"
        head = _ray_start(["--head", f"--node-ip-address={ip}", f"--port={port}", "--include-dashboard=false"], self.cpus_per_node, self.gpus_per_node)
        try:
            _wait_for(lambda: _ray_status_ok(address), timeout_s, f"Ray head at {address}", head)
            rdv.mkdir(parents=True, exist_ok=True)
            (rdv / "head.tmp").write_text(address)
            (rdv / "head.tmp").replace(rdv / "head")
            import ray

            ray.init(address=address, log_to_driver=True)
            _wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) >= self.nodes, timeout_s, f"{self.nodes} Ray nodes", head, failed=rdv)
            log.info("Ray cluster of %d nodes up at %s: %s", self.nodes, address, ray.cluster_resources())
            from mobscale.train.ray_job import train_ray

            return str(train_ray(cfg, self.run_dir, task_factory=self.task_factory, init_from=self.init_from, address=address))
        finally:
            (rdv / "done").parent.mkdir(parents=True, exist_ok=True)
            (rdv / "done").touch()
            import ray

            ray.shutdown()
            _stop(head)

    def _worker(self, rdv: Path, timeout_s: float) -> None:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        _wait_for(lambda: (rdv / "head").exists() or (rdv / "done").exists(), timeout_s, f"the Ray head's address in {rdv}")
        if (rdv / "done").exists():
            return
        address = (rdv / "head").read_text().strip()
        proc = _ray_start([f"--address={address}", *_colocated_ports(address)], self.cpus_per_node, self.gpus_per_node)
        try:
            while not (rdv / "done").exists():
                if proc.poll() is not None:
                    if (rdv / "done").exists():
                        break
                    raise RuntimeError(f"Ray worker on {os.uname().nodename} exited with {proc.returncode} before the training finished (head {address})")
                time.sleep(1.0)
        finally:
            _stop(proc)


def _node_ip() -> str:
    """This node's first non-loopback address (what `hostname -I` prints first; what other nodes can reach)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()
    if not out:
        raise RuntimeError(f"{os.uname().nodename}: `hostname -I` reports no address for the Ray head")
    return out[0]


def _head_port() -> int:
    """The Ray head's GCS port: jobs sharing a host need distinct ones. 20000-20999 lies below Linux's ephemeral
    range (32768-60999), where any outgoing connection may hold a port for a while (see _colocated_ports)."""
    return 20000 + int(os.environ.get("SLURM_JOB_ID", "0") or 0) % 1000


def _colocated_ports(head_address: str) -> list[str]:
    """Distinct ports for a Ray worker node that shares its host (IP) with the head and other nodes, e.g. fake SLURM
    nodes on one machine: Ray's node-local services otherwise use fixed defaults (dashboard agent 52365, ...) and a
    third raylet on the host fails with "bind: Address already in use". On a real cluster (own IP) nothing is set."""
    if head_address.rsplit(":", 1)[0] != _node_ip():
        return []
    job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
    rank = int(os.environ.get("SLURM_NODEID", os.environ.get("SLURM_PROCID", "0")) or 0)
    # 64 ports per node in 21000-32263: above the head ports (20000-20999) and Ray's default worker ports of the head
    # (10002-19999), below the ephemeral range (32768-60999 on Linux), where a port fixed here may be held by some
    # process's outgoing connection and `ray start` fails with "Address already in use" at random
    base = 21000 + ((job % 11) * 16 + rank % 16) * 64
    return [f"--node-manager-port={base}", f"--object-manager-port={base + 1}", f"--dashboard-agent-listen-port={base + 2}",
            f"--dashboard-agent-grpc-port={base + 3}", f"--metrics-export-port={base + 4}", f"--runtime-env-agent-port={base + 5}",
            f"--min-worker-port={base + 10}", f"--max-worker-port={base + 63}",
            # the nodes would also share /tmp/ray's session directory (logs, object-store and raylet sockets)
            f"--temp-dir=/tmp/mobscale-ray-{job}-{rank}"]


def _ray_bin() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else "ray"


def _ray_start(args: list[str], cpus: int, gpus: int) -> subprocess.Popen:
    cmd = [_ray_bin(), "start", *args, f"--num-cpus={cpus}", f"--num-gpus={gpus}", "--disable-usage-stats", "--block"]
    log.info("starting: %s", " ".join(cmd))
    # nothing is left to drain when we stop a node (the training has ended): don't wait Ray's default 30 s
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": os.environ.get("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "2")}
    return subprocess.Popen(cmd, preexec_fn=_ignore_preempt_signal, env=env)


def _ray_status_ok(address: str) -> bool:
    r = subprocess.run([_ray_bin(), "status", f"--address={address}"], capture_output=True, text=True)
    return r.returncode == 0 and "Active:" in r.stdout


def _wait_for(cond, timeout_s: float, what: str, proc: subprocess.Popen | None = None, failed: Path | None = None) -> None:
    """Poll ``cond`` until true; fail if ``proc`` (our `ray start`) exits, a node reports ``failed-*`` in the
    rendezvous directory ``failed``, or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode} while waiting for {what}")
        reports = sorted(failed.glob("failed-*")) if failed is not None else []
        if reports:
            raise RuntimeError(f"while waiting for {what}: " + "; ".join(p.read_text() for p in reports))
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(1.0)


def _stop(proc: subprocess.Popen) -> None:
    """End a `ray start --block` we started (SIGTERM makes it stop its raylet and, on the head, the GCS)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ============================================================================================== submission


def submit_train(cfg, run_dir: str | Path, *, nodes: int, gpus_per_node: int | None = None, partition: str | None = None, workers: int | None = None, task_factory: str | None = None, init_from: str | None = None):
    """Submit the training of ``cfg`` into ``run_dir`` as one SLURM job of ``nodes`` nodes; returns the submitit Job.

    Re-submitting the same command resumes the run (the job itself resumes after a requeue).
    """
    if shutil.which("sbatch") is None:
        raise ConfigError("--nodes submits to SLURM, but `sbatch` is not on PATH (run on a login node, or drop --nodes to train here)")
    if nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, got {nodes}")
    dc = cfg.distributed
    gpus = dc.gpus_per_node if gpus_per_node is None else gpus_per_node
    if gpus < 0:
        raise ConfigError(f"--gpus-per-node must be >= 0, got {gpus}")
    per_node = gpus if gpus > 0 else 1
    cpus_per_node = dc.cpus_per_node or per_node * dc.cpus_per_worker
    if cpus_per_node < per_node:
        raise ConfigError(f"distributed.cpus_per_node={cpus_per_node} is fewer than the {per_node} workers per node")
    capacity = nodes * per_node
    workers = workers or capacity
    if workers > capacity:
        raise ConfigError(f"--workers {workers} does not fit {nodes} node(s) x {per_node} worker(s) per node")
    dc.workers = workers
    dc.use_gpu = gpus > 0
    dc.gpus_per_node = gpus
    dc.cpus_per_worker = max(1, cpus_per_node // per_node)
    if partition is not None:
        dc.partition = partition

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    check_same_run(run_dir, cfg)  # fail on the login node, not after queueing
    if init_from:
        init_from = str(Path(init_from).resolve())

    executor = submitit.AutoExecutor(folder=run_dir / "slurm" / "%j", cluster="slurm")
    params = {
        "name": f"mobscale-{cfg.name}",
        "nodes": nodes,
        "tasks_per_node": 1,
        "cpus_per_task": cpus_per_node,
        "timeout_min": dc.time_min,
        "slurm_signal_delay_s": 90,
        "stderr_to_stdout": True,
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if dc.partition:
        params["slurm_partition"] = dc.partition
    if dc.mem_gb:
        params["mem_gb"] = dc.mem_gb
    executor.update_parameters(**params)
    job = executor.submit(TrainJob(cfg.model_dump(mode="json"), str(run_dir), nodes, cpus_per_node, gpus, task_factory, init_from))
    log.info("submitted SLURM job %s: %d node(s), %d worker(s), %d CPUs%s per node; logs in %s", job.job_id, nodes, workers, cpus_per_node, f" + {gpus} GPUs" if gpus else "", run_dir / "slurm" / str(job.job_id))
    return job
