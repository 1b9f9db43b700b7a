"""Privacy audit (distance to closest record) and the users-group evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from evalkit import tiny_city, users_group, write
from scipy.stats import entropy

from mobscale.data.store import open_city, open_users
from mobscale.errors import InputDataError, StoreError
from mobscale.eval.privacy import dcr_audit, distance_to_closest_record
from mobscale.eval.stats import DailySpectrum, spectrum_rmse
from mobscale.eval.trajectories import TRAJECTORY_METRICS, split_days, trajectory_metrics
from mobscale.eval.users import USER_TRAFFIC_METRICS, user_traffic_metrics, users_metrics


def test_dcr_matches_brute_force():
    rng = np.random.default_rng(0)
    q, ref = rng.normal(size=(50, 6)), rng.normal(size=(80, 6))
    brute = np.sqrt(((q[:, None] - ref[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(distance_to_closest_record(q, ref), brute, rtol=1e-12)
    qi, ri = rng.integers(0, 4, (20, 10)), rng.integers(0, 4, (30, 10))
    ham = (qi[:, None] != ri[None]).mean(-1).min(1)
    np.testing.assert_allclose(distance_to_closest_record(qi, ri, "hamming", batch=7), ham)


def test_dcr_flags_a_copying_generator():
    rng = np.random.default_rng(1)
    train, holdout = rng.normal(size=(300, 8)), rng.normal(size=(200, 8))
    copier = train[rng.integers(0, 300, 100)] + 1e-3 * rng.normal(size=(100, 8))
    fresh = rng.normal(size=(100, 8))
    bad = dcr_audit(train, copier, holdout)
    good = dcr_audit(train, fresh, holdout)
    assert bad["ratio"] < 0.05 and bad["closer_than_holdout_p05"] == 1.0
    assert 0.7 < good["ratio"] < 1.4
    assert dcr_audit(train, train[:10], holdout)["exact_copies"] == 1.0
    with pytest.raises(InputDataError, match="7 features but the training records have 8"):
        dcr_audit(train, fresh[:, :7], holdout)
    with pytest.raises(InputDataError, match="non-empty"):
        dcr_audit(train, fresh[:0], holdout)


@pytest.fixture(scope="module")
def user_stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("users")
    real = tiny_city(seed=0, days=2)
    write(real, d / "r.zarr", users=users_group(real, n_users=10, seed=0))
    write(real, d / "s.zarr", users=users_group(real, n_users=7, seed=3, n_samples=2))
    return d


def _js(a, b, n=100):
    e = np.linspace(min(a.min(), b.min()), max(a.max(), b.max()), n + 1)
    p, q = np.histogram(a, e)[0] / a.size, np.histogram(b, e)[0] / b.size
    m = (p + q) / 2
    return 0.5 * entropy(p, m) + 0.5 * entropy(q, m)


def test_users_metrics_match_independent_computation(user_stores):
    d = user_stores
    ru, su = open_users(d / "r.zarr"), open_users(d / "s.zarr")
    out = users_metrics(open_city(d / "r.zarr"), ru, open_city(d / "s.zarr"), su, progress=False)
    assert out["n_samples"] == 2 and list(out["traffic"]) == list(USER_TRAFFIC_METRICS)
    R = ru["traffic"].values.astype(np.float64)
    root = open_city(d / "r.zarr")
    coords = np.column_stack([root["bs_lat"].values, root["bs_lon"].values])
    for k in range(2):
        S = su["traffic"].isel(sample=k).values.astype(np.float64)
        t = out["traffic"]
        assert t["jsd_volume"]["per_sample"][k] == pytest.approx(_js(R.ravel(), S.ravel()), rel=1e-10)
        assert t["jsd_diff"]["per_sample"][k] == pytest.approx(_js(np.diff(R, axis=1).ravel(), np.diff(S, axis=1).ravel()), rel=1e-10)
        mr, ms = R.mean(0).reshape(-1, 48), S.mean(0).reshape(-1, 48)  # mean user, folded into days
        cr = np.tile(mr.mean(0) - mr.mean(), mr.shape[0])
        cs = np.tile(ms.mean(0) - ms.mean(), ms.shape[0])
        assert t["periodic_rmse"]["per_sample"][k] == pytest.approx(np.sqrt(np.mean((cs - cr) ** 2)), rel=1e-9)
        tm = trajectory_metrics(split_days(ru["trajectory"].values, 48), split_days(su["trajectory"].isel(sample=k).values, 48),
                                coords, "clean")
        for m in TRAJECTORY_METRICS:
            assert out["trajectories"][m]["per_sample"][k] == pytest.approx(tm[m], rel=1e-12)
    spreads = [out["traffic"][m]["spread"] for m in USER_TRAFFIC_METRICS]
    assert all(s is not None and s >= 0 for s in spreads)


def test_users_metrics_unscaled_generator_is_seen(user_stores):
    ru = open_users(user_stores / "r.zarr")
    half = ru["traffic"] * 0.5
    vals, _ = user_traffic_metrics(ru["traffic"], half, progress=False)
    assert vals[0, 0] > 0.05  # shared bins see the halving
    scaled, _ = user_traffic_metrics(ru["traffic"], half, normalise="max", progress=False)
    assert scaled[0, 0] == pytest.approx(0.0, abs=1e-12)  # MSTDiff's per-user max normalisation is scale-blind
    r = DailySpectrum.of(np.swapaxes(ru["traffic"].values, 0, 1).astype(float), 48, None)
    assert spectrum_rmse(r, r) == 0.0


def test_users_mismatch_fails(user_stores):
    d = user_stores
    ru, su = open_users(d / "r.zarr"), open_users(d / "s.zarr")
    root = open_city(d / "r.zarr")
    with pytest.raises(StoreError, match="time axis"):
        users_metrics(root, ru, root, su.isel(time=slice(0, 48)), progress=False)
    other = tiny_city(seed=0, W=12)
    with pytest.raises(StoreError, match="base stations"):
        users_metrics(root, ru, other, su, progress=False)
    with pytest.raises(StoreError, match="no variable 'trajectory'"):
        users_metrics(root, ru, root, su.drop_vars("trajectory"), progress=False)
    with pytest.raises(StoreError, match="empty"):
        users_metrics(root, ru, root, su.isel(user=slice(0, 0)), progress=False)
    bad = xr.Dataset({"traffic": ru["traffic"].expand_dims(sample=1), "trajectory": ru["trajectory"]})
    with pytest.raises(StoreError, match="traffic has dims"):
        users_metrics(root, bad, root, su, progress=False)
