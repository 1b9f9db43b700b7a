"""Golden values of DRDM's coefficients and equations (paper eqs. 10-15) on hand-checkable schedules."""

from __future__ import annotations

import math

import pytest
import torch

from mobscale.config.zoomdiff import DRDMConfig
from mobscale.diffusion.drdm import DRDM

from zd_synth import Oracle, make_batch

# Two stages over N = 8 steps: stage 0 = (cell, 1h) on n in [4, 8), stage 1 = (grid50, 1h) on n in [0, 4).
# Linear betas 0.1 -> 0.5 make every number below checkable by hand.
TWO = dict(spatial=["cell", "grid50"], temporal=["1h"], steps=8, rgp="fine_greedy", beta_schedule="linear", beta_start=0.1, beta_end=0.5)


def proc(**kw) -> DRDM:
    return DRDM(DRDMConfig(**{**TWO, **kw}))


def test_eq15_sn_restarts_the_linear_schedule_in_every_stage():
    d = proc(noise="SN")
    per_stage = [0.1, 0.1 + 0.4 / 3, 0.1 + 0.8 / 3, 0.5]  # linspace(0.1, 0.5, 4): (n - N_k) / (N_{k-1} - N_k - 1)
    assert torch.allclose(d.betas, torch.tensor(per_stage * 2, dtype=torch.float64), atol=1e-12)
    # abar restarts at 1 - beta_start at the bottom of each stage: 0.9, 0.69, 0.437, 0.2185 in both stages
    want = torch.tensor([0.9, 0.69, 0.437, 0.2185] * 2, dtype=torch.float64)
    assert torch.allclose(d.abar, want, atol=1e-12)


def test_eq14_cn_is_one_linear_schedule_over_all_steps():
    d = proc(noise="CN")
    assert torch.allclose(d.betas, torch.linspace(0.1, 0.5, 8, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(d.abar, torch.cumprod(1 - torch.linspace(0.1, 0.5, 8, dtype=torch.float64), 0), atol=1e-12)
    assert torch.all(d.abar[1:] < d.abar[:-1])  # continuous: no restart at the node n = 4


def test_sn_stage_nodes_are_noise_free_and_cn_nodes_are_not():
    # Definition: the node of stage k is the state after its lowest step (local t = 0), i.e. the clean
    # endpoint (signal coefficient exactly 1). The lowest noisy step has abar = 1 - beta_start, so its noise
    # scale is sqrt(beta_start) = 0.01 with the default schedule.
    cfg = DRDMConfig()  # S4T4, N = 200, SN, quadratic 1e-4 -> 0.2
    d = DRDM(cfg)
    for s in d.plan.stages:
        assert d.abar[s.lo] == pytest.approx(1 - cfg.beta_start, abs=1e-12)
        assert math.sqrt(1 - float(d.abar[s.lo])) == pytest.approx(0.01, rel=1e-9)
        assert float(d.abar[s.hi - 1]) < 0.05  # each stage starts close to noise
    cn = DRDM(DRDMConfig(noise="CN"))
    for s in cn.plan.stages[:-1]:
        assert float(cn.abar[s.lo]) < 0.9  # CN intermediate nodes carry noise (the paper's collapse)


def test_eq10_prior_noise_and_p_golden():
    d = proc(noise="SN")
    x = torch.ones(2, 1, 1, 1)
    z = torch.full((2, 1, 1, 1), 2.0)
    n = torch.tensor([1, 5])  # abar 0.69 in both; item 0 is at stage 1, item 1 at stage 0 (no prior)
    stage = torch.tensor([1, 0])
    eps_prior, P = d.prior_terms(x, z, n, stage)
    # eps_prior = (1 - sqrt(0.69) 2) / sqrt(0.31); P = sqrt(0.69 / 0.31) 2
    assert float(eps_prior[0]) == pytest.approx(-1.1877743551766844, rel=1e-6)
    assert float(P[0]) == pytest.approx(2.9838273754444335, rel=1e-6)
    assert float(eps_prior[1]) == 0.0 and float(P[1]) == 0.0


@pytest.mark.parametrize(
    "fusion,want",
    [("none", 0.5), ("add", 0.5 + 2.9838273754444335), ("mix", 0.5 * 0.5 + 0.5 * -1.1877743551766844)],
)
def test_eq13_sigma_fusion_golden(fusion, want):
    d = proc(noise="SN", fusion=fusion, fusion_lambda=0.5)

    def const(x, n, stage, cond, eps_prior):
        assert eps_prior is None
        return torch.full_like(x, 0.5)

    x = torch.ones(2, 1, 1, 1)
    z = torch.full((2, 1, 1, 1), 2.0)
    sigma = d.estimate_eps(const, x, torch.tensor([1, 5]), torch.tensor([1, 0]), None, z)
    assert float(sigma[0]) == pytest.approx(want, rel=1e-6)
    assert float(sigma[1]) == pytest.approx(0.5, rel=1e-6)  # stage 0: eps_theta alone


def test_learned_fusion_receives_eps_prior():
    d = proc(noise="SN", fusion="mlp")
    got = {}

    def net(x, n, stage, cond, eps_prior):
        got["prior"] = eps_prior
        return torch.zeros_like(x)

    d.estimate_eps(net, torch.ones(2, 1, 1, 1), torch.tensor([1, 5]), torch.tensor([1, 0]), None, torch.full((2, 1, 1, 1), 2.0))
    assert float(got["prior"][0]) == pytest.approx(-1.1877743551766844, rel=1e-6)
    assert float(got["prior"][1]) == 0.0


def test_eq13_reverse_step_golden():
    d = proc(noise="SN")
    # stage 1, local t = 1: beta 0.2333, alpha 0.7667, abar 0.69, abar_prev 0.9
    # mean = (x - beta / sqrt(1 - abar) sigma) / sqrt(alpha); var = beta (1 - abar_prev) / (1 - abar)
    x = torch.ones(1, 1, 1, 1)
    out = d.reverse_step(x, torch.full_like(x, 0.2), 1, 1, torch.full_like(x, 0.3))
    assert float(out) == pytest.approx(1.128661572705244, rel=1e-6)
    mean = d.reverse_step(x, torch.full_like(x, 0.2), 1, 1, None)
    assert float(mean) == pytest.approx(1.046356083529934, rel=1e-6)


@pytest.mark.parametrize("adding", ["SA", "CA"])
def test_eq11_forward_uses_own_level_for_sa_and_finest_for_ca(adding):
    d = DRDM(DRDMConfig(adding=adding, steps=40))  # S4T4: 4 stages of 10 steps
    B, K = 4, d.K
    targets = torch.arange(1, K + 1, dtype=torch.float32).view(1, K, 1, 1, 1).expand(B, K, 2, 2, 2).contiguous()
    n = torch.tensor([35, 25, 15, 5])  # one item per stage
    stage, x_n, z = d.training_inputs(targets, n, torch.zeros(B, 2, 2, 2))
    assert stage.tolist() == [0, 1, 2, 3]
    clean = torch.tensor([1.0, 2.0, 3.0, 4.0]) if adding == "SA" else torch.full((4,), 4.0)
    want = d.abar[n].sqrt().float() * clean
    assert torch.allclose(x_n[:, 0, 0, 0], want, atol=1e-6)
    assert z[1:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]  # the coarser stage's target is the prior's clean data


@pytest.mark.parametrize("fusion", ["none", "add", "mix"])
@pytest.mark.parametrize("adding", ["SA", "CA"])
@pytest.mark.parametrize("noise", ["SN", "CN"])
def test_eq12_loss_is_zero_for_the_oracle(noise, adding, fusion):
    # the training target of eq. 12 and the sampler's Sigma agree: a denoiser that knows the data scores 0
    d = DRDM(DRDMConfig(spatial=["cell", "grid100", "grid50"], temporal=["4h", "1h"], steps=24, noise=noise, adding=adding, fusion=fusion))
    batch = make_batch(d, B=6, seed=3)
    loss, metrics = d.training_loss(Oracle(d, batch["x"]), batch["x"], batch, torch.Generator().manual_seed(0))
    assert float(loss) < 1e-8
    assert metrics["loss"] == pytest.approx(float(loss))


def test_loss_of_zero_predictor_is_mean_square_noise():
    d = DRDM(DRDMConfig(steps=40))
    batch = make_batch(d, B=4, L=24, seed=1)
    g = torch.Generator().manual_seed(7)
    loss, metrics = d.training_loss(lambda x, n, s, c, e: torch.zeros_like(x), batch["x"], batch, g)
    g2 = torch.Generator().manual_seed(7)
    torch.randint(0, 40, (4,), generator=g2)
    eps = torch.randn(4, 24, 8, 8, generator=g2)
    assert float(loss) == pytest.approx(float(eps.pow(2).mean()), rel=1e-6)
    assert set(metrics) == {"loss", "loss_stage0", "loss_stage1", "loss_stage2", "loss_stage3"}


def test_per_stage_metrics_are_dense_and_average_to_the_stage_loss():
    # the engines average metric dicts over steps and ranks with a fixed key set: every key in every batch,
    # and the mean over batches estimates the stage's loss without bias
    d = DRDM(DRDMConfig(spatial=["cell", "grid50"], temporal=["1h"], steps=30, rgp="uniform"))  # stages of 15 steps
    batch = make_batch(d, B=2, L=2, seed=0)
    level = torch.tensor([3.0, 1.0])  # a "denoiser" whose squared error is 9 at stage 0 and 1 at stage 1
    net = lambda x, n, s, c, e: level[s].view(-1, 1, 1, 1) + torch.zeros_like(x)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    runs = []
    for _ in range(400):
        _, m = d.training_loss(net, torch.zeros_like(batch["x"]), batch, g)
        assert set(m) == {"loss", "loss_stage0", "loss_stage1"}
        runs.append((m["loss_stage0"], m["loss_stage1"]))
    mean0 = sum(r[0] for r in runs) / len(runs)
    mean1 = sum(r[1] for r in runs) / len(runs)
    assert mean0 == pytest.approx(10.0, rel=0.1)  # E[(3 - eps)^2] = 9 + 1
    assert mean1 == pytest.approx(2.0, rel=0.1)  # E[(1 - eps)^2] = 1 + 1
