"""Jensen-Shannon conventions, shared bins and the daily periodic component against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from mobscale.errors import InputDataError
from mobscale.eval.distributions import (
    Bins,
    JSDConvention,
    daily_component,
    first_differences,
    jensen_shannon,
    jsd_convention,
    normalise_per_series,
)


def _js_div_by_hand(p, q):
    p = p / p.sum()
    q = q / q.sum()
    m = (p + q) / 2
    return 0.5 * entropy(p, m) + 0.5 * entropy(q, m)  # nats


def test_jsd_modes_and_conventions():
    rng = np.random.default_rng(0)
    p, q = rng.integers(0, 20, 30).astype(float), rng.integers(0, 20, 30).astype(float)
    assert jensen_shannon(p, q, "clean") == pytest.approx(_js_div_by_hand(p, q), rel=1e-12)
    assert jensen_shannon(p, q, "movesim") == pytest.approx(_js_div_by_hand(p, q), rel=1e-12)
    assert jensen_shannon(p, q, "mstdiff") == pytest.approx(jensenshannon(p, q, base=2), rel=1e-12)
    assert jensen_shannon(p, q, JSDConvention("divergence", 2.0)) == pytest.approx(_js_div_by_hand(p, q) / np.log(2), rel=1e-12)
    # disjoint supports reach each convention's maximum
    a, b = np.array([1.0, 0.0]), np.array([0.0, 3.0])
    for mode in ("clean", "mstdiff"):
        c = jsd_convention(mode)
        assert jensen_shannon(a, b, c) == pytest.approx(c.maximum, rel=1e-12)
    assert jsd_convention("clean").maximum == pytest.approx(np.log(2))
    assert jsd_convention("mstdiff").maximum == pytest.approx(1.0)
    assert jensen_shannon(p, p, "clean") == 0.0


def test_jsd_fails_clearly_on_bad_input():
    with pytest.raises(InputDataError, match="generated side is empty"):
        jensen_shannon(np.ones(4), np.zeros(4), what="x")
    with pytest.raises(InputDataError, match="same bins"):
        jensen_shannon(np.ones(4), np.ones(5))
    with pytest.raises(InputDataError, match="JSD mode"):
        jsd_convention("kl")


def test_shared_bins_see_a_scaled_generator():
    """MSTDiff's release bins each side on its own range, so 0.5 * real scores 0; shared bins must not."""
    rng = np.random.default_rng(2)
    real = rng.gamma(2.0, 3.0, 5000)
    gen = 0.5 * real
    b = Bins(0.0, max(real.max(), gen.max()), 50)
    assert jensen_shannon(b.counts(real), b.counts(gen)) > 0.1
    own = [np.histogram(x, bins=50)[0] for x in (real, gen)]  # the defect, reproduced by hand
    assert jensen_shannon(*own) == pytest.approx(0.0, abs=1e-12)


def test_bins_clip_and_symlog():
    b = Bins(-3.0, 10.0, 13)
    x = np.array([-3.0, 10.0, 10.0 + 1e-9, -3.1, 0.5])
    c = b.counts(x)
    assert c.sum() == x.size and c[0] == 2 and c[-1] == 2
    np.testing.assert_allclose(b.edges, np.linspace(-3, 10, 14))
    s = Bins(-100.0, 1000.0, 7, "symlog")
    np.testing.assert_allclose(s.data_edges[[0, -1]], [-100.0, 1000.0])
    assert s.counts(np.array([-100.0, 0.0, 999.0])).sum() == 3
    flat = Bins(2.0, 2.0, 5)  # constant data still has a well-defined histogram
    assert flat.counts(np.full(4, 2.0))[2] == 4
    with pytest.raises(InputDataError):
        Bins(1.0, 0.0)


def test_first_differences_are_along_time_not_across_users():
    x = np.array([[1.0, 2.0, 4.0], [10.0, 10.0, 13.0]])  # (user, time)
    np.testing.assert_array_equal(first_differences(x, axis=-1), [[1.0, 2.0], [0.0, 3.0]])


def test_normalise_per_series():
    x = np.array([[1.0, 2.0, 4.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(normalise_per_series(x, "max"), [[0.25, 0.5, 1.0], [0, 0, 0]])
    np.testing.assert_array_equal(normalise_per_series(x, "none"), x)


def test_daily_component_all_harmonics_is_mean_profile_minus_mean():
    rng = np.random.default_rng(4)
    P, D, U = 24, 6, 3
    x = rng.gamma(2.0, 2.0, size=(P * D, U))
    profile = x.reshape(D, P, U).mean(0)  # mean daily profile by folding days
    expected = np.tile(profile - x.mean(0), (D, 1))
    np.testing.assert_allclose(daily_component(x, P), expected, atol=1e-10)


def test_daily_component_fundamental_matches_fft_band_pass():
    rng = np.random.default_rng(5)
    P, D = 12, 4
    N = P * D
    x = rng.normal(size=(N, 2))
    F = np.fft.fft(x, axis=0)
    keep = np.zeros(N, bool)
    keep[[D, N - D]] = True  # one cycle per day and its mirror
    expected = np.real(np.fft.ifft(np.where(keep[:, None], F, 0), axis=0))
    np.testing.assert_allclose(daily_component(x, P, harmonics=1), expected, atol=1e-12)
    with pytest.raises(InputDataError, match="whole number"):
        daily_component(x[:-1], P)
