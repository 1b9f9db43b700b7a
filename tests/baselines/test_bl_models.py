"""CSDI- and DiT-style networks and the plain DDPM process: shapes, sizes, the samplers' correctness,
determinism and per-window independence."""

from __future__ import annotations

import math

import pytest
import torch

from mobscale.config import load, load_dict
from mobscale.config.baselines import GaussianConfig
from mobscale.diffusion.gaussian import GaussianDiffusion
from mobscale.errors import ConfigError, InputDataError
from mobscale.model.registry import build_model

from bl_common import INFO, TINY_CSDI, TINY_DIT, tensor_batch


def _net(model: dict, seed: int = 0, randomise_head: bool = False):
    torch.manual_seed(seed)
    net = build_model(load_dict({"model": model}), INFO)
    if randomise_head:  # zero-initialised layers (output head, adaLN-Zero) make the untrained net trivial
        with torch.no_grad():
            for p in net.parameters():
                if p.ndim == 2 and not p.any():
                    p.normal_(std=0.3)
    return net.eval()


@pytest.mark.parametrize("model", [TINY_CSDI, TINY_DIT], ids=["csdi", "dit"])
def test_networks_map_windows_to_noise_and_start_at_zero(model):
    torch.set_num_threads(1)
    net = _net(model)
    n_params = sum(p.numel() for p in net.parameters())
    assert 1_000 < n_params < 1_000_000
    batch = tensor_batch(B=3)
    x = torch.randn(3, 8, 8, 8)
    out = net(x, torch.tensor([0, 17, 49]), batch)
    assert out.shape == (3, 8, 8, 8)
    assert torch.count_nonzero(out) == 0  # zero output layer: eps_theta = 0, the loss starts at E[eps^2] = 1
    net = _net(model, randomise_head=True)
    a = net(x, torch.tensor([0, 17, 49]), batch)
    b = net(x, torch.tensor([1, 17, 49]), batch)
    assert torch.isfinite(a).all() and not torch.equal(a[0], b[0]) and torch.equal(a[1:], b[1:])  # step-dependent, per item


def test_demo_baselines_are_sized_like_the_zoomdiff_demo_network():
    from mobscale.diffusion.drdm import DRDM

    zd = load("configs/demo.yaml")
    info = {"patch": 16, "hours": 24, "n_aoi": 8, "n_house_road": 7, "n_poi": 21, "stages": DRDM(zd.diffusion).plan.pairs}
    count = lambda cfg: sum(p.numel() for p in build_model(cfg, info).parameters())  # noqa: E731
    ref = count(zd)
    for name in ("csdi-demo", "dit-demo"):
        cfg = load(f"configs/{name}.yaml")
        assert cfg.diffusion.steps == 50 and cfg.diffusion.beta_schedule == "quadratic"
        assert 0.8 * ref < count(cfg) < 1.25 * ref, (name, count(cfg), ref)


def test_dit_tokens_tile_the_window_exactly():
    net = _net(TINY_DIT)
    x = torch.randn(2, 8, 8, 8, 1)
    tok = net.patchify(x)
    assert tok.shape == (2, 4 * 4 * 4, 8, 1)
    # token 0 holds hours 0-1 x pixels [0:2, 0:2]
    assert torch.equal(tok[0, 0, :, 0], x[0, 0:2, 0:2, 0:2, 0].reshape(-1))
    assert torch.equal(net.unpatchify(tok[..., 0]), x[..., 0])
    with pytest.raises(ConfigError, match="do not tile"):
        build_model(load_dict({"model": {**TINY_DIT, "patch_t": 3}}), INFO)


@pytest.mark.parametrize("model", [TINY_CSDI, TINY_DIT], ids=["csdi", "dit"])
def test_refinement_variant_reads_the_coarse_channel(model):
    net = _net({**model, "cond_level": "bs"}, randomise_head=True)
    batch = tensor_batch(B=2)
    x = torch.randn(2, 8, 8, 8)
    with pytest.raises(InputDataError, match="coarse"):
        net(x, torch.tensor([3, 3]), batch)
    a = net(x, torch.tensor([3, 3]), {**batch, "coarse": torch.zeros(2, 8, 8, 8)})
    b = net(x, torch.tensor([3, 3]), {**batch, "coarse": torch.ones(2, 8, 8, 8)})
    assert not torch.allclose(a, b)
    with pytest.raises(InputDataError, match="does not match"):
        net(torch.randn(2, 8, 6, 6), torch.tensor([3, 3]), batch)


def test_csdi_schedule_is_quadratic_from_1e4_to_half():
    p = GaussianDiffusion(GaussianConfig())
    b = p.schedule.betas
    assert p.T == 50 and b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.5)
    assert b.sqrt().diff().allclose(torch.full((49,), (0.5**0.5 - 0.01) / 49, dtype=torch.float64))
    assert p.schedule.abar[-1] < 1e-3  # the chain ends at (almost) pure noise


@pytest.mark.parametrize("clip", [None, 10.0], ids=["raw", "clip"])
@pytest.mark.parametrize("steps", [None, 10, 50])
def test_samplers_recover_the_data_with_an_exact_noise_estimate(steps, clip):
    """With the oracle eps (x_t - sqrt(abar) x0) / sqrt(1 - abar), ancestral DDPM and DDIM both end at x0
    (an inactive clip of the clean estimate changes nothing)."""
    p = GaussianDiffusion(GaussianConfig(clip_x0=clip))
    x0 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    ab = p.schedule.abar

    def oracle(x, t, cond):
        a = ab[t].view(-1, 1, 1, 1)
        return ((x.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).float()

    out = p.sample(oracle, None, x0.shape, generator=torch.Generator().manual_seed(1), steps=steps)
    assert torch.allclose(out, x0, atol=1e-4)


@pytest.mark.parametrize("steps", [None, 10])
def test_clipped_samplers_keep_the_clean_estimate_in_range(steps):
    ab = GaussianDiffusion(GaussianConfig()).schedule.abar

    def far(x, t, cond):  # exact noise for data at 2.0, outside the clip ranges below
        a = ab[t].view(-1, 1, 1, 1)
        return ((x.double() - a.sqrt() * 2.0) / (1 - a).sqrt()).float()

    shape, g = (2, 3, 2, 2), torch.Generator
    out = GaussianDiffusion(GaussianConfig(clip_x0=0.5)).sample(far, None, shape, generator=g().manual_seed(0), steps=steps)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=1e-4)
    data = GaussianDiffusion(GaussianConfig(clip_x0="data"))
    out = data.sample(far, None, shape, generator=g().manual_seed(0), steps=steps, x0_range=(-0.2, 0.7))
    assert torch.allclose(out, torch.full_like(out, 0.7), atol=1e-4)
    with pytest.raises(ValueError, match="x0_range"):
        data.sample(far, None, shape, generator=g().manual_seed(0), steps=steps)


def test_sampling_is_seeded_and_each_window_has_its_own_stream():
    torch.set_num_threads(1)
    p = GaussianDiffusion(GaussianConfig(steps=12))
    net = _net(TINY_CSDI, randomise_head=True)
    full = tensor_batch(B=3, seed=4)

    def pick(idx):
        sub = {k: (v[idx] if torch.is_tensor(v) else {kk: vv[idx] for kk, vv in v.items()}) for k, v in full.items()}
        return sub

    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = p.sample(net, pick([0, 1]), (2, 8, 8, 8), generator=[g(1), g(2)], steps=4, eta=1.0)
    b = p.sample(net, pick([0, 2]), (2, 8, 8, 8), generator=[g(1), g(3)], steps=4, eta=1.0)
    c = p.sample(net, pick([0, 1]), (2, 8, 8, 8), generator=[g(1), g(2)], steps=4, eta=1.0)
    assert torch.equal(a, c)  # bit-reproducible
    assert torch.allclose(a[0], b[0], atol=1e-6)  # window 0 does not care who shares its batch
    assert not torch.allclose(a[1], b[1])
    solo = p.sample(net, pick([0]), (1, 8, 8, 8), generator=[g(1)], steps=4, eta=1.0)
    assert torch.allclose(a[0], solo[0], atol=1e-5)
    with pytest.raises(ValueError, match="generators for a batch"):
        p.sample(net, pick([0, 1]), (2, 8, 8, 8), generator=[g(1)], steps=4)
    assert math.isfinite(float(a.abs().max()))
