"""Mergeable statistics: merged block statistics equal whole-array statistics; RV / PSNR against references."""

from __future__ import annotations

from pathlib import Path

import hoggorm
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import peak_signal_noise_ratio

from mobscale.eval.distributions import Bins, daily_component
from mobscale.eval.metrics import psnr_from_mse
from mobscale.eval.stats import (
    Counts,
    DailySpectrum,
    ErrorMoments,
    Extrema,
    Gram,
    PairedDailyError,
    PairedUnitMeans,
    merge_all,
    run_blocks,
    rv_coefficient,
    rv_from_grams,
    spectrum_rmse,
)

MILAN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "milan" / "dgrn_milan_internet_5x5_10min.csv"


def _cuts(n: int, k: int, seed: int) -> list[tuple[int, int]]:
    """A random partition of range(n) into at most k contiguous non-empty pieces."""
    rng = np.random.default_rng(seed)
    inner = sorted(rng.choice(np.arange(1, n), size=min(k - 1, n - 1), replace=False)) if n > 1 and k > 1 else []
    edges = [0, *inner, n]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _pair_stats(r, s, bins, dbins, period):
    return (
        ErrorMoments.of(r, s), PairedUnitMeans.of(r, s), PairedDailyError.of(r, s, period, None),
        Gram.of(r), Counts.of(bins, r), Counts.of(dbins, np.diff(r, axis=0)), Extrema.of(r),
        DailySpectrum.of(r, period, None),
    )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(T_days=st.integers(1, 4), U=st.integers(1, 12), k=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_unit_partition_merge_equals_whole(T_days, U, k, seed):
    rng = np.random.default_rng(seed)
    period = 6
    T = T_days * period + int(rng.integers(0, period))  # a trailing partial day must be ignored by the Fourier stats
    r = rng.gamma(2.0, 3.0, size=(T, U))
    s = r * rng.lognormal(0, 0.3, size=(T, U))
    bins = Bins(0.0, float(max(r.max(), s.max())), 17)
    dbins = Bins(-50.0, 50.0, 9)
    whole = _pair_stats(r, s, bins, dbins, period)
    parts = [_pair_stats(r[:, a:b], s[:, a:b], bins, dbins, period) for a, b in _cuts(U, k, seed)]
    merged = merge_all(parts)
    em, um, de, g, c, dc, ex, sp = merged
    w = whole
    assert em.n == w[0].n and em.sum_abs == pytest.approx(w[0].sum_abs, rel=1e-12) and em.sum_sq == pytest.approx(w[0].sum_sq, rel=1e-12)
    assert um.rmse == pytest.approx(w[1].rmse, rel=1e-12)
    assert de.rmse == pytest.approx(w[2].rmse, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(g.g, w[3].g, rtol=1e-12)
    np.testing.assert_array_equal(c.counts, w[4].counts)
    np.testing.assert_array_equal(dc.counts, w[5].counts)
    assert (ex.lo, ex.hi, ex.n) == (w[6].lo, w[6].hi, w[6].n)
    np.testing.assert_allclose(sp.coef_sum, w[7].coef_sum, rtol=1e-10, atol=1e-9)
    assert sp.n_units == U


@settings(max_examples=30, deadline=None, derandomize=True)
@given(days=st.integers(1, 4), U=st.integers(1, 5), k=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_time_partition_merge_for_additive_statistics(days, U, k, seed):
    rng = np.random.default_rng(seed)
    period = 8
    T = days * period
    r = rng.normal(size=(T, U))
    s = rng.normal(size=(T, U))
    bins = Bins(-4.0, 4.0, 11)
    cuts = _cuts(T, k, seed)
    em = merge_all([ErrorMoments.of(r[a:b], s[a:b]) for a, b in cuts])
    assert em.mae == pytest.approx(np.abs(s - r).mean(), rel=1e-12)
    assert em.rmse == pytest.approx(np.sqrt(((s - r) ** 2).mean()), rel=1e-12)
    c = merge_all([Counts.of(bins, r[a:b]) for a, b in cuts])
    np.testing.assert_array_equal(c.counts, Counts.of(bins, r).counts)
    # time blocks of one set of units: count the units once (first block), offset every block by its start
    sp = merge_all([DailySpectrum.of(r[a:b], period, None, t0=a, n_steps=T, count_units=(a == 0)) for a, b in cuts])
    whole = DailySpectrum.of(r, period, None)
    np.testing.assert_allclose(sp.coef_sum, whole.coef_sum, atol=1e-9)
    assert sp.n_units == whole.n_units == U


def test_merge_refuses_different_parameters():
    a = Counts.of(Bins(0, 1, 10), np.array([0.5]))
    b = Counts.of(Bins(0, 2, 10), np.array([0.5]))
    with pytest.raises(ValueError, match="different parameters"):
        a.merge(b)
    with pytest.raises(TypeError):
        a.merge(Extrema.of(np.ones(2)))


def test_run_blocks_threads_equal_serial():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 40))
    blocks = _cuts(40, 7, 0)
    fn = lambda ab: (Gram.of(x[:, ab[0]:ab[1]]), ErrorMoments.of(x[:, ab[0]:ab[1]], 0 * x[:, ab[0]:ab[1]]))  # noqa: E731
    g1, e1 = run_blocks(blocks, fn, workers=1, progress=False)
    g2, e2 = run_blocks(blocks, fn, workers=3, progress=False)
    np.testing.assert_array_equal(g1.g, g2.g)  # same block order -> bit-identical
    assert e1 == e2
    np.testing.assert_allclose(g1.g, x @ x.T, rtol=1e-12)


def test_centred_gram_and_rv_against_hoggorm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 7)) + 5.0
    b = a @ rng.normal(size=(7, 4)) + rng.normal(size=(30, 4))
    ac, bc = a - a.mean(0), b - b.mean(0)
    np.testing.assert_allclose(Gram.of(a).centred(), ac @ ac.T, atol=1e-9)
    ref = hoggorm.RVcoeff([ac, bc])[0, 1]  # hoggorm does not centre: centre first
    assert rv_coefficient(a, b) == pytest.approx(ref, rel=1e-12)
    assert rv_coefficient(a, a) == pytest.approx(1.0)
    assert np.isnan(rv_from_grams(np.zeros((3, 3)), np.eye(3)))


def test_paired_daily_error_is_rmse_of_reconstructed_components():
    rng = np.random.default_rng(1)
    P, D, U = 24, 5, 3
    r = rng.gamma(2, 2, size=(P * D, U))
    s = rng.gamma(2, 2, size=(P * D, U))
    for h in (None, 1, 3):
        c = daily_component(s, P, h) - daily_component(r, P, h)
        assert PairedDailyError.of(r, s, P, h).rmse == pytest.approx(np.sqrt(np.mean(c**2)), rel=1e-10)
        # unpaired: component of the mean series
        cm = daily_component(s.mean(1, keepdims=True), P, h) - daily_component(r.mean(1, keepdims=True), P, h)
        assert spectrum_rmse(DailySpectrum.of(r, P, h), DailySpectrum.of(s, P, h)) == pytest.approx(np.sqrt(np.mean(cm**2)), rel=1e-10)


@pytest.mark.shared_data
def test_milan_golden_rv_and_psnr():
    if not MILAN.is_file():
        pytest.skip("shared Milan data absent")
    a = np.loadtxt(MILAN, delimiter=",")
    d1, d2 = a[:144], a[144:288]
    assert rv_coefficient(d1, d2) == pytest.approx(0.5253504101897306, rel=1e-12)
    p = psnr_from_mse(ErrorMoments.of(d1, d2).mse, d1.max())
    assert p == pytest.approx(26.973102622586783, rel=1e-12)
    assert p == pytest.approx(peak_signal_noise_ratio(d1, d2, data_range=d1.max()), rel=1e-12)
