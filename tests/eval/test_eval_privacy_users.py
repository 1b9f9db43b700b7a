"""Privacy audit (distance to closest record) and the users-group evaluation, including trajectory-only and
traffic-only users groups (through the API and `mobscale eval users`)."""

from __future__ import annotations

import json

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
from mobscale.launch import main


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
    with pytest.raises(StoreError, match="share no per-user variable"):
        users_metrics(root, ru.drop_vars("trajectory"), root, su.drop_vars("traffic"), progress=False)
    with pytest.raises(StoreError, match="empty"):
        users_metrics(root, ru, root, su.isel(user=slice(0, 0)), progress=False)
    bad = xr.Dataset({"traffic": ru["traffic"].expand_dims(sample=1), "trajectory": ru["trajectory"]})
    with pytest.raises(StoreError, match="traffic has dims"):
        users_metrics(root, bad, root, su, progress=False)


def test_users_metrics_score_what_both_groups_hold(user_stores):
    d = user_stores
    ru, su = open_users(d / "r.zarr"), open_users(d / "s.zarr")
    rroot, sroot = open_city(d / "r.zarr"), open_city(d / "s.zarr")
    both = users_metrics(rroot, ru, sroot, su, progress=False)
    assert both["scored"] == ["traffic", "trajectory"] and both["skipped"] == {}
    # trajectory-only on both sides (an imported GeoLife / Foursquare store vs a trajectory-only generator)
    tj = users_metrics(rroot, ru.drop_vars("traffic"), sroot, su.drop_vars("traffic"), progress=False)
    assert "traffic" not in tj and tj["scored"] == ["trajectory"] and tj["trajectories"] == both["trajectories"]
    assert "traffic_bins" not in tj["conventions"] and "trajectories" in tj["conventions"]
    # traffic-only generator against a full real group: trajectories skipped and said so
    tr = users_metrics(rroot, ru, sroot, su.drop_vars("trajectory"), progress=False)
    assert "trajectories" not in tr and tr["traffic"] == both["traffic"]
    assert tr["skipped"] == {"trajectory": "absent from synthetic/users"}
    # the base stations only matter when trajectories are scored
    other = tiny_city(seed=0, W=12)
    assert users_metrics(rroot, ru, other, su.drop_vars("trajectory"), progress=False)["traffic"] == both["traffic"]
    with pytest.raises(StoreError, match="base stations"):
        users_metrics(rroot, ru.drop_vars("traffic"), other, su, progress=False)


def test_eval_users_cli_trajectory_only_and_traffic_only(tmp_path):
    real = tiny_city(seed=0, days=2)
    full = users_group(real, n_users=10, seed=0)
    gen = users_group(real, n_users=7, seed=3, n_samples=2)
    write(real, tmp_path / "real_traj.zarr", users=full.drop_vars("traffic"))
    write(real, tmp_path / "gen_traj.zarr", users=gen.drop_vars("traffic"))
    write(real, tmp_path / "train.zarr", users=users_group(real, n_users=8, seed=9))
    out = tmp_path / "traj"
    rc = main(["eval", "users", "--real", str(tmp_path / "real_traj.zarr"), "--synthetic", str(tmp_path / "gen_traj.zarr"),
               "--train", str(tmp_path / "train.zarr"), "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "metrics.json").read_text())
    assert "traffic" not in res and len(res["trajectories"]["distance"]["per_sample"]) == 2
    assert set(res["privacy"]) == {"trajectories"} and res["privacy"]["trajectories"]["metric"] == "hamming"
    html = (out / "report.html").read_text()
    assert "figures/trajectories.png" in html and "user_traffic.png" not in html and (out / "figures" / "trajectories.png").is_file()

    write(real, tmp_path / "real_full.zarr", users=full)
    write(real, tmp_path / "gen_traffic.zarr", users=gen.drop_vars("trajectory"))
    write(real, tmp_path / "train_traj.zarr", users=full.drop_vars("traffic"))
    out = tmp_path / "traffic"
    rc = main(["eval", "users", "--real", str(tmp_path / "real_full.zarr"), "--synthetic", str(tmp_path / "gen_traffic.zarr"),
               "--train", str(tmp_path / "train_traj.zarr"), "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "metrics.json").read_text())
    assert set(res["traffic"]) == set(USER_TRAFFIC_METRICS) and "trajectories" not in res
    assert res["skipped"] == {"trajectory": f"absent from {tmp_path / 'gen_traffic.zarr'}/users"}
    # the training group has no traffic: nothing to audit, and the result says why
    assert res["privacy"] == {"skipped": {"traffic": f"absent from {tmp_path / 'train_traj.zarr'}/users"}}
    html = (out / "report.html").read_text()
    assert "user_traffic.png" in html and "trajectories.png" not in html and "not scored" in html


@pytest.mark.shared_data
def test_eval_users_on_imported_geolife(shared_data, tmp_path):
    """Real trajectory-only stores: MoveSim GeoLife test vs val user-days, imported onto one BS table."""
    src = shared_data / "trajectories" / "movesim_geolife"
    if not (src / "gps").is_file():
        pytest.skip("shared MoveSim GeoLife data absent")
    assert main(["data", "import", "movesim", str(src), "--split", "all", "--out", str(tmp_path / "all.zarr")]) == 0
    root = open_city(tmp_path / "all.zarr")
    bs_csv = tmp_path / "bs.csv"
    bs_csv.write_text("latitude,longitude\n" + "".join(f"{a:.9f},{b:.9f}\n" for a, b in zip(root["bs_lat"].values, root["bs_lon"].values)))
    for split in ("test", "val"):
        assert main(["data", "import", "movesim", str(src), "--split", split, "--bs-coords", str(bs_csv),
                     "--out", str(tmp_path / f"{split}.zarr")]) == 0
    out = tmp_path / "ev"
    assert main(["eval", "users", "--real", str(tmp_path / "test.zarr"), "--synthetic", str(tmp_path / "val.zarr"),
                 "--no-report", "--out", str(out)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    n = {k: open_users(tmp_path / f"{split}.zarr").sizes["user"] for k, split in (("real", "test"), ("synthetic", "val"))}
    assert res["scored"] == ["trajectory"] and "traffic" not in res and res["n_users"] == n and min(n.values()) > 500
    # two held-out splits of the same population: every JSD is small, far below log(2)
    assert all(0.0 <= v["mean"] < 0.05 for v in res["trajectories"].values())
