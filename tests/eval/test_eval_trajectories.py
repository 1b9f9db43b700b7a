"""Trajectory metrics: MoveSim golden values, radius of gyration, clean-mode definitions, input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import entropy

from mobscale.errors import InputDataError
from mobscale.eval.trajectories import (
    TRAJECTORY_METRICS,
    collective_topk,
    distinct_locations,
    haversine_km,
    individual_topk,
    radius_of_gyration_km,
    read_gps,
    read_movesim,
    run_lengths,
    split_days,
    trajectory_metrics,
)

GEOLIFE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "trajectories" / "movesim_geolife"

GOLDEN_TEST_VAL = (0.00084, 0.00232, 0.00141, 0.00811, 0.00483, 0.01386)
GOLDEN_TEST_RANDOM = (0.36568, 0.66923, 0.14480, 0.69315, 0.01765, 0.18393)
GOLDEN_RG_KM = (0.881, 5.5265, 1.7845, 7.2734, 0.0554)


@pytest.fixture(scope="module")
def geolife():
    if not (GEOLIFE / "gps").is_file():
        pytest.skip("shared MoveSim GeoLife data absent")
    return read_gps(GEOLIFE / "gps"), read_movesim(GEOLIFE / "test.data"), read_movesim(GEOLIFE / "val.data")


@pytest.mark.shared_data
def test_movesim_golden_test_vs_val(geolife):
    gps, test, val = geolife
    got = trajectory_metrics(test, val, gps, "movesim")
    assert list(got) == list(TRAJECTORY_METRICS)
    np.testing.assert_allclose([got[m] for m in TRAJECTORY_METRICS], GOLDEN_TEST_VAL, atol=5e-6)


@pytest.mark.shared_data
def test_movesim_golden_test_vs_uniform_random(geolife):
    gps, test, _ = geolife
    rng = np.random.default_rng(0)
    rng.random(50)
    rng.random(50)
    rnd = rng.integers(0, 23768, (2500, 48))
    got = trajectory_metrics(test, rnd, gps, "movesim")
    np.testing.assert_allclose([got[m] for m in TRAJECTORY_METRICS], GOLDEN_TEST_RANDOM, atol=5e-6)


@pytest.mark.shared_data
def test_radius_of_gyration_golden(geolife):
    gps, test, _ = geolife
    rows = test[:5]
    np.testing.assert_allclose(radius_of_gyration_km(gps[rows, 0], gps[rows, 1]), GOLDEN_RG_KM, atol=5e-4)


def test_haversine_and_radius_by_hand():
    assert haversine_km(0.0, 0.0, 1.0, 0.0) == pytest.approx(np.pi / 180 * 6371.0, rel=1e-12)
    assert haversine_km(10.0, 20.0, 10.0, 20.0) == 0.0
    # two points 2 km apart on a meridian: centre in the middle, every point 1 km away -> Rg = 1 km
    dlat = np.degrees(2.0 / 6371.0)
    lat = np.array([[0.0, dlat, 0.0, dlat]])
    lon = np.zeros_like(lat)
    assert radius_of_gyration_km(lat, lon)[0] == pytest.approx(1.0, rel=1e-9)


def test_stays_locations_and_ranks_by_hand():
    t = np.array([[1, 1, 2, 2, 2, 1], [3, 3, 3, 3, 3, 3]])
    np.testing.assert_array_equal(run_lengths(t), [2, 3, 1, 6])
    np.testing.assert_array_equal(run_lengths(t, include_last=False), [2, 3])  # MoveSim drops each row's last run
    np.testing.assert_array_equal(distinct_locations(t), [2, 1])
    np.testing.assert_allclose(collective_topk(t, 5, 3), [6 / 12, 3 / 12, 3 / 12])
    np.testing.assert_allclose(individual_topk(t, 3), [[3 / 6, 3 / 6, 0], [1, 0, 0]])
    np.testing.assert_array_equal(split_days(np.arange(10).reshape(1, 10), 4), [[0, 1, 2, 3], [4, 5, 6, 7]])


def test_clean_mode_definitions():
    rng = np.random.default_rng(0)
    coords = np.column_stack([39.9 + rng.random(30) * 0.1, 116.3 + rng.random(30) * 0.1])
    real = rng.integers(0, 30, (40, 48))
    synth = np.repeat(rng.integers(0, 30, (40, 1)), 48, axis=1)  # nobody moves
    got = trajectory_metrics(real, synth, coords, "clean")
    same = trajectory_metrics(real, real.copy(), coords, "clean")
    assert all(v == 0.0 for v in same.values())
    assert got["dailyloc"] == pytest.approx(np.log(2))  # 1 location/day vs many: disjoint supports
    # duration by hand: one bin per stay length 1..48
    p = np.bincount(run_lengths(real), minlength=49)[1:].astype(float)
    q = np.bincount(run_lengths(synth), minlength=49)[1:].astype(float)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    assert got["duration"] == pytest.approx(0.5 * entropy(p, m) + 0.5 * entropy(q, m), rel=1e-12)
    assert got["distance"] > 0.3 and got["radius"] > 0.3
    d = trajectory_metrics(real, synth, coords, "clean", jsd="mstdiff")
    assert d["dailyloc"] == pytest.approx(1.0)  # base-2 distance of disjoint supports


def test_bad_trajectory_inputs_fail(tmp_path):
    coords = np.zeros((5, 2))
    with pytest.raises(InputDataError, match="row 1, slot 2: location id 7"):
        trajectory_metrics(np.zeros((2, 4), int), np.array([[0, 1, 2, 3], [0, 1, 7, 0]]), coords)
    with pytest.raises(InputDataError, match="4 slots but generated rows have 3"):
        trajectory_metrics(np.zeros((2, 4), int), np.zeros((2, 3), int), coords)
    with pytest.raises(InputDataError, match="at least one row"):
        trajectory_metrics(np.zeros((0, 4), int), np.zeros((2, 4), int), coords)
    with pytest.raises(InputDataError, match="trajectory mode"):
        trajectory_metrics(np.zeros((2, 4), int), np.zeros((2, 4), int), coords, "geo")
    bad = tmp_path / "bad.data"
    bad.write_text("1 2 3\n4 5\n")
    with pytest.raises(InputDataError, match="bad.data:2: 2 slots, but line 1 has 3"):
        read_movesim(bad)
    gps = tmp_path / "gps"
    gps.write_text("39.9 116.3\n39.9 oops\n")
    with pytest.raises(InputDataError, match="gps:2: expected 'lat lng'"):
        read_gps(gps)
    with pytest.raises(InputDataError, match="no such file"):
        read_movesim(tmp_path / "missing.data")
