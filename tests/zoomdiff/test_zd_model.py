"""The shared denoiser, its encoders and the registry."""

from __future__ import annotations

import math

import pytest
import torch

from mobscale.config import load_dict
from mobscale.diffusion.drdm import DRDM
from mobscale.errors import ConfigError, InputDataError
from mobscale.model.encoders import sinusoidal
from mobscale.model.registry import build_model
from mobscale.train.zoomdiff_task import ZoomDiffTask

from zd_synth import make_batch, segment_spread

TINY = {"kind": "zoomdiff", "width": 16, "blocks": 2, "heads": 2, "context_dim": 8, "tpe_dim": 16, "spe_dim": 8}


def setup(model: dict | None = None, diffusion: dict | None = None, P: int = 8, L: int = 8, seed: int = 0):
    cfg = load_dict({"model": model or TINY, "diffusion": {"steps": 16, "spatial": ["cell", "grid100", "grid50"], "temporal": ["4h", "1h"], **(diffusion or {})}})
    d = DRDM(cfg.diffusion)
    info = {"patch": P, "hours": L, "stages": d.plan.pairs, "n_aoi": 8, "n_house_road": 7, "n_poi": 21}
    torch.manual_seed(seed)
    return cfg, d, build_model(cfg, info), make_batch(d, B=3, L=L, P=P, seed=seed)


def test_tpe_is_eq6():
    got = sinusoidal(torch.tensor([1.0, 7.0]), 4)
    # i = 0, 1: frequencies 10000^(-2i/4) = 1, 0.01; sines first, then cosines
    want = torch.tensor([[math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)], [math.sin(7), math.sin(0.07), math.cos(7), math.cos(0.07)]])
    torch.testing.assert_close(got, want)


def test_periodic_tpe_harmonics():
    """The optional daily/weekly harmonics: exact 24 h and 168 h periods, and a model that uses them."""
    from mobscale.model.encoders import harmonics

    h = torch.arange(0, 168)
    f = harmonics(h, 3)
    assert f.shape == (168, 2 * (3 + 2))
    daily = torch.cat([f[:, :3], f[:, 5:8]], dim=1)  # sines k = 1..3 / 24 h, cosines k = 1..3 / 24 h
    torch.testing.assert_close(daily[:144], daily[24:], atol=1e-4, rtol=0)  # float32 angles up to ~130 rad
    assert not torch.allclose(f[:144, 3], f[24:, 3], atol=1e-3)  # the weekly harmonic tells the days apart
    torch.testing.assert_close(f[0, 5:], torch.ones(5))  # cosines at hour 0
    base = setup()[2]
    cfg, d, model, batch = setup(model={**TINY, "tpe_periodic": 3})
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in base.parameters()) == 10 * 16 + 16
    torch.nn.init.normal_(model.out.weight, std=0.1)
    out = model(batch["x"][:, 0], torch.tensor([15, 14, 2]), torch.tensor([0, 1, 2]), batch)
    out.pow(2).mean().backward()
    assert float(model.pe.periodic_proj.weight.grad.abs().sum()) > 0


def test_forward_shapes_and_cpu_test_model_size():
    cfg = load_dict({})  # default ZoomDiffModelConfig (width 32, 3 blocks, 128-d TPE/SPE), S4T4
    d = DRDM(cfg.diffusion)
    info = {"patch": 16, "hours": 24, "stages": d.plan.pairs, "n_aoi": 8, "n_house_road": 7, "n_poi": 21}
    model = build_model(cfg, info)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 1_000_000, n_params
    batch = make_batch(d, B=2, L=24, P=16)
    out = model(batch["x"][:, 0], torch.tensor([5, 150]), torch.tensor([3, 0]), batch)
    assert out.shape == (2, 24, 16, 16) and out.dtype == torch.float32


def test_spe_is_a_trained_and_saved_parameter():
    cfg, d, model, batch = setup()
    assert "pe.spe" in model.state_dict()
    assert any(p is model.pe.spe for p in model.parameters())
    # out layer starts at zero (adaLN-Zero); give it weights so gradients reach the SPE
    torch.nn.init.normal_(model.out.weight, std=0.1)
    stage = torch.tensor([0, 0, 2])  # SPE tables: cell (0) and grid50 (2) used, grid100 (1) not
    out = model(batch["x"][:, 0], torch.tensor([15, 14, 2]), stage, batch)
    out.pow(2).mean().backward()
    g = model.pe.spe.grad
    assert g is not None and float(g[0].abs().sum()) > 0 and float(g[2].abs().sum()) > 0
    assert float(g[1].abs().sum()) == 0.0


def test_conditions_are_coarsened_to_each_items_stage():
    cfg, d, model, batch = setup()
    stage = torch.tensor([0, 1, 2])
    h = model.conditions(batch, stage, tuple(batch["x"][:, 0].shape))
    for i, k in enumerate(stage.tolist()):
        s = d.plan.stages[k]
        spread = segment_spread(h[i : i + 1], batch["units"][i : i + 1, s.level_index], s.block)
        assert spread < 1e-5  # piecewise constant at (cell, 4h), (grid100, 1h), trivially at (grid50, 1h)
    # the finest stage keeps per-pixel, per-hour detail: it varies inside the coarse stages' segments
    coarse = d.plan.stages[0]
    assert segment_spread(h[2:], batch["units"][2:, coarse.level_index], coarse.block) > 1e-3


def test_learned_fusion_starts_as_identity_and_skips_stage_zero():
    cfg, d, model, batch = setup(diffusion={"fusion": "mlp"})
    assert model.fusion is not None
    x = batch["x"][:, 1]
    n, stage = torch.tensor([3, 3, 12]), torch.tensor([2, 2, 0])
    prior = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(x, n, stage, batch)
        torch.testing.assert_close(model(x, n, stage, batch, prior), base)  # zero-initialised residual
        torch.nn.init.normal_(model.fusion.out.weight)
        fused = model(x, n, stage, batch, prior)
    assert not torch.allclose(fused[:2], base[:2])
    assert torch.equal(fused[2], base[2])  # stage 0 has no prior


def test_eps_prior_without_learned_fusion_is_an_error():
    cfg, d, model, batch = setup(diffusion={"fusion": "mix"})
    with pytest.raises(ConfigError, match="without the learned fusion"):
        model(batch["x"][:, 0], torch.tensor([1, 1, 1]), torch.tensor([2, 2, 2]), batch, torch.zeros_like(batch["x"][:, 0]))


def test_bad_inputs_fail_with_named_variables():
    cfg, d, model, batch = setup()
    x, n, s = batch["x"][:, 0], torch.tensor([1, 1, 1]), torch.tensor([2, 2, 2])
    bad = {**batch, "context": {**batch["context"], "aoi": batch["context"]["aoi"] + 8}}
    with pytest.raises(InputDataError, match="'aoi'.*outside \\[0, 8\\)"):
        model(x, n, s, bad)
    with pytest.raises(InputDataError, match="patch 4x4"):
        model(x[:, :, :4, :4], n, s, batch)
    bad_poi = {**batch, "context": {**batch["context"], "poi": batch["context"]["poi"][:, :5]}}
    with pytest.raises(InputDataError, match="'poi' has 5 categories"):
        model(x, n, s, bad_poi)


def test_ablation_switches_build_smaller_models():
    _, _, full, batch = setup()
    _, _, bare, _ = setup(model={**TINY, "use_tpe": False, "use_spe": False, "use_context": False})
    assert bare.pe is None and bare.context is None
    assert sum(p.numel() for p in bare.parameters()) < sum(p.numel() for p in full.parameters())
    out = bare(batch["x"][:, 0], torch.tensor([1, 2, 3]), torch.tensor([2, 2, 2]), batch)
    assert out.shape == batch["x"][:, 0].shape


def test_registry_rejects_unknown_kinds(monkeypatch):
    from mobscale.model import registry

    cfg = load_dict({"model": {"kind": "csdi"}})
    monkeypatch.delitem(registry.MODELS, "csdi")
    with pytest.raises(ConfigError, match="no model registered for model.kind=csdi"):
        build_model(cfg, {})
    with pytest.raises(ConfigError, match="lacks 'stages'"):
        build_model(load_dict({}), {"patch": 8})


def test_transfer_subset_freezes_the_early_blocks():
    cfg, d, model, batch = setup(model={**TINY, "blocks": 3, "trainable": "transfer"}, diffusion={"fusion": "mlp"})
    task = ZoomDiffTask(cfg)
    chosen = {id(p) for p in task.trainable_parameters(model)}
    assert all(id(p) not in chosen for p in model.blocks[0].parameters())
    assert all(id(p) not in chosen for p in model.blocks[1].parameters())
    for part in (model.blocks[2], model.fusion, model.pe, model.context, model.out, model.stage_emb):
        assert all(id(p) in chosen for p in part.parameters())
    assert len(task.trainable_parameters(model, "all")) == len(list(model.parameters()))


def test_bf16_forward_and_backward():
    # DeepSpeed bf16 casts the module and every float input; integer inputs (steps, hours) stay int64
    cfg, d, model, batch = setup(diffusion={"fusion": "mlp"})
    model = model.to(torch.bfloat16)
    cast = {**batch, "context": {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in batch["context"].items()}}
    x = batch["x"].to(torch.bfloat16)
    loss, _ = d.training_loss(model, x, cast, torch.Generator().manual_seed(0))
    assert loss.dtype == torch.bfloat16 and bool(torch.isfinite(loss))
    loss.backward()
    assert model.pe.spe.grad is not None
