"""Every importer on the real files of ../shared/data (skipped when absent): the store must reproduce the
source values exactly where they land, and the documented facts of each file must hold."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mobscale.data import pyramid
from mobscale.data.importers import run_import
from mobscale.data.store import open_city, open_users
from mobscale.errors import InputDataError

pytestmark = pytest.mark.shared_data


def test_milan_raw_sample(shared_data, tmp_path):
    src = shared_data / "milan" / "raw_sms-call-internet-mi_sample_4squares_2013-11-01.tsv"
    out = run_import("milan-raw", [src], tmp_path / "m.zarr", grid=shared_data / "milan" / "milano_grid_squares.csv")
    ds = open_city(out).load()
    raw = pd.read_csv(src, sep="\t", header=None)
    # the sample's squares are 1, 10, 100 and 1000 (not 1-4 as the MANIFEST says): a 10 x 100 box
    assert sorted(raw[0].unique().tolist()) == [1, 10, 100, 1000]
    assert (ds.sizes["y"], ds.sizes["x"]) == (10, 100) and int(ds["observed"].sum()) == 4
    assert ds.sizes["time"] == 144 and str(ds["time"].values[0])[:16] == "2013-11-01T00:00"
    for sq in (1, 10, 100, 1000):
        r, c = divmod(sq - 1, 100)
        assert ds["square_id"].values[r, c] == sq
        per_t = raw[raw[0] == sq].groupby(1)[7].sum().reindex(1383260400000 + 600000 * np.arange(144), fill_value=0.0)
        np.testing.assert_allclose(ds["traffic_grid50"].values[:, r, c], per_t.to_numpy(), rtol=1e-5, atol=1e-5)
    # measured in the store's spherical local frame: 0.0030004 deg x 0.0021153 deg at 45.36 N
    assert ds.attrs["pixel_size_x_m"] == pytest.approx(234.6, abs=0.3) and ds.attrs["pixel_size_y_m"] == pytest.approx(235.2, abs=0.3)
    assert "MANIFEST.md" in json.loads(ds.attrs["provenance"])[0]["manifest"]


def test_milan_block(shared_data, tmp_path):
    src = shared_data / "milan" / "dgrn_milan_internet_5x5_10min.csv"
    out = run_import("milan-block", [src], tmp_path / "b.zarr", grid=shared_data / "milan" / "milano_grid_squares.csv")
    ds = open_city(out).load()
    a = np.loadtxt(src, delimiter=",")
    assert ds.sizes["time"] == 4320 and (ds.sizes["y"], ds.sizes["x"]) == (6, 6)
    ids = json.loads(ds.attrs["block"])["column_cellIds"]
    assert ids[:6] == [5941, 5841, 5741, 5641, 5541, 5942]  # the MANIFEST's column-major reading
    sq = ds["square_id"].values
    for j, cid in enumerate(ids):
        r, c = np.argwhere(sq == cid)[0]
        np.testing.assert_allclose(ds["traffic_grid50"].values[:, r, c], a[:, j], rtol=1e-6)
    assert max(pyramid.consistency_errors(ds).values()) < 1e-6
    assert ds["lat"].values[0] == pytest.approx(45.47, abs=0.02)  # row 45 from the north of the Milano grid


def test_grid_npy_reference_arrays(shared_data, tmp_path):
    ref = shared_data / "reference"
    src = ref / "npdiff_mobile" / "MobileBJ.npy"
    ds = open_city(run_import("grid-npy", [src], tmp_path / "bj.zarr", layout=(28, 24))).load()
    a = np.load(src)[:, :, 0]
    np.testing.assert_allclose(ds["traffic_grid50"].values.reshape(168, -1), a, rtol=1e-6)
    assert ds.attrs["time_step_minutes"] == 60 and str(ds["time"].values[0])[:16] == "2001-01-01T00:00"
    assert "npdiff" in json.loads(ds.attrs["provenance"])[1]["manifest"].lower()  # the _ts file found its row
    mini = ref / "milan_mini_dzhv" / "mini_train.npy"
    with pytest.raises(InputDataError, match="negative values .*z-scored"):
        run_import("grid-npy", [mini], tmp_path / "z.zarr", step_minutes=60)
    ds = open_city(run_import("grid-npy", [mini], tmp_path / "z.zarr", step_minutes=60, negative="shift")).load()
    assert float(ds["traffic_grid50"].min()) == 0.0 and ds.sizes["y"] == 100


@pytest.mark.parametrize("name, split, tiles, steps", [("NJ_15min", "all", 8, 7 * 96 + 63), ("NC_30min", "val", 4, 7 * 48 + 63)])
def test_uomo_every_window_is_a_slice_of_the_store(shared_data, tmp_path, name, split, tiles, steps):
    src = shared_data / "uomo_china_mobile" / f"uomo_Traffic{name}.npz"
    ds = open_city(run_import("uomo", [src], tmp_path / "u.zarr", split=split)).load()
    assert int((ds["bs_split"].values < 3).sum()) == tiles and ds.sizes["time"] == steps
    z = np.load(src)
    per_day = 96 if name.startswith("NJ") else 48
    g, pop = ds["traffic_grid50"].values, ds["population"].values
    ncols = json.loads(ds.attrs["mosaic"])["tiles_per_row"]
    for s in (("train", "val", "test") if split == "all" else (split,)):
        tr, us, ts = z[f"traffic_{s}"], z[f"users_{s}"], z[f"timestamps_{s}"].astype(int)
        start = ts[:, 0, 0] * per_day + ts[:, 0, 1] - (int(ds["day_of_week"][0]) * per_day + int(ds["slot_of_day"][0]))
        bs_of_split = np.flatnonzero(ds["bs_split"].values == ("train", "val", "test").index(s))
        tiles_g = [g[:, (b // ncols) * 4 : (b // ncols) * 4 + 4, (b % ncols) * 4 : (b % ncols) * 4 + 4] for b in bs_of_split]
        tiles_u = [pop[:, (b // ncols) * 4 : (b // ncols) * 4 + 4, (b % ncols) * 4 : (b % ncols) * 4 + 4] for b in bs_of_split]
        for i in range(tr.shape[0]):
            hit = [k for k, t in enumerate(tiles_g) if np.array_equal(t[start[i] : start[i] + 64], tr[i])]
            assert len(hit) >= 1, f"{s} window {i} is not a slice of any tile"
            assert np.array_equal(tiles_u[hit[0]][start[i] : start[i] + 64], us[i])


def test_stkdiff(shared_data, tmp_path):
    src = shared_data / "reference" / "stkdiff_beijing" / "beijing.npz"
    ds = open_city(run_import("stkdiff", [src], tmp_path / "s.zarr")).load()
    z = np.load(src)
    np.testing.assert_allclose(ds["traffic_bs"].values, z["bs_record"].T, rtol=1e-7)
    assert ds["bs_kg_embedding"].shape == (960, 32) and ds.sizes["time"] == 168


def test_movesim_geolife(shared_data, tmp_path):
    folder = shared_data / "trajectories" / "movesim_geolife"
    out = run_import("movesim", [folder], tmp_path / "g.zarr")
    root, u = open_city(out), open_users(out).load()
    region = json.loads(u.attrs["region"])
    assert 0.05 < region["fraction"] < 0.2  # GeoLife trips outside Beijing
    assert u.sizes["user"] == 10500 - region["dropped"] and u.sizes["time"] == 48
    assert u["user_split"].attrs["flag_meanings"] == "train val test"
    assert int((u["user_split"] == 0).sum()) <= 7000
    tr = u["trajectory"].values
    assert tr.min() >= 0 and tr.max() < root.sizes["bs"]
    np.testing.assert_array_equal(tr, u["loc_bs"].values[u["location"].values])
    with pytest.raises(InputDataError, match="farther than 5 km from every base station"):
        run_import("movesim", [folder], tmp_path / "sh.zarr", bs_coords=shared_data / "shanghai" / "shanghai_telecom_base_stations.csv")
    pg = open_users(run_import("movesim", [shared_data / "reference" / "pategail_geolife"], tmp_path / "p.zarr", split="test")).load()
    assert pg.sizes["user"] <= 2350


def test_foursquare_nyc(shared_data, tmp_path):
    folder = shared_data / "trajectories" / "foursquare_nyc"
    out = run_import("foursquare", [folder], tmp_path / "f.zarr")
    root, u = open_city(out).load(), open_users(out).load()
    assert u.sizes["user"] == 3408 and json.loads(u.attrs["region"])["dropped"] == 0
    z = np.load(folder / "foursquare_nyc_locations_trajsynvae.npz")
    used = np.unique(u["location"].values)
    np.testing.assert_allclose(root["bs_poi"].values.sum(0), z["poi_counts"][used].sum(0))
    c = pd.read_csv(folder / "foursquare_nyc_checkins_trajsynvae.csv")
    first = c[(c.user == c.user.iloc[0]) & (c.traj == c.traj.iloc[0])]
    # the first user-day: back-filled with its first check-in, and its last check-in holds the evening
    assert u["location"].values[0, 0] == first["loc"].iloc[0] and u["location"].values[0, -1] == first["loc"].iloc[-1]
