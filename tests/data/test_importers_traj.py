"""movesim and foursquare importers: user-day rows -> BS trajectories (pseudo BS or given BS), region filter,
fill rule, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fixtures_importers import write_movesim
from mobscale.data import schema
from mobscale.data.importers import run_import
from mobscale.data.importers._trajectories import great_circle_km
from mobscale.data.store import open_city, open_users
from mobscale.errors import ConfigError, InputDataError


def test_movesim_pseudo_bs_and_region_filter(tmp_path):
    lat, lon, rows = write_movesim(tmp_path / "geo", 3, {"real": 6, "test": 3, "val": 2})
    out = run_import("movesim", [tmp_path / "geo"], tmp_path / "m.zarr")
    root = open_city(out).load()
    u = open_users(out).load()
    # row 0 of real.data visits Shanghai: dropped by the 50 km region filter
    assert u.sizes["user"] == 10 and u.sizes["time"] == 48
    assert json.loads(u.attrs["region"])["dropped"] == 1
    assert u["user_split"].values.tolist() == [0] * 5 + [1] * 2 + [2] * 3  # train, val, test
    assert u["user_split"].attrs["flag_meanings"] == "train val test"
    kept = np.concatenate([rows["real"][1:], rows["val"], rows["test"]])
    assert u["source_row"].values.tolist() == list(range(1, 6)) + [0, 1] + [0, 1, 2]
    np.testing.assert_array_equal(u["location"].values, kept)
    # trajectory = BS of the location; every BS is the centroid of the locations mapped to it and lies
    # within one 500 m square of them
    loc_bs = u["loc_bs"].values
    np.testing.assert_array_equal(u["trajectory"].values, loc_bs[kept])
    used = np.unique(kept)
    assert (loc_bs[used] >= 0).all() and (loc_bs[np.setdiff1d(np.arange(lat.size), used)] == -1).all()
    for b in range(root.sizes["bs"]):
        members = used[loc_bs[used] == b]
        assert members.size > 0
        assert root["bs_lat"].values[b] == pytest.approx(lat[members].mean(), abs=1e-6)
        assert great_circle_km(lat[members], lon[members], np.full(members.size, root["bs_lat"].values[b]),
                               np.full(members.size, root["bs_lon"].values[b])).max() < 0.5 * np.sqrt(2)
    assert json.loads(root.attrs["levels_present"]) == [] and root.attrs["time_step_minutes"] == 30
    assert str(u["time"].values[0])[:16] == "2001-01-01T00:00"
    assert np.all(np.diff(u["time"].values) == np.timedelta64(schema.USER_STEP_MINUTES, "m"))
    np.testing.assert_allclose(u["loc_lat"].values, np.round(lat, 3))
    # everything kept with an infinite radius; one split only
    allrows = open_users(run_import("movesim", [tmp_path / "geo"], tmp_path / "a.zarr", max_radius_km=float("inf"))).load()
    assert allrows.sizes["user"] == 11
    test = open_users(run_import("movesim", [tmp_path / "geo" / "gps", tmp_path / "geo" / "test.data"], tmp_path / "t.zarr", split="test")).load()
    np.testing.assert_array_equal(test["location"].values, rows["test"])


def test_movesim_given_base_stations(tmp_path):
    lat, lon, rows = write_movesim(tmp_path / "geo", 4, {"real": 5})
    bs = pd.DataFrame({"Latitude": [39.97, 39.99, 39.98], "Longitude": [116.32, 116.34, 116.33]})
    bs.to_csv(tmp_path / "bs.csv", index=False)
    out = run_import("movesim", [tmp_path / "geo"], tmp_path / "b.zarr", bs_coords=tmp_path / "bs.csv")
    root, u = open_city(out).load(), open_users(out).load()
    assert root.sizes["bs"] == 3
    np.testing.assert_allclose(root["bs_lat"].values, bs["Latitude"].values)
    loc = u["location"].values
    d = np.stack([great_circle_km(lat[loc.ravel()], lon[loc.ravel()], np.full(loc.size, a), np.full(loc.size, b))
                  for a, b in zip(bs["Latitude"], bs["Longitude"])])
    np.testing.assert_array_equal(u["trajectory"].values.ravel(), d.argmin(0))
    # Shanghai base stations for Beijing trajectories: refused, naming the distance
    pd.DataFrame({"latitude": [31.24, 31.25], "longitude": [121.51, 121.49]}).to_csv(tmp_path / "sh.csv", index=False)
    with pytest.raises(InputDataError, match=r"farther than 5 km from every base station .* 10\d\d\.\d km .*same city"):
        run_import("movesim", [tmp_path / "geo"], tmp_path / "s.zarr", bs_coords=tmp_path / "sh.csv")
    assert not (tmp_path / "s.zarr").exists()
    pd.DataFrame({"x": [1.0], "y": [2.0]}).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(InputDataError, match="needs a latitude and a longitude column"):
        run_import("movesim", [tmp_path / "geo"], tmp_path / "s.zarr", bs_coords=tmp_path / "nocol.csv")
    (tmp_path / "badbs.csv").write_text("latitude,longitude\n39.9,116.3\n,116.4\n")
    with pytest.raises(InputDataError, match=r"badbs.csv: line 3: invalid coordinates"):
        run_import("movesim", [tmp_path / "geo"], tmp_path / "s.zarr", bs_coords=tmp_path / "badbs.csv")


def test_movesim_bad_input(tmp_path):
    write_movesim(tmp_path / "geo", 5, {"real": 4})
    data = (tmp_path / "geo" / "real.data").read_text().splitlines()
    bad = list(data)
    bad[2] = " ".join(bad[2].split()[:47])
    (tmp_path / "geo" / "real.data").write_text("\n".join(bad) + "\n")
    with pytest.raises(InputDataError, match=r"real.data: line 3, slot 47: location id nan"):
        run_import("movesim", [tmp_path / "geo"], tmp_path / "x.zarr")
    bad = list(data)
    f = bad[1].split()
    f[5] = "99999"
    bad[1] = " ".join(f)
    (tmp_path / "geo" / "real.data").write_text("\n".join(bad) + "\n")
    with pytest.raises(InputDataError, match=r"real.data: line 2, slot 5: location id 99999.0 is not an integer in 0..62"):
        run_import("movesim", [tmp_path / "geo"], tmp_path / "x.zarr")
    (tmp_path / "geo" / "real.data").write_text("\n".join(data) + "\n")
    gps = (tmp_path / "geo" / "gps").read_text().splitlines()
    gps[4] = "95.0 116.3"
    (tmp_path / "geo" / "gps").write_text("\n".join(gps) + "\n")
    with pytest.raises(InputDataError, match=r"gps: line 5: invalid coordinates \(lat 95.0"):
        run_import("movesim", [tmp_path / "geo"], tmp_path / "x.zarr")
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "gps").write_text("39.9 116.3\n")
    with pytest.raises(ConfigError, match="no .data files"):
        run_import("movesim", [tmp_path / "only"], tmp_path / "x.zarr")


# ---------------------------------------------------------------- foursquare


def _foursquare(tmp_path, checkins: list[tuple], n_loc: int = 6, poi: bool = True):
    rng = np.random.default_rng(8)
    lat = 40.70 + np.arange(n_loc) * 0.01
    lon = np.full(n_loc, -74.0)
    arrays = {"gps_latlng": np.column_stack([lat, lon])}
    if poi:
        arrays["poi_counts"] = rng.integers(0, 5, size=(n_loc, 4)).astype(np.int32)
    np.savez(tmp_path / "locs.npz", **arrays)
    pd.DataFrame(checkins, columns=["user", "traj", "loc", "tim_min", "stay_min"]).to_csv(tmp_path / "checkins.csv", index=False)
    return lat, lon, arrays.get("poi_counts")


def test_foursquare_fill_rule_and_bs_poi(tmp_path):
    lat, lon, poi = _foursquare(tmp_path, [
        (7, 0, 2, 125.0, 30.0),   # 02:05 -> slots 4.. (and back-filled 0..3)
        (7, 0, 4, 600.0, 10.0),   # 10:00: slot 20 (10:00-10:30) ...
        (7, 0, 1, 615.5, 60.0),   # ... but 10:15 is later in the same slot and wins it: loc 4 is never held
        (7, 1, 5, 1430.0, 5.0),   # the whole day back-filled with loc 5
        (9, 0, 0, 0.0, 5.0),
    ])
    out = run_import("foursquare", [tmp_path / "checkins.csv", tmp_path / "locs.npz"], tmp_path / "f.zarr")
    root, u = open_city(out).load(), open_users(out).load()
    assert u.sizes["user"] == 3
    assert u["source_user"].values.tolist() == [7, 7, 9] and u["source_traj"].values.tolist() == [0, 1, 0]
    day = u["location"].values[0]
    assert day[:20].tolist() == [2] * 20 and day[20:].tolist() == [1] * 28
    assert u["location"].values[1].tolist() == [5] * 48 and u["location"].values[2].tolist() == [0] * 48
    # 0.01 deg apart (~1.1 km): every used location is its own pseudo BS
    assert root.sizes["bs"] == 4
    loc_bs = u["loc_bs"].values
    np.testing.assert_array_equal(u["trajectory"].values, loc_bs[u["location"].values])
    assert loc_bs[3] == -1 and loc_bs[4] == -1
    for loc in (0, 1, 2, 5):
        np.testing.assert_array_equal(root["bs_poi"].values[loc_bs[loc]], poi[loc])
    assert root["venue_category"].values.tolist() == ["venue_000", "venue_001", "venue_002", "venue_003"]
    assert "forward fill" in u.attrs["fill_rule"]


@pytest.mark.parametrize(
    "checkins, pattern",
    [
        ([(1, 0, 2, 300.0, 1.0), (1, 0, 3, 200.0, 1.0)], r"line 3: earlier tim_min 200.0 after 300.0 in user 1, traj 0"),
        ([(1, 0, 2, 300.0, 1.0), (1, 0, 3, 300.0, 1.0)], r"line 3: duplicate tim_min"),
        ([(1, 0, 2, 300.0, 1.0), (1, 0, 17, 400.0, 1.0)], r"line 3: loc 17 outside 0..5"),
        ([(1, 0, 2, 1500.0, 1.0)], r"line 2: tim_min 1500.0 is not a minute of the day"),
        ([(1, 0, 2, float("nan"), 1.0)], r"line 2: column 'tim_min' is empty"),
        ([(1.5, 0, 2, 10.0, 1.0)], r"line 2: column 'user' must be an integer"),
    ],
)
def test_foursquare_bad_input(tmp_path, checkins, pattern):
    _foursquare(tmp_path, checkins)
    with pytest.raises(InputDataError, match=pattern):
        run_import("foursquare", [tmp_path], tmp_path / "x.zarr")


def test_foursquare_missing_column_and_sources(tmp_path):
    _foursquare(tmp_path, [(1, 0, 2, 10.0, 1.0)])
    pd.read_csv(tmp_path / "checkins.csv").drop(columns=["loc"]).to_csv(tmp_path / "checkins.csv", index=False)
    with pytest.raises(InputDataError, match=r"missing column\(s\) \['loc'\]"):
        run_import("foursquare", [tmp_path], tmp_path / "x.zarr")
    with pytest.raises(ConfigError, match="one check-in .csv and one location .npz"):
        run_import("foursquare", [tmp_path / "locs.npz"], tmp_path / "x.zarr")
