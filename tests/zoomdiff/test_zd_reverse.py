"""The reverse process (RRDP, eq. 13): oracle recovery for every schedule combination, DDIM, refinement,
projection onto the stage levels, determinism."""

from __future__ import annotations

import itertools

import pytest
import torch

from mobscale.config.zoomdiff import DRDMConfig
from mobscale.data.windows import Normaliser
from mobscale.diffusion.drdm import DRDM

from zd_synth import Oracle, make_batch, segment_spread

NORM = Normaliser("log1p", scale=1.0, mean=0.7, std=0.6)
SMALL = dict(spatial=["cell", "grid100", "grid50"], temporal=["4h", "1h"], steps=18)
COMBOS = list(itertools.product(["SN", "CN"], ["SA", "CA"], ["SD", "CD"]))


def run(d: DRDM, batch: dict, denoiser, seed: int = 0, **kw):
    B, K, L, P, _ = batch["x"].shape
    return d.sample(denoiser, batch, (B, L, P, P), generator=torch.Generator().manual_seed(seed), units=batch["units"], normaliser=NORM, **kw)


@pytest.mark.parametrize("fusion", ["none", "mix", "add", "mlp"])
@pytest.mark.parametrize("noise,adding,denoising", COMBOS)
def test_oracle_recovers_every_stage_for_all_eight_schedules(noise, adding, denoising, fusion):
    for start in (["noise", "prior"] if denoising == "SD" else ["prior"]):
        d = DRDM(DRDMConfig(**SMALL, noise=noise, adding=adding, denoising=denoising, fusion=fusion, stage_start=start))
        batch = make_batch(d, seed=5)
        oracle = Oracle(d, batch["x"])
        res = run(d, batch, oracle)
        assert oracle.calls == d.N  # one network call per step
        assert oracle.saw_prior == (fusion == "mlp")
        assert sorted(res.endpoints) == list(range(d.K))
        for k in range(d.K):
            # projected endpoints equal the stage's level of the data (SA: trained on it; CA: the finest data
            # projected onto the level, which is how the targets are defined)
            torch.testing.assert_close(res.endpoints[k], batch["x"][:, k], atol=2e-4, rtol=0)
        torch.testing.assert_close(res.final, batch["x"][:, -1], atol=2e-4, rtol=0)


@pytest.mark.parametrize("noise,adding,denoising", COMBOS)
def test_oracle_recovery_with_the_fast_sampler(noise, adding, denoising):
    d = DRDM(DRDMConfig(**SMALL, noise=noise, adding=adding, denoising=denoising, fusion="mix"))
    batch = make_batch(d, seed=6)
    for eta in (0.0, 1.0):
        oracle = Oracle(d, batch["x"])
        res = run(d, batch, oracle, steps_per_stage=2, eta=eta)
        assert oracle.calls == 2 * d.K
        torch.testing.assert_close(res.final, batch["x"][:, -1], atol=2e-4, rtol=0)


def test_oracle_without_projection_recovers_the_raw_data():
    d = DRDM(DRDMConfig(**SMALL, project_stages=False))
    batch = make_batch(d, seed=8)
    res = d.sample(Oracle(d, batch["x"]), batch, tuple(batch["x"][:, 0].shape), generator=torch.Generator().manual_seed(0))
    for k in range(d.K):
        torch.testing.assert_close(res.endpoints[k], batch["x"][:, k], atol=2e-4, rtol=0)


@pytest.mark.parametrize("noise,denoising", [("SN", "SD"), ("SN", "CD"), ("CN", "CD"), ("CN", "SD")])
def test_refinement_from_coarse_traffic_generates_only_the_finer_stages(noise, denoising):
    d = DRDM(DRDMConfig(**SMALL, noise=noise, denoising=denoising, fusion="add"))
    batch = make_batch(d, seed=9)
    oracle = Oracle(d, batch["x"])
    start = d.plan.last_stage_at("cell")
    res = d.refine(oracle, batch, batch["x"][:, start], start, generator=torch.Generator().manual_seed(1), units=batch["units"], normaliser=NORM)
    assert sorted(res.endpoints) == list(range(start, d.K))
    assert oracle.calls == sum(s.steps for s in d.plan.stages[start + 1 :])
    assert torch.equal(res.endpoints[start], batch["x"][:, start])
    torch.testing.assert_close(res.final, batch["x"][:, -1], atol=2e-4, rtol=0)


def test_refinement_feeds_the_given_coarse_traffic_to_the_prior():
    # with the prior as the only channel between stages (a fusion-only "network"), the refined output follows
    # whatever coarse traffic it is given
    d = DRDM(DRDMConfig(**SMALL, fusion="mix", fusion_lambda=1.0 - 1e-6, project_stages=False))
    batch = make_batch(d, seed=2)
    zero = lambda x, n, s, c, e: torch.zeros_like(x)  # noqa: E731
    outs = []
    for scale in (0.0, 1.0):
        coarse = batch["x"][:, 0] * scale
        res = d.refine(zero, batch, coarse, 0, generator=torch.Generator().manual_seed(0))
        outs.append(res.endpoints[1])
        # eps_hat == eps_prior: every step pulls the state onto the prior's clean data
        torch.testing.assert_close(res.endpoints[1], coarse, atol=1e-3, rtol=0)
    assert not torch.allclose(outs[0], outs[1])


@pytest.mark.parametrize("noise,adding,denoising", [("SN", "SA", "SD"), ("CN", "CA", "CD")])
def test_projected_stage_outputs_are_exactly_piecewise_constant(noise, adding, denoising):
    d = DRDM(DRDMConfig(**SMALL, noise=noise, adding=adding, denoising=denoising, fusion="mix"))
    batch = make_batch(d, seed=4)
    noisy_net = lambda x, n, s, c, e: 0.3 * x + 0.1 * torch.sin(3 * x)  # noqa: E731  (not an oracle: real structure)
    res = run(d, batch, noisy_net)
    for s in d.plan.stages:
        units = batch["units"][:, s.level_index]
        assert segment_spread(res.endpoints[s.index], units, s.block) == 0.0
        if s.level != "grid50" or s.block > 1:
            assert segment_spread(batch["x"][:, -1], units, s.block) > 0.1  # the check can fail


def test_fixed_seed_is_bit_reproducible_and_seeds_differ():
    d = DRDM(DRDMConfig(**SMALL, fusion="add"))
    batch = make_batch(d, seed=4)
    net = lambda x, n, s, c, e: 0.5 * x + 0.01 * n.view(-1, 1, 1, 1)  # noqa: E731
    a = run(d, batch, net, seed=11)
    b = run(d, batch, net, seed=11)
    c = run(d, batch, net, seed=12)
    for k in range(d.K):
        assert torch.equal(a.endpoints[k], b.endpoints[k])
    assert not torch.equal(a.final, c.final)
    la, _ = d.training_loss(net, batch["x"], batch, torch.Generator().manual_seed(3))
    lb, _ = d.training_loss(net, batch["x"], batch, torch.Generator().manual_seed(3))
    assert torch.equal(la, lb)


def test_diverging_model_fails_loudly_with_the_stage():
    d = DRDM(DRDMConfig(**SMALL, project_stages=False))
    batch = make_batch(d, seed=1)
    with pytest.raises(FloatingPointError, match=r"stage 0 \(4h, cell\)"):
        run(d, batch, lambda x, n, s, c, e: torch.full_like(x, float("nan")), project=False)


def test_sample_argument_errors():
    d = DRDM(DRDMConfig(**SMALL))
    batch = make_batch(d, seed=1)
    shape = tuple(batch["x"][:, 0].shape)
    net = lambda x, n, s, c, e: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="needs units"):
        d.sample(net, batch, shape)
    with pytest.raises(ValueError, match="start_stage"):
        d.refine(net, batch, batch["x"][:, -1], d.K - 1, units=batch["units"])


def test_per_sample_generators_make_samples_batch_independent():
    """With one generator per sample, a sample's result does not depend on its batch companions."""
    import torch

    from mobscale.config.zoomdiff import DRDMConfig
    from mobscale.diffusion.drdm import DRDM

    d = DRDM(DRDMConfig(spatial=["cell", "grid50"], temporal=["1h"], steps=8))
    den = lambda x, n, stage, cond, eps_prior: 0.1 * x  # noqa: E731  (any deterministic denoiser)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = d.sample(den, None, (2, 4, 2, 2), generator=[g(1), g(2)], project=False)
    b = d.sample(den, None, (2, 4, 2, 2), generator=[g(3), g(2)], project=False)
    assert torch.equal(a.final[1], b.final[1]) and not torch.equal(a.final[0], b.final[0])


def test_profile_prior_reaches_stage_0_as_the_coarser_stage_reaches_the_next():
    """DRDMConfig.profile_prior: stage 0 gets a prior H like every later stage. With a network that trusts the prior
    fully (fixed mix, lambda ~ 1, eps_theta = 0), stage 0 returns H, and different priors give different outputs;
    without a prior the same network gives neither (the paper's stage 0 has nothing to follow)."""
    d = DRDM(DRDMConfig(**SMALL, fusion="mix", fusion_lambda=1.0 - 1e-6, project_stages=False))
    batch = make_batch(d, seed=12)
    shape = tuple(batch["x"][:, 0].shape)
    zero = lambda x, n, s, c, e: torch.zeros_like(x)  # noqa: E731
    outs = []
    for scale in (0.5, 1.0):
        H = batch["x"][:, 0] * scale
        res = d.sample(zero, batch, shape, generator=torch.Generator().manual_seed(0), prior_fn=lambda k, prev: H if k == 0 else prev)
        torch.testing.assert_close(res.endpoints[0], H, atol=1e-3, rtol=0)
        outs.append(res.endpoints[0])
    assert not torch.allclose(outs[0], outs[1])
    plain = d.sample(zero, batch, shape, generator=torch.Generator().manual_seed(0))
    assert (plain.endpoints[0] - batch["x"][:, 0]).abs().max() > 0.1
    with pytest.raises(ValueError, match="prior_fn gave shape"):
        d.sample(zero, batch, shape, prior_fn=lambda k, prev: batch["x"][:1, 0])


def test_profile_prior_splits_the_coarser_stage_by_the_reference_shares():
    """Stage k's profile prior = stage k-1 spread by the profile's shares: where the levels nest (grid100 -> grid50
    here) it keeps every coarse unit's total exactly, follows the profile's shape inside the unit, and is the
    coarse stage itself for a flat profile; stage 0's prior is the profile projected onto stage 0's level."""
    d = DRDM(DRDMConfig(**SMALL))
    assert [s.level for s in d.plan.stages] == ["cell", "grid100", "grid50"]
    batch = make_batch(d, B=3, seed=14)
    units, x = batch["units"], batch["x"]
    profile = torch.exp(torch.randn(x[:, 0].shape, generator=torch.Generator().manual_seed(4)))
    H0 = d.profile_prior(0, None, profile, units, NORM)
    torch.testing.assert_close(H0, NORM.forward(d._project_lin(profile, 0, units)))
    H2 = d.profile_prior(2, x[:, 1], profile, units, NORM)
    lin2, lin1 = NORM.inverse(H2), NORM.inverse(x[:, 1])
    torch.testing.assert_close(d._project_lin(lin2, 1, units), lin1, rtol=1e-5, atol=1e-5)  # coarse totals kept
    # inside each 2x2 block the prior is proportional to the profile
    blk = lambda t: t.reshape(*t.shape[:2], 4, 2, 4, 2)  # noqa: E731  (B, L, 4 blocks, 2, 4 blocks, 2)
    torch.testing.assert_close(blk(lin2) / blk(lin2).sum((3, 5), keepdim=True), blk(profile) / blk(profile).sum((3, 5), keepdim=True), rtol=1e-4, atol=1e-6)
    flat = d.profile_prior(2, x[:, 1], torch.ones_like(profile), units, NORM)
    torch.testing.assert_close(flat, x[:, 1], rtol=1e-5, atol=1e-5)
    no_split = DRDM(DRDMConfig(**SMALL, profile_split=False))
    assert torch.equal(no_split.profile_prior(2, x[:, 1], profile, units, NORM), x[:, 1])
    pri = d.profile_priors(x, profile, units, NORM)
    assert pri.shape == x.shape and torch.equal(pri[:, 2], H2) and torch.equal(pri[:, 0], H0)


def test_profile_priors_in_training_inputs_and_prior_terms():
    """Training: every item's z is its own stage's prior, with non-zero prior terms at stage 0 too (eq. 10 with H)."""
    d = DRDM(DRDMConfig(**SMALL))
    batch = make_batch(d, B=4, seed=13)
    x = batch["x"]
    priors = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    n = torch.tensor([d.plan.stages[0].lo, d.plan.stages[0].hi - 1, d.plan.stages[1].lo, 0])
    eps = torch.randn(x[:, 0].shape, generator=torch.Generator().manual_seed(2))
    stage, x_n, z = d.training_inputs(x, n, eps, priors=priors)
    stage_p, x_n_p, z_p = d.training_inputs(x, n, eps)
    assert stage.tolist() == [0, 0, 1, d.K - 1] and torch.equal(x_n, x_n_p)
    for b in range(4):
        torch.testing.assert_close(z[b], priors[b, stage[b]])
    torch.testing.assert_close(z_p[2], x[2, 0])  # the paper: stage k's prior is target k-1
    eps_prior, P = d.prior_terms(x_n, z, n, stage, d.has_prior(stage, True))
    sa, s1a = (d.abar[n].sqrt().float().view(-1, 1, 1, 1), (1 - d.abar[n]).sqrt().float().view(-1, 1, 1, 1))
    torch.testing.assert_close(eps_prior, (x_n - sa * z) / s1a)
    torch.testing.assert_close(P, sa / s1a * z)
    eps_prior0, _ = d.prior_terms(x_n, z, n, stage)  # default: no prior at stage 0 (the paper)
    assert float(eps_prior0[:2].abs().max()) == 0.0
    with pytest.raises(ValueError, match="priors must be"):
        d.training_inputs(x, n, eps, priors=priors[:, :2])


def _lin_totals(d: DRDM, x: torch.Tensor, block: int) -> torch.Tensor:
    """Linear traffic summed over the patch per time block of ``block`` hours: (B, L // block)."""
    lin = NORM.inverse(x)
    B, L = lin.shape[:2]
    return lin.sum((2, 3)).view(B, L // block, block).sum(2)


@pytest.mark.parametrize("noise,adding,denoising", [("SN", "SA", "SD"), ("CN", "CA", "CD")])
def test_nested_stages_share_the_first_stage_totals_and_stay_piecewise_constant(noise, adding, denoising):
    """nest=True: every stage's output sums (in linear traffic, over the patch and stage 0's time blocks) to stage
    0's; the last stage (50 m pixels nest in anything) has exactly the previous stage's unit means; outputs stay
    piecewise constant at their own level. Without it the same network's stages drift (the check can fail)."""
    d = DRDM(DRDMConfig(**SMALL, noise=noise, adding=adding, denoising=denoising, fusion="mix"))
    batch = make_batch(d, seed=4)
    noisy_net = lambda x, n, s, c, e: 0.3 * x + 0.1 * torch.sin(3 * x) + 0.05 * s.view(-1, 1, 1, 1)  # noqa: E731
    plain = run(d, batch, noisy_net, seed=3)
    nested = run(d, batch, noisy_net, seed=3, nest=True)
    b0 = d.plan.stages[0].block
    ref = _lin_totals(d, nested.endpoints[0], b0)
    torch.testing.assert_close(nested.endpoints[0], plain.endpoints[0])  # stage 0 has no parent
    for k in range(1, d.K):
        torch.testing.assert_close(_lin_totals(d, nested.endpoints[k], b0), ref, rtol=1e-4, atol=1e-4)
    drift = max(float(((_lin_totals(d, plain.endpoints[k], b0) - ref).abs() / ref).max()) for k in range(1, d.K))
    assert drift > 1e-2
    last = d.K - 1
    torch.testing.assert_close(d.project(nested.endpoints[last], last - 1, batch["units"], NORM), nested.endpoints[last - 1], rtol=1e-4, atol=1e-4)
    for s in d.plan.stages:
        assert segment_spread(nested.endpoints[s.index], batch["units"][:, s.level_index], s.block) < 1e-5


def test_nesting_leaves_a_perfect_model_alone_and_follows_given_coarse_traffic():
    """Where the levels nest (here BS > cell > 50 m), true data is consistent, so nesting does not move an oracle's
    stages; refining with nest=True keeps the given coarse traffic's totals in every finer stage (here a coarse input
    scaled by 2, which the oracle follows only through the prior)."""
    d = DRDM(DRDMConfig(spatial=["bs", "cell", "grid50"], temporal=["4h", "1h"], steps=18, fusion="mix"))
    batch = make_batch(d, seed=5)
    res = run(d, batch, Oracle(d, batch["x"]), nest=True)
    for k in range(d.K):
        torch.testing.assert_close(res.endpoints[k], batch["x"][:, k], atol=5e-4, rtol=0)
    coarse = NORM.forward(2 * NORM.inverse(batch["x"][:, 0]))
    b0 = d.plan.stages[0].block
    for nest in (False, True):
        out = d.refine(Oracle(d, batch["x"]), batch, coarse, 0, generator=torch.Generator().manual_seed(1), units=batch["units"], normaliser=NORM, nest=nest)
        ratio = _lin_totals(d, out.final, b0) / _lin_totals(d, coarse, b0)
        if nest:
            torch.testing.assert_close(ratio, torch.full_like(ratio, 1.0), rtol=1e-4, atol=0)
        else:
            assert float((ratio - 1).abs().min()) > 0.2  # near the oracle's own (true) totals, half the given ones
    with pytest.raises(ValueError, match="nest needs the stage outputs projected"):
        run(d, batch, Oracle(d, batch["x"]), nest=True, project=False)
    with pytest.raises(ValueError, match="stage 0 has no parent"):
        d.nest(batch["x"][:, 0], batch["x"][:, 0], 0, batch["units"], NORM)
