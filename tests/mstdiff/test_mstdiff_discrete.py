"""Discrete diffusion over locations: matrices from one eigendecomposition against scipy.linalg.expm and the
product of the one-step matrices, the exact posterior and the eq.-6 reverse step against brute-force Bayes,
the public code's posterior, mixing to uniform and what a disconnected graph does."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import scipy.linalg
import torch

from mobscale.diffusion.discrete import (
    TransitionProcess,
    adjacency_from_neighbours,
    geometric_rates,
    n_components,
    rate_matrix,
)
from mobscale.errors import ConfigError


def _graph(N=6, K=2, seed=0):
    rng = np.random.default_rng(seed)
    nb = np.stack([rng.choice([j for j in range(N) if j != i], K, replace=False) for i in range(N)])
    return adjacency_from_neighbours(nb), K


def _proc(N=6, K=2, S=5, teleport=0.2, seed=0):
    A, K = _graph(N, K, seed)
    R = rate_matrix(A, K, teleport)
    return TransitionProcess(R, geometric_rates(S, 0.05, 0.6)), R


def test_rate_matrix_is_eqs_10_11():
    A, K = _graph(7, 3)
    R = rate_matrix(A, K)
    Ad = A.toarray()
    B = (Ad + Ad.T) / (2 * K)
    off = ~np.eye(7, dtype=bool)
    np.testing.assert_allclose(R[off], B[off])
    np.testing.assert_allclose(R.sum(1), 0, atol=1e-14)
    np.testing.assert_allclose(R, R.T)


def test_matrices_match_expm_and_products():
    p, R = _proc()
    prod = np.eye(p.N)
    for t in range(p.S):
        Q = p.q_matrix(t).numpy()
        np.testing.assert_allclose(Q, scipy.linalg.expm(p.rates[t] * R), atol=1e-12)
        prod = prod @ Q
        Qbar = p.qbar_matrix(t).numpy()
        np.testing.assert_allclose(Qbar, prod, atol=1e-12)
        np.testing.assert_allclose(Qbar, scipy.linalg.expm(p.cum[t + 1] * R), atol=1e-12)
        np.testing.assert_allclose(Qbar.sum(1), 1, atol=1e-12)
        assert (Qbar >= 0).all()
    np.testing.assert_array_equal(p.qbar_matrix(-1).numpy(), np.eye(p.N))


def _brute_posterior(p, lt, l0, t):
    """q(l_{t-1} = j | l_t, l0) by Bayes over the joint q(l_{t-1}, l_t | l0) with explicit matrices."""
    Qb_prev = p.qbar_matrix(t - 1).numpy()
    Q = p.q_matrix(t).numpy()
    joint = np.array([Qb_prev[l0, j] * Q[j, lt] for j in range(p.N)])
    return joint / joint.sum()


def test_posterior_equals_brute_force_bayes():
    p, _ = _proc(N=5, K=2, S=4)
    for t, l0, lt in itertools.product(range(p.S), range(p.N), range(p.N)):
        got = p.posterior(torch.tensor([[lt]]), torch.tensor([[l0]]), torch.tensor([t]))[0, 0].numpy()
        np.testing.assert_allclose(got, _brute_posterior(p, lt, l0, t), atol=1e-10, err_msg=f"t={t} l0={l0} lt={lt}")


def test_reverse_step_is_eq6_marginal_over_predicted_l0():
    p, _ = _proc(N=5, K=2, S=4)
    rng = np.random.default_rng(1)
    for t in range(p.S):
        for lt in range(p.N):
            p0 = rng.dirichlet(np.ones(p.N))
            want = sum(p0[x] * _brute_posterior(p, lt, x, t) for x in range(p.N))
            got = p.reverse_probs(torch.tensor(p0)[None, None], torch.tensor([[lt]]), torch.tensor([t]))[0, 0].numpy()
            np.testing.assert_allclose(got, want, atol=1e-9, err_msg=f"t={t} lt={lt}")
    # at t = 0 the posterior is a point mass on l0: the reverse step returns p0 itself
    p0 = torch.tensor(rng.dirichlet(np.ones(p.N)))[None, None]
    np.testing.assert_allclose(p.reverse_probs(p0, torch.tensor([[2]]), torch.tensor([0]))[0, 0].numpy(), p0[0, 0].numpy(), atol=1e-10)


def test_reference_posterior_is_public_code_and_ignores_lt():
    p, _ = _proc(N=5, K=2, S=4)
    t, l0 = 2, 3
    ref = (p.qbar_matrix(t - 1).numpy()[l0] @ p.q_matrix(t).numpy())
    got = p.posterior_reference(torch.tensor([[l0]]), torch.tensor([t]))[0, 0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-10)
    np.testing.assert_allclose(got, p.qbar_matrix(t).numpy()[l0], atol=1e-10)  # = forward marginal
    exact = [p.posterior(torch.tensor([[lt]]), torch.tensor([[l0]]), torch.tensor([t]))[0, 0].numpy() for lt in range(p.N)]
    assert max(np.abs(e - got).max() for e in exact) > 0.05


def test_forward_sampling_frequencies_follow_qbar_row():
    p, _ = _proc(N=6, S=5)
    g = torch.Generator().manual_seed(0)
    l0 = torch.full((1, 20000), 2)
    lt, probs = p.q_sample(l0, torch.tensor([3]), g)
    freq = np.bincount(lt.numpy().ravel(), minlength=p.N) / lt.numel()
    np.testing.assert_allclose(freq, p.qbar_matrix(3).numpy()[2], atol=0.015)
    np.testing.assert_allclose(probs[0, 0].numpy(), p.qbar_matrix(3).numpy()[2], atol=1e-12)


def test_auto_schedule_reaches_uniform_with_teleport_even_when_disconnected():
    # two separate triangles: a pure graph diffusion never mixes across them
    nb = np.array([[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]])
    A = adjacency_from_neighbours(nb)
    assert n_components(A) == 2
    with pytest.raises(ConfigError, match="components"):
        TransitionProcess.build(A, 2, steps=10, rate_start=0.01, rate_end=0.1, teleport=0.0)
    p = TransitionProcess.build(A, 2, steps=10, rate_start=0.01, rate_end=0.1, teleport=0.5, uniform_tol=0.01)
    rep = p.report()
    assert rep["tv_max"] <= 0.01
    # the closed form: the cross-component mass is exactly the teleported part
    Qb = p.qbar_matrix(p.S - 1).numpy()
    np.testing.assert_allclose(Qb[0, 3:].sum(), 0.5 * (1 - np.exp(-0.5 * p.cum[-1])), atol=1e-9)


def test_public_schedule_on_disconnected_graph_warns_and_stays_far_from_uniform(caplog):
    nb = np.array([[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]])
    with caplog.at_level(logging.WARNING, logger="mobscale"):
        p = TransitionProcess.build(adjacency_from_neighbours(nb), 2, steps=50, rate_start=0.01, rate_end=0.1, teleport=0.0, rate_scale=1.0)
    assert p.report()["tv_max"] > 0.4  # half the mass can never leave its component
    assert any("components" in r.message for r in caplog.records)
    assert any("does not reach uniform" in r.message for r in caplog.records)


def test_auto_schedule_uses_spectral_gap_without_teleport():
    nb = np.array([[(i - 1) % 8, (i + 1) % 8] for i in range(8)])  # a connected ring
    p = TransitionProcess.build(adjacency_from_neighbours(nb), 2, steps=20, rate_start=0.01, rate_end=0.1, teleport=0.0, uniform_tol=0.02)
    assert p.report()["tv_max"] <= 0.02


def test_rejects_asymmetric_rates():
    R = np.array([[-1.0, 1.0], [0.5, -0.5]])
    with pytest.raises(ConfigError, match="symmetric"):
        TransitionProcess(R, np.array([0.1]))


def test_large_state_space_rows_stay_valid():
    rng = np.random.default_rng(0)
    N, K = 400, 5
    xy = rng.random((N, 2))
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    nb = np.argsort(d, 1)[:, :K]
    p = TransitionProcess.build(adjacency_from_neighbours(nb), K, steps=50, rate_start=0.01, rate_end=0.1, teleport=0.5)
    rep = p.report()
    assert rep["tv_max"] <= 0.01 and rep["clip_mass"] < 1e-9 and rep["rowsum_err"] < 1e-9
    rows = p.qbar_rows(torch.arange(0, N, 7), 10)
    assert (rows >= 0).all() and torch.allclose(rows.sum(1), torch.ones(rows.shape[0], dtype=rows.dtype))
