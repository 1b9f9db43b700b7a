"""Wavelet representation: band lengths and coefficients against pywt, exact inverse, band geometry, and
the invertible traffic normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import pywt

from mobscale.data.wavelets import BandLayout, TrafficTransform, dwt, dwt_matrix, idwt
from mobscale.errors import ConfigError


def test_band_lengths_match_pywt_db1_level3_week():
    lay = BandLayout(336, "db1", 3)
    ref = pywt.wavedec(np.zeros(336), "db1", level=3)  # pywt's default mode
    assert lay.lengths == (42, 42, 84, 168) == tuple(c.size for c in ref)
    assert lay.names == ("cA3", "cD3", "cD2", "cD1")
    assert sum(lay.lengths) == 336


def test_dwt_equals_pywt_and_inverts_exactly():
    rng = np.random.default_rng(0)
    x = rng.lognormal(size=(5, 336))
    lay = BandLayout(336)
    w = dwt(x, lay)
    ref = np.concatenate(pywt.wavedec(x, "db1", level=3, axis=-1), axis=-1)
    np.testing.assert_allclose(w, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(idwt(w, lay), x, rtol=0, atol=1e-12)
    # orthonormal: energy preserved, so Gaussian noise on w is white noise on the series
    np.testing.assert_allclose((w**2).sum(-1), (x**2).sum(-1), rtol=1e-12)


@pytest.mark.parametrize("wavelet,T,level", [("db2", 64, 2), ("sym4", 96, 3), ("db1", 48, 3)])
def test_round_trip_other_orthogonal_wavelets(wavelet, T, level):
    x = np.random.default_rng(1).normal(size=(3, T))
    lay = BandLayout(T, wavelet, level)
    assert sum(lay.lengths) == T
    np.testing.assert_allclose(idwt(dwt(x, lay), lay), x, atol=1e-10)


def test_band_time_windows():
    lay = BandLayout(336)
    assert [lay.ratio(b) for b in range(4)] == [8, 8, 4, 2]
    # cA3 position p summarises steps [8p, 8p+8): for db1 it is their sum / sqrt(8)
    x = np.random.default_rng(2).normal(size=336)
    w = dwt(x, lay)
    np.testing.assert_allclose(w[:42], x.reshape(42, 8).sum(1) / np.sqrt(8), atol=1e-12)
    assert lay.band_of_time(3)[[0, 1, 2, 335]].tolist() == [0, 0, 1, 167]
    np.testing.assert_allclose(lay.time_centres(0)[:2], [3.5, 11.5])


def test_bad_layouts_raise():
    with pytest.raises(ConfigError, match="divisible"):
        BandLayout(100, "db1", 3)
    with pytest.raises(ConfigError, match="orthogonal"):
        BandLayout(64, "bior2.2", 2)


def test_traffic_transform_log1p_round_trip_and_state():
    m = np.random.default_rng(3).pareto(1.3, size=(20, 48)).astype(np.float32) * 5
    tf = TrafficTransform.fit(m, "log1p")
    z = tf.forward(m)
    assert abs(z.mean()) < 1e-9 and abs(z.std() - 1) < 1e-9
    np.testing.assert_allclose(tf.inverse(z), m, rtol=1e-5, atol=1e-5)
    tf2 = TrafficTransform.from_state(tf.state())
    np.testing.assert_allclose(tf2.inverse(z), m, rtol=1e-5, atol=1e-5)


def test_traffic_transform_user_max_draws_scales_from_training_maxima():
    m = np.random.default_rng(4).gamma(2.0, 3.0, size=(50, 48))
    tf = TrafficTransform.fit(m, "user_max")
    z = tf.forward(m)
    assert z.min() >= -1 and z.max() <= 1 + 1e-12
    out = tf.inverse(z, rng=np.random.default_rng(0))
    mx = out.max(1)
    assert mx.min() >= m.max(1).min() - 1e-9 and mx.max() <= m.max(1).max() + 1e-9
    with pytest.raises(ValueError):
        tf.inverse(z)


def test_traffic_transform_zero_mass_and_cap():
    rng = np.random.default_rng(5)
    m = np.where(rng.random((30, 48)) < 0.4, 0.0, rng.lognormal(0.5, 1.0, (30, 48)))
    tf = TrafficTransform.fit(m, "log1p")
    pos = m[m > 0]
    assert 0 < tf.zero_below < np.quantile(pos, 0.01)
    z0 = (0.0 - tf.mu) / tf.sigma  # the standardised zero level
    out = tf.inverse(np.array([[z0, z0 + 0.01, z0 + 5.0]]))
    assert out[0, 0] == 0 and out[0, 1] == 0 and out[0, 2] > 1
    huge = tf.inverse(np.array([[1e6]]))
    assert np.isfinite(huge).all() and huge[0, 0] <= np.expm1((tf.z_max + 1) * tf.sigma + tf.mu) * (1 + 1e-9)
    # exact round trip for everything but positive volumes under the zero threshold
    keep = (m == 0) | (m >= tf.zero_below)
    np.testing.assert_allclose(tf.inverse(tf.forward(m))[keep], m[keep], rtol=1e-9, atol=1e-9)


def test_dwt_matrix_is_the_orthonormal_dwt():
    lay = BandLayout(48, "db2", 2)
    M = dwt_matrix(lay)
    x = np.random.default_rng(7).normal(size=(3, 48))
    np.testing.assert_allclose(x @ M, dwt(x, lay), atol=1e-12)
    np.testing.assert_allclose(M @ M.T, np.eye(48), atol=1e-12)
    np.testing.assert_allclose(dwt(x, lay) @ M.T, x, atol=1e-12)


def test_zero_gap_encodes_zeros_apart_and_inverts_their_blur_to_zero():
    rng = np.random.default_rng(8)
    m = np.where(rng.random((30, 48)) < 0.4, 0.0, rng.lognormal(-1.0, 1.2, (30, 48)))  # many tiny positives
    plain, gapped = TrafficTransform.fit(m, "log1p"), TrafficTransform.fit(m, "log1p", zero_gap=1.0)
    # zeros sit at log1p = -1 (standardised), positives at log1p(m) as before
    y = gapped.forward(m) * gapped.sigma + gapped.mu
    np.testing.assert_allclose(y[m == 0], -1.0)
    np.testing.assert_allclose(y[m > 0], np.log1p(m[m > 0]))
    assert abs(gapped.forward(m).mean()) < 1e-9 and gapped.zero_below == 0.0
    # exact round trip, zeros included, and through the stored state
    np.testing.assert_allclose(gapped.inverse(gapped.forward(m)), m, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(TrafficTransform.from_state(gapped.state()).inverse(gapped.forward(m)), m, rtol=1e-9, atol=1e-12)
    # a symmetric blur of the zero mass (0.3 in log1p units) comes back as zeros with the gap, but about
    # half of it becomes positive volume without it (the failure the gap is for)
    blur = rng.normal(0, 0.3, 4000)
    back_gap = gapped.inverse(((-1.0 + blur) - gapped.mu) / gapped.sigma)
    back_plain = plain.inverse((blur - plain.mu) / plain.sigma)
    assert np.mean(back_gap == 0) > 0.99
    assert 0.3 < np.mean(back_plain == 0) < 0.7
    with pytest.raises(ConfigError, match="zero_gap"):
        TrafficTransform.fit(m, "log1p", zero_gap=-1.0)
