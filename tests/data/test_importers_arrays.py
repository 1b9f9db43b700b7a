"""grid-npy, uomo and stkdiff importers on tiny seeded arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures_importers import write_uomo
from mobscale.data import pyramid
from mobscale.data.importers import run_import
from mobscale.data.store import open_city
from mobscale.errors import ConfigError, InputDataError

# ---------------------------------------------------------------- grid-npy


def test_grid_npy_row_major_layout_and_timestamps(tmp_path):
    rng = np.random.default_rng(0)
    T, H, W = 30, 6, 4
    a = rng.gamma(2.0, 1.0, size=(T, H * W, 1))
    np.save(tmp_path / "City.npy", a)
    ts = np.stack([(np.arange(T) + 22) // 24 % 7 + 2, (np.arange(T) + 22) % 24], axis=1)  # Wednesday 22:00 ...
    np.save(tmp_path / "City_ts.npy", ts)
    ds = open_city(run_import("grid-npy", [tmp_path / "City.npy"], tmp_path / "g.zarr", layout=(H, W))).load()
    g = ds["traffic_grid50"].values
    for k in (0, 5, 23):
        np.testing.assert_allclose(g[:, k // W, k % W], a[:, k, 0], rtol=1e-6)  # row-major cell axis, row 0 at y=0
    assert ds.attrs["time_step_minutes"] == 60 and ds.attrs["time_origin"] == "nominal"
    assert str(ds["time"].values[0])[:16] == "2001-01-03T22:00"  # nominal week: day 2 = Wednesday
    assert ds["day_of_week"].values[2] == 3 and ds["slot_of_day"].values[2] == 0
    assert ds.attrs["georeferenced"] is False
    assert max(pyramid.consistency_errors(ds).values()) < 1e-6
    assert "observed" not in ds
    # the same data as (T, H, W), with an explicit start and no _ts file
    np.save(tmp_path / "cube.npy", a[:, :, 0].reshape(T, H, W))
    ds2 = open_city(run_import("grid-npy", [tmp_path / "cube.npy"], tmp_path / "c.zarr", step_minutes=30, start="2024-05-01")).load()
    np.testing.assert_array_equal(ds2["traffic_grid50"].values, g)
    assert str(ds2["time"].values[1])[:16] == "2024-05-01T00:30" and ds2.attrs["time_origin"] == "source"


def test_grid_npy_odd_grid_is_padded_and_georeferenced(tmp_path):
    a = np.arange(2 * 3 * 5, dtype=np.float64).reshape(2, 3, 5)
    np.save(tmp_path / "odd.npy", a)
    ds = open_city(run_import("grid-npy", [tmp_path / "odd.npy"], tmp_path / "o.zarr", step_minutes=60,
                              lat0=30.0, lon0=120.0, pixel_size_m=100.0)).load()
    assert (ds.sizes["y"], ds.sizes["x"]) == (4, 6)
    np.testing.assert_array_equal(ds["traffic_grid50"].values[:, :3, :5], a)
    assert ds["observed"].values.sum() == 15 and ds["observed"].values[3].sum() == 0
    assert ds.attrs["georeferenced"] is True and ds.attrs["pixel_size_m"] == 100.0
    assert ds["lat"].values[0] == pytest.approx(30.0 + np.degrees(50.0 / 6371008.8))


def test_grid_npy_negative_values(tmp_path):
    z = np.random.default_rng(1).normal(size=(4, 4, 4))
    np.save(tmp_path / "z.npy", z)
    with pytest.raises(InputDataError, match=r"negative values .*z-scored.*negative='shift'"):
        run_import("grid-npy", [tmp_path / "z.npy"], tmp_path / "r.zarr", step_minutes=60)
    ds = open_city(run_import("grid-npy", [tmp_path / "z.npy"], tmp_path / "s.zarr", step_minutes=60, negative="shift")).load()
    np.testing.assert_allclose(ds["traffic_grid50"].values, z - z.min(), rtol=1e-6, atol=1e-6)
    assert "NOT traffic volume" in ds.attrs["value_transform"]
    ds = open_city(run_import("grid-npy", [tmp_path / "z.npy"], tmp_path / "c.zarr", step_minutes=60, negative="clip")).load()
    np.testing.assert_allclose(ds["traffic_grid50"].values, np.maximum(z, 0), rtol=1e-6)


def test_grid_npy_bad_input(tmp_path):
    a = np.ones((5, 12))
    np.save(tmp_path / "a.npy", a)
    with pytest.raises(ConfigError, match="needs --layout"):
        run_import("grid-npy", [tmp_path / "a.npy"], tmp_path / "x.zarr", step_minutes=60)
    with pytest.raises(ConfigError, match="3x5 = 15 cells but the array has 12"):
        run_import("grid-npy", [tmp_path / "a.npy"], tmp_path / "x.zarr", step_minutes=60, layout=(3, 5))
    with pytest.raises(ConfigError, match="no timestamps file .* --step-minutes"):
        run_import("grid-npy", [tmp_path / "a.npy"], tmp_path / "x.zarr", layout=(3, 4))
    a[2, 7] = np.nan
    np.save(tmp_path / "n.npy", a)
    with pytest.raises(InputDataError, match=r"n.npy: 1 NaN/inf value\(s\), first at time=2, row=1, col=3"):
        run_import("grid-npy", [tmp_path / "n.npy"], tmp_path / "x.zarr", step_minutes=60, layout=(3, 4))
    np.save(tmp_path / "t.npy", np.ones((4, 4, 4)))
    np.save(tmp_path / "t_ts.npy", np.array([[0, 0], [0, 1], [0, 3], [0, 4]]))
    with pytest.raises(InputDataError, match=r"t_ts.npy: rows 1 -> 2: missing timestamp"):
        run_import("grid-npy", [tmp_path / "t.npy"], tmp_path / "x.zarr")
    np.save(tmp_path / "t_ts.npy", np.array([[0, 0], [0, 1], [0, 1], [0, 2]]))
    with pytest.raises(InputDataError, match=r"rows 1 -> 2: duplicate timestamp"):
        run_import("grid-npy", [tmp_path / "t.npy"], tmp_path / "x.zarr")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(InputDataError, match="junk.npy: not a numpy .npy array"):
        run_import("grid-npy", [tmp_path / "junk.npy"], tmp_path / "x.zarr", step_minutes=60)
    assert not (tmp_path / "x.zarr").exists()


# ---------------------------------------------------------------- uomo


def test_uomo_stitches_windows_into_series(tmp_path):
    # 60-min steps (24 slots a day), 26-step series cut into 8-step windows every 2 steps, starting on
    # Sunday 20:00 so the window starts wrap around the end of the week
    S, L, stride, per_day = 26, 8, 2, 24
    start_slot = 6 * per_day + 20
    truth = write_uomo(tmp_path / "uomo_TrafficXY_60min.npz", 5, {"train": 3, "val": 1, "test": 1}, S, L, stride, start_slot, per_day)
    ds = open_city(run_import("uomo", [tmp_path / "uomo_TrafficXY_60min.npz"], tmp_path / "u.zarr")).load()
    assert ds.sizes["time"] == S and ds.attrs["time_step_minutes"] == 60
    assert (ds.sizes["y"], ds.sizes["x"]) == (8, 12)  # 5 tiles on a 3-wide mosaic, 2 rows
    assert ds.sizes["bs"] == 6 and ds.sizes["cell"] == 24
    assert ds["bs_split"].values.tolist() == [0, 0, 0, 1, 2, 3]
    assert ds["observed"].values[4:, 8:].sum() == 0 and ds["observed"].values.sum() == 5 * 16
    g = ds["traffic_grid50"].values
    pop = ds["population"].values
    poi = ds["poi"].values
    matched = {"train": [], "val": [], "test": []}
    for bs in range(5):
        split = ("train", "val", "test")[ds["bs_split"].values[bs]]
        r, c = divmod(bs, 3)
        tile = (slice(None), slice(4 * r, 4 * r + 4), slice(4 * c, 4 * c + 4))
        tr, us, po = truth[split]
        # the source has no patch ids: find the ground-truth series this tile reproduces
        hits = [p for p in range(tr.shape[0]) if np.array_equal(g[tile], tr[p])]
        assert len(hits) == 1
        p = hits[0]
        matched[split].append(p)
        np.testing.assert_array_equal(pop[tile], us[p])
        np.testing.assert_array_equal(poi[tile], po[p])
        np.testing.assert_allclose(ds["traffic_bs"].values[:, bs], tr[p].sum((1, 2)), rtol=1e-5)
    assert sorted(matched["train"]) == [0, 1, 2] and matched["val"] == [0] and matched["test"] == [0]
    assert sorted(ds["bs_patch"].values[:3].tolist()) == [0, 1, 2] and ds["bs_patch"].values[5] == -1
    assert list(ds["poi_category"].values) == ["poi_00", "poi_01", "poi_02"]
    assert ds["day_of_week"].values[0] == 6 and ds["slot_of_day"].values[0] == 20
    assert ds["day_of_week"].values[4] == 0 and ds["slot_of_day"].values[4] == 0
    assert str(ds["time"].values[0])[:16] == "2001-01-07T20:00"  # nominal Sunday
    assert max(pyramid.consistency_errors(ds).values()) < 1e-5
    one = open_city(run_import("uomo", [tmp_path / "uomo_TrafficXY_60min.npz"], tmp_path / "v.zarr", split="val")).load()
    assert one.sizes["bs"] == 1 and "observed" not in one
    np.testing.assert_array_equal(one["traffic_grid50"].values, truth["val"][0][0])


def test_uomo_bad_windows(tmp_path):
    S, L, stride, per_day = 20, 8, 2, 24
    src = tmp_path / "uomo_T_60min.npz"
    write_uomo(src, 9, {"train": 2, "val": 1, "test": 1}, S, L, stride, 0, per_day)
    z = dict(np.load(src))
    z["traffic_train"][3, 5, 1, 1] += 1.0  # one window disagrees with its neighbours
    np.savez(tmp_path / "uomo_bad_60min.npz", **z)
    with pytest.raises(InputDataError, match="continues no window .* do not overlap consistently"):
        run_import("uomo", [tmp_path / "uomo_bad_60min.npz"], tmp_path / "x.zarr", split="train")
    z = dict(np.load(src))
    z["timestamps_val"][0, 4, 1] += 1
    np.savez(tmp_path / "uomo_ts_60min.npz", **z)
    with pytest.raises(InputDataError, match="val: window 0: timestamps do not advance one slot at step 4"):
        run_import("uomo", [tmp_path / "uomo_ts_60min.npz"], tmp_path / "x.zarr")
    z = dict(np.load(src))
    z["traffic_test"][1, 1, 0, 0] = -2.0
    np.savez(tmp_path / "uomo_neg_60min.npz", **z)
    with pytest.raises(InputDataError, match=r"traffic_test: 1 negative value"):
        run_import("uomo", [tmp_path / "uomo_neg_60min.npz"], tmp_path / "x.zarr")
    z = dict(np.load(src))
    del z["poi_val"]
    np.savez(tmp_path / "uomo_miss_60min.npz", **z)
    with pytest.raises(InputDataError, match=r"missing array\(s\) \['poi_val'\]"):
        run_import("uomo", [tmp_path / "uomo_miss_60min.npz"], tmp_path / "x.zarr")
    with pytest.raises(ConfigError, match="--split 'dev'"):
        run_import("uomo", [src], tmp_path / "x.zarr", split="dev")


# ---------------------------------------------------------------- stkdiff


def test_stkdiff_bs_only_store(tmp_path):
    rng = np.random.default_rng(2)
    rec = rng.gamma(2.0, 1e6, size=(7, 48))
    kge = rng.normal(size=(7, 5)).astype(np.float32)
    np.savez(tmp_path / "city.npz", bs_record=rec, bs_kge=kge)
    # unvalidated: the validator still requires bs_x/bs_y/bs_lat/bs_lon, which this source does not have
    ds = open_city(run_import("stkdiff", [tmp_path / "city.npz"], tmp_path / "s.zarr")).load()
    assert set(ds.data_vars) == {"traffic_bs", "bs_kg_embedding"}
    np.testing.assert_allclose(ds["traffic_bs"].values, rec.T, rtol=1e-7)
    np.testing.assert_array_equal(ds["bs_kg_embedding"].values, kge)
    assert json.loads(ds.attrs["levels_present"]) == ["bs"]
    assert ds.attrs["crs"] is None and ds.attrs["georeferenced"] is False
    assert ds.sizes["time"] == 48 and ds.attrs["time_step_minutes"] == 60
    rec[3, 10] = -1.0
    np.savez(tmp_path / "neg.npz", bs_record=rec)
    with pytest.raises(InputDataError, match=r"neg.npz: bs_record: 1 negative value.*bs=3, hour=10"):
        run_import("stkdiff", [tmp_path / "neg.npz"], tmp_path / "n.zarr")
    np.savez(tmp_path / "nokey.npz", traffic=rec)
    with pytest.raises(InputDataError, match=r"no 'bs_record' array \(has \['traffic'\]\)"):
        run_import("stkdiff", [tmp_path / "nokey.npz"], tmp_path / "k.zarr")
