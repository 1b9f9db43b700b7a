"""The joint process: Algorithm 1 feeds the network a SAMPLED l_t (or, for the ablation, the probability
row), eq. 13's three terms, the reference posterior switch, and Algorithm 2's shapes and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobscale.diffusion.discrete import TransitionProcess, adjacency_from_neighbours
from mobscale.diffusion.gaussian import GaussianSchedule
from mobscale.diffusion.mstdiff_process import LossWeights, MSTDiffProcess, kl_categorical
from mobscale.errors import ConfigError

N, T, S = 6, 16, 5


def _proc(**kw):
    nb = np.array([[(i - 1) % N, (i + 1) % N] for i in range(N)])
    traj = TransitionProcess.build(adjacency_from_neighbours(nb), 2, steps=S, rate_start=0.05, rate_end=0.5, teleport=0.5)
    gauss = GaussianSchedule.make("linear", S, 1e-3, 0.3)
    return MSTDiffProcess(gauss, traj, **kw)


class Spy:
    """A denoiser that records its inputs and returns fixed-shape outputs depending on a parameter."""

    def __init__(self):
        self.calls = []
        self.theta = torch.zeros(N, requires_grad=True)

    def __call__(self, w_t, traj, t, offset=None):
        self.calls.append((w_t, traj, t, offset))
        B = t.shape[0]
        eps = torch.zeros(B, T) + self.theta.sum()
        logits = self.theta.expand(B, T, N).clone()
        return eps, logits


def _batch(B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, generator=g), torch.randint(0, N, (B, T), generator=g)


def test_network_sees_sampled_states_not_probability_rows():
    p = _proc()
    spy = Spy()
    w0, l0 = _batch()
    loss, logs = p.training_losses(spy, w0, l0, generator=torch.Generator().manual_seed(0))
    w_t, traj, t, _ = spy.calls[0]
    assert traj.dtype == torch.long and traj.shape == (4, T)
    assert w_t.shape == (4, T) and t.shape == (4,)
    assert set(logs) >= {"mse", "kl", "ce", "loss", "acc"} and np.isfinite(logs["loss"])
    loss.backward()
    assert spy.theta.grad is not None


def test_probs_input_ablation_feeds_qbar_rows():
    p = _proc(trajectory_input="probs")
    spy = Spy()
    w0, l0 = _batch()
    p.training_losses(spy, w0, l0, generator=torch.Generator().manual_seed(0))
    _, traj, t, _ = spy.calls[0]
    assert traj.is_floating_point() and traj.shape == (4, T, N)
    want = p.trajectory.q_probs(l0, t).float()
    assert torch.allclose(traj, want, atol=1e-6)


def test_loss_is_weighted_sum_of_eq13_terms():
    w0, l0 = _batch()
    logs = {}
    for name, weights in {"all": LossWeights(1, 1, 1), "no_ce": LossWeights(1, 1, 0), "ce_only": LossWeights(0, 0, 2)}.items():
        p = _proc(weights=weights)
        loss, lg = p.training_losses(Spy(), w0, l0, generator=torch.Generator().manual_seed(3))
        logs[name] = (float(loss.detach()), lg)
    a, lg = logs["all"]
    assert np.isclose(a, lg["mse"] + lg["kl"] + lg["ce"], rtol=1e-6)
    b, lg = logs["no_ce"]
    assert np.isclose(b, lg["mse"] + lg["kl"], rtol=1e-6)
    c, lg = logs["ce_only"]
    assert np.isclose(c, 2 * lg["ce"], rtol=1e-6)


def test_kl_term_is_zero_for_the_true_posterior_model():
    """A denoiser that knows l0 (logits = +inf at l0) makes p(l_{t-1}|l_t) the exact posterior: KL = 0."""
    p = _proc()
    w0, l0 = _batch()

    def oracle(w_t, traj, t, offset=None):
        return torch.zeros_like(w_t), torch.nn.functional.one_hot(l0, N).double() * 60.0

    _, logs = p.training_losses(oracle, w0, l0, generator=torch.Generator().manual_seed(0))
    assert logs["kl"] < 1e-8 and logs["acc"] == 1.0


def test_kl_categorical():
    q = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    pp = torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64)
    assert torch.allclose(kl_categorical(q, pp), torch.tensor([0.5 * np.log(2)], dtype=torch.float64))


def test_sampling_shapes_ranges_and_determinism():
    p = _proc()
    spy = Spy()
    w, l = p.sample(spy, 3, T, generator=torch.Generator().manual_seed(5))
    assert w.shape == (3, T) and l.shape == (3, T) and l.dtype == torch.long
    assert int(l.min()) >= 0 and int(l.max()) < N
    assert len(spy.calls) == S and [int(c[2][0]) for c in spy.calls] == list(range(S - 1, -1, -1))
    w2, l2 = p.sample(Spy(), 3, T, generator=torch.Generator().manual_seed(5))
    assert torch.equal(w, w2) and torch.equal(l, l2)


def test_sampling_with_a_confident_model_returns_its_locations():
    """If the network always predicts l0 = 2 with certainty, the exact reverse chain ends at 2 everywhere."""
    p = _proc()

    def sure(w_t, traj, t, offset=None):
        logits = torch.full((traj.shape[0], T, N), -50.0)
        logits[..., 2] = 50.0
        return torch.zeros(traj.shape[0], T), logits

    _, l = p.sample(sure, 4, T, generator=torch.Generator().manual_seed(0))
    assert torch.all(l == 2)
    # the reference posterior ends one noise step away from it instead (seen when the last step is sampled)
    pr = _proc(posterior="reference", last_step="sample")
    _, lr = pr.sample(sure, 64, T, generator=torch.Generator().manual_seed(0))
    assert float((lr == 2).float().mean()) < 0.99


def test_single_modality_processes():
    nb = np.array([[(i - 1) % N, (i + 1) % N] for i in range(N)])
    traj = TransitionProcess.build(adjacency_from_neighbours(nb), 2, steps=S, rate_start=0.05, rate_end=0.5, teleport=0.5)
    only_traj = MSTDiffProcess(None, traj)
    w, l = only_traj.sample(lambda w_t, tr, t, o=None: (None, torch.zeros(tr.shape[0], T, N)), 2, T, generator=torch.Generator().manual_seed(0))
    assert w is None and l.shape == (2, T)
    only_tr = MSTDiffProcess(GaussianSchedule.make("linear", S, 1e-3, 0.3), None)
    loss, logs = only_tr.training_losses(lambda w_t, tr, t, o=None: (torch.zeros_like(w_t), None), torch.randn(2, T), None)
    assert set(logs) == {"mse", "loss"}


def test_last_step_mode_versus_sample():
    """With an uncertain network (p0 = 0.6 on location 2), a sampled last step scatters ~40 % of positions;
    the mode keeps location 2 everywhere."""
    def unsure(w_t, traj, t, offset=None):
        logits = torch.zeros(traj.shape[0], T, N)
        logits[..., 2] = float(np.log(0.6 * (N - 1) / 0.4))
        return torch.zeros(traj.shape[0], T), logits

    _, lm = _proc(last_step="mode").sample(unsure, 32, T, generator=torch.Generator().manual_seed(0))
    _, ls = _proc(last_step="sample").sample(unsure, 32, T, generator=torch.Generator().manual_seed(0))
    assert torch.all(lm == 2)
    assert abs(float((ls == 2).float().mean()) - 0.6) < 0.05


def test_step_from_x0_is_the_ancestral_step_for_the_implied_estimate():
    g = GaussianSchedule.make("linear", S, 1e-3, 0.3)
    x, eps, z = torch.randn(3, T), torch.randn(3, T), torch.randn(3, T)
    for t in range(S):
        torch.testing.assert_close(g.step_from_x0(x, g.predict_x0(x, eps, t), t, z), g.step(x, eps, t, z))


def test_traffic_x0_constraint_caps_every_clean_estimate():
    """A denoiser whose estimate overshoots (eps far below zero -> x0 huge): unconstrained, the chain ends far
    above the cap; with the constraint, every step is taken from the capped estimate, so the last step's output
    (the posterior mean at t = 0, i.e. the estimate itself) never exceeds the cap."""
    p = MSTDiffProcess(GaussianSchedule.make("linear", S, 1e-3, 0.3), None)
    seen = []

    def overshoot(w_t, traj, t, offset=None):
        return torch.full_like(w_t, -3.0), None

    def cap(x0):
        seen.append(float(x0.max()))
        return x0.clamp(max=2.0)

    w_free, _ = p.sample(overshoot, 4, T, generator=torch.Generator().manual_seed(0))
    w_cap, _ = p.sample(overshoot, 4, T, generator=torch.Generator().manual_seed(0), traffic_x0=cap)
    assert float(w_free.max()) > 10 and len(seen) == S and max(seen) > 2.0
    assert float(w_cap.max()) <= 2.0 + 1e-6 and float((w_cap > 1.9).float().mean()) > 0.9


def test_trajectory_likelihood_is_d3pm_parameterisation():
    """With ``trajectory_likelihood`` the model's p(l0 | l_t) is the network's p~ times q(l_t | l0) = Qbar_t[l0, l_t]
    (checked against the full matrix), and eq. 6 then gives D3PM's reverse step
    p(l_{t-1} | l_t) ∝ Q_t[l_{t-1}, l_t] sum_x p~(x) Qbar_{t-1}[x, l_{t-1}] (brute force on 6 states)."""
    p, plain = _proc(trajectory_likelihood=True), _proc()
    g = torch.Generator().manual_seed(5)
    B = 3
    lt = torch.randint(0, N, (B, T), generator=g)
    t = torch.tensor([0, 2, S - 1])
    logits = torch.randn(B, T, N, generator=g, dtype=torch.float64)
    assert torch.equal(plain.x0_logits(logits, lt, t), logits)
    out = p.x0_logits(logits, lt, t)
    for b in range(B):
        Qbar = p.trajectory.qbar_matrix(int(t[b]))
        assert torch.allclose(out[b] - logits[b], torch.log(Qbar[:, lt[b]].T), atol=1e-10)
    # uniform network output: p(l0 | l_t) is the exact Bayes posterior under a uniform prior, Qbar_t[:, l_t] normalised
    post = torch.softmax(p.x0_logits(torch.zeros(B, T, N, dtype=torch.float64), lt, t), -1)
    for b in range(B):
        col = p.trajectory.qbar_matrix(int(t[b]))[:, lt[b]].T
        assert torch.allclose(post[b], col / col.sum(-1, keepdim=True), atol=1e-10)
    # the reverse step from p(l0 | l_t) is D3PM's form in p~
    pt = torch.softmax(logits, -1)
    rev = p.trajectory.reverse_probs(torch.softmax(out, -1), lt, t)
    for b in range(B):
        tb = int(t[b])
        Q, Qprev = p.trajectory.q_matrix(tb), p.trajectory.qbar_matrix(tb - 1)
        want = Q[:, lt[b]].T * (pt[b] @ Qprev)
        assert torch.allclose(rev[b], want / want.sum(-1, keepdim=True), atol=1e-8)
    # training uses the same logits: a network that outputs zeros is scored on Qbar_t[:, l_t]
    _, logs = p.training_losses(lambda w, l, tt, o=None: (torch.zeros_like(w), torch.zeros(l.shape[0], T, N)), *_batch(), generator=torch.Generator().manual_seed(0))
    _, logs0 = plain.training_losses(lambda w, l, tt, o=None: (torch.zeros_like(w), torch.zeros(l.shape[0], T, N)), *_batch(), generator=torch.Generator().manual_seed(0))
    assert logs["ce"] < logs0["ce"] - 0.1  # the observed tokens carry information about l0; uniform logits ignore it


def test_sampling_temperature_sharpens_p0_and_leaves_training_alone():
    """p0 = 0.6 on location 2 and a sampled last step: temperature 1 keeps ~60% of positions at 2, temperature 0.25
    raises p0 to 0.6^4 / (0.6^4 + 5 (0.08)^4) ~ 0.9994, so nearly all; the training loss does not depend on it."""
    def unsure(w_t, traj, t, offset=None):
        logits = torch.zeros(traj.shape[0], T, N)
        logits[..., 2] = float(np.log(0.6 * (N - 1) / 0.4))
        return torch.zeros(traj.shape[0], T), logits

    _, l1 = _proc(last_step="sample").sample(unsure, 32, T, generator=torch.Generator().manual_seed(0))
    _, lc = _proc(last_step="sample", temperature=0.25).sample(unsure, 32, T, generator=torch.Generator().manual_seed(0))
    assert abs(float((l1 == 2).float().mean()) - 0.6) < 0.05
    assert float((lc == 2).float().mean()) > 0.99
    w0, l0 = _batch()
    a = _proc().training_losses(Spy(), w0, l0, generator=torch.Generator().manual_seed(1))[0]
    b = _proc(temperature=0.25).training_losses(Spy(), w0, l0, generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="temperature"):
        _proc(temperature=0.0)
