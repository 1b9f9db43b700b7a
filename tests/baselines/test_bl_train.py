"""Training the diffusion baselines: the loss decreases, the task drives the real windows of a city store,
and an export (weights_only) becomes a window generator that samples deterministically per window."""

from __future__ import annotations

import pytest
import torch

from mobscale.config import dump, load_dict
from mobscale.config.baselines import GaussianConfig
from mobscale.data.windows import Normaliser
from mobscale.diffusion.gaussian import GaussianDiffusion
from mobscale.errors import ConfigError
from mobscale.model.export import load_export, save_export
from mobscale.model.registry import build_model
from mobscale.train.zoomdiff_task import BaselineTask

from bl_common import INFO, TINY_CSDI, TINY_DIT, run_cfg, tensor_batch


@pytest.mark.parametrize("model", [TINY_CSDI, TINY_DIT], ids=["csdi", "dit"])
def test_tiny_training_run_reduces_the_loss(model):
    torch.set_num_threads(1)
    p = GaussianDiffusion(GaussianConfig())
    batch = tensor_batch(B=8, seed=1)
    # a structured target: a daily wave per pixel scaled by its (log) population, plus a little noise
    g = torch.Generator().manual_seed(2)
    wave = torch.sin(torch.arange(8) / 8 * 6.28).view(1, 8, 1, 1)
    x0 = wave * torch.log1p(batch["context"]["population"]) / 3 + 0.1 * torch.randn(8, 8, 8, 8, generator=g)
    torch.manual_seed(0)
    net = build_model(load_dict({"model": model}), INFO)

    def held_out() -> float:  # fixed (t, eps) draws, independent of the training stream
        with torch.no_grad():
            return sum(float(p.training_loss(net, x0, batch, torch.Generator().manual_seed(100 + i))[0]) for i in range(6)) / 6

    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    before = held_out()
    gen = torch.Generator().manual_seed(3)
    for _ in range(60):
        loss, info = p.training_loss(net, x0, batch, gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    after = held_out()
    assert before == pytest.approx(1.0, abs=0.1)  # eps_theta = 0 at initialisation
    assert after < 0.7 * before, (before, after)
    assert set(info) == {"loss"}


@pytest.fixture(scope="module")
def csdi_run(tiny_city, tmp_path_factory):
    cfg = run_cfg(tiny_city, TINY_CSDI, split_by="band", hours=8)
    task = BaselineTask(cfg)
    run = tmp_path_factory.mktemp("csdi-run")
    task.prepare(run)
    task.setup(run)
    return cfg, task, run


def test_task_trains_on_the_finest_stage_of_the_city_windows(csdi_run):
    cfg, task, run = csdi_run
    assert task.stages == [("grid50", "1h")]
    ds = task.dataset("train")
    batch = torch.utils.data.default_collate([ds[i] for i in range(3)])
    assert batch["targets"].shape == (3, 1, 8, 8, 8)
    torch.manual_seed(0)
    model = task.build_model()
    loss, info = task.loss(model, batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and info["loss"] == pytest.approx(loss.item())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ConfigError, match="targets"):
        task.loss(model, {**batch, "targets": batch["targets"][:, 0]})
    with pytest.raises(ConfigError, match="BaselineTask"):
        BaselineTask(load_dict({"model": {"kind": "zoomdiff"}}))


def _export(task, cfg, run, model):
    return save_export(run / "export", kind=cfg.model.kind, config_yaml=dump(cfg), state_dict=model.state_dict(),
                       normalisation=task.normalisation(), extra=task.export_extra())


def _tame(gen):
    """Stand in for a trained network (an untrained one's clean estimate x_t / sqrt(abar) overflows expm1):
    the exact noise for the bounded clean estimate tanh(net(x, t, cond)), which still depends on the real
    network, the noisy input and the window's context. Returns coef(t) -> (sqrt(abar_t), sqrt(1 - abar_t))."""
    ab, net = gen.process.schedule.abar, gen.model

    def coef(t):
        return ab[t].sqrt().view(-1, 1, 1, 1).float(), (1 - ab[t]).sqrt().view(-1, 1, 1, 1).float()

    def tamed(x, t, cond):
        sa, s1a = coef(t)
        return (x - sa * torch.tanh(net(x, t, cond))) / s1a

    gen.model = tamed
    return coef


def _windows_batch(store, origins, patch=8, hours=8, coarse=None):
    from mobscale.data.windows import ContextWindows, Window

    ds = ContextWindows(store, [Window(*o) for o in origins], patch, hours, coarse=coarse)
    return torch.utils.data.default_collate([ds[i] for i in range(len(ds))])


def test_export_round_trip_gives_a_seeded_per_window_generator(csdi_run, tiny_city):
    from mobscale.sample.generators import load_generator

    cfg, task, run = csdi_run
    torch.manual_seed(0)
    model = task.build_model()
    with torch.no_grad():  # an "trained" model: random output head
        model.head[2].weight.normal_(std=0.2)
    path = _export(task, cfg, run, model)
    payload = torch.load(path / "model.pt", weights_only=True)  # plain tensors + strings only
    assert payload["kind"] == "csdi"
    gen = load_generator(path)
    assert gen.stages == [("grid50", "1h")] and (gen.patch, gen.hours) == (8, 8)
    assert gen.x0_range == pytest.approx((float(task.normaliser.forward(torch.zeros(()))), task.normaliser.z_max))
    for k, v in model.state_dict().items():
        assert torch.equal(gen.model.state_dict()[k], v)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    ab = _windows_batch(tiny_city, [(0, 0, 0), (8, 8, 8)])
    ac = _windows_batch(tiny_city, [(0, 0, 0), (16, 0, 8)])
    net, norm = gen.model, gen.norm
    gen.model = lambda x, t, cond: torch.zeros_like(x)  # eps = 0: x_T is taken for sqrt(abar_T) x0, x0 ~ 170 x_T
    # an export whose Normaliser has no z_max cap: expm1 overflows and the generator must say so
    gen.norm = Normaliser(norm.transform, norm.scale, norm.mean, norm.std)
    with pytest.raises(FloatingPointError, match="untrained or diverged"):
        gen.generate(ab, [g(1), g(2)])
    gen.model, gen.norm = net, norm
    coef = _tame(gen)
    a = gen.generate(ab, [g(1), g(2)], steps_per_stage=5, eta=1.0)
    b = gen.generate(ac, [g(1), g(3)], steps_per_stage=5, eta=1.0)
    assert a.shape == (2, 1, 8, 8, 8) and (a >= 0).all() and torch.isfinite(a).all()
    assert torch.allclose(a[0], b[0], atol=1e-5) and not torch.allclose(a[1], b[1])  # per-window streams
    assert torch.equal(a, gen.generate(ab, [g(1), g(2)], steps_per_stage=5, eta=1.0))  # seeded
    full = gen.generate(ab, [g(1), g(2)])  # ancestral, all 50 steps
    assert full.shape == a.shape and torch.isfinite(full).all() and not torch.allclose(full, a)
    # an exact network for data that is z0 everywhere: both samplers return inverse(z0), in MB
    z0 = 0.3
    gen.model = lambda x, t, cond: (x - coef(t)[0] * z0) / coef(t)[1]
    want = gen.norm.inverse(torch.tensor(z0))
    for steps in (None, 7):
        out = gen.generate(ab, [g(1), g(2)], steps_per_stage=steps)
        assert torch.allclose(out, want.expand_as(out), rtol=1e-4), steps
    with pytest.raises(ConfigError, match="cond_level"):
        gen.generate(ab, [g(1), g(2)], refine=(0, torch.zeros(2, 8, 8, 8)))
    assert load_export(path).extra["stages"] == [["grid50", "1h"]]


@pytest.mark.parametrize("model", [TINY_CSDI, TINY_DIT], ids=["csdi", "dit"])
def test_refinement_baseline_trains_on_coarse_and_fine_and_refines(model, tiny_city, tmp_path):
    from mobscale.sample.generators import load_generator

    cfg = run_cfg(tiny_city, {**model, "cond_level": "bs"}, split_by="band", hours=8)
    task = BaselineTask(cfg)
    task.prepare(tmp_path)
    task.setup(tmp_path)
    assert task.stages == [("bs", "1h"), ("grid50", "1h")]
    ds = task.dataset("train")
    batch = torch.utils.data.default_collate([ds[i] for i in range(2)])
    net = task.build_model()
    loss, _ = task.loss(net, batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    gen = load_generator(_export(task, cfg, tmp_path, net))
    assert gen.stages == [("bs", "1h"), ("grid50", "1h")]
    _tame(gen)
    wb = _windows_batch(tiny_city, [(0, 0, 0), (8, 8, 8)], coarse=("bs", "1h"))
    coarse = wb.pop("coarse")
    g = [torch.Generator().manual_seed(s) for s in (1, 2)]
    out = gen.generate(wb, g, steps_per_stage=3, refine=(0, coarse))
    assert out.shape == (2, 2, 8, 8, 8) and torch.equal(out[:, 0], coarse)
    with pytest.raises(ConfigError, match="mobscale refine"):
        gen.generate(wb, g, steps_per_stage=3)


def test_local_engine_trains_and_exports_a_dit_baseline(tiny_city, tmp_path):
    """The whole path through the single-process engine: prepare -> 4 steps -> RUN/export -> generator."""
    from mobscale.sample.generators import load_generator
    from mobscale.train.loop import train_local

    cfg = run_cfg(tiny_city, TINY_DIT, split_by="band", hours=8)
    export = train_local(cfg, tmp_path / "run")
    gen = load_generator(export)
    assert gen.kind == "dit" and load_export(export).extra["step"] == 4
    _tame(gen)  # 4 steps do not make a sampler-worthy network
    out = gen.generate(_windows_batch(tiny_city, [(0, 0, 0)]), [torch.Generator().manual_seed(0)], steps_per_stage=3)
    assert out.shape == (1, 1, 8, 8, 8) and torch.isfinite(out).all()


def test_baseline_sampler_check_compares_samplers_with_the_real_windows(tiny_city, tmp_path):
    """jobs/baseline_sampler_check.py on a briefly trained DiT: every sampler that finishes is scored against the
    real traffic of the same windows, read here straight from the store."""
    import importlib.util
    import math
    from pathlib import Path

    import numpy as np

    from mobscale.data.store import open_city
    from mobscale.train.loop import train_local

    export = train_local(run_cfg(tiny_city, TINY_DIT, split_by="band", hours=8), tmp_path / "run")
    path = Path(__file__).resolve().parents[2] / "jobs" / "baseline_sampler_check.py"
    spec = importlib.util.spec_from_file_location("baseline_sampler_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.check(str(export), str(tiny_city), n=3, seed=1)
    assert "configured" in res  # the clamped sampler cannot overflow
    from mobscale.data.windows import CityArrays

    g50 = open_city(tiny_city).traffic_grid50

    arr = CityArrays(tiny_city, require_traffic=True)
    wins = mod.windows(arr, 8, 8, 3, 1)
    f = 60 // int(open_city(tiny_city).attrs.get("time_step_minutes", 60))
    raw = g50.values.astype(np.float64)
    raw = raw[: raw.shape[0] // f * f].reshape(-1, f, *raw.shape[1:]).sum(1)  # native steps -> hours
    real = np.stack([raw[w.t0 : w.t0 + 8, w.y0 : w.y0 + 8, w.x0 : w.x0 + 8] for w in wins])
    for name, d in res.items():
        assert math.isclose(d["zeros_mae"], real.mean(), rel_tol=1e-5), name
        assert 0.0 <= d["above_real_q999"] <= 1.0 and math.isfinite(d["mean_ratio"]) and d["mean_ratio"] >= 0
        assert d["mae"] >= 0 and math.isclose(d["median_real"], float(np.median(real)), rel_tol=1e-5)
