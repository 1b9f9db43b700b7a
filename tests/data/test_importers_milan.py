"""milan-raw and milan-block importers on tiny seeded fixtures: values, placement on the grid, levels, time,
and one clear error per kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures_importers import CET_MIDNIGHT_MS, DLAT, DLON, LAT0, LON0, STEP_MS, milan_raw_records, write_lines, write_milano_grid
from mobscale.data import pyramid
from mobscale.data.importers import run_import
from mobscale.data.store import open_city
from mobscale.errors import ConfigError, InputDataError

ACTS = ("smsin", "smsout", "callin", "callout", "internet")
SQUARES = [1, 2, 103]  # (row, col) from the SW: (0, 0), (0, 1), (1, 2)
N_STEPS = 12


@pytest.fixture
def grid_csv(tmp_path):
    return write_milano_grid(tmp_path / "grid.csv", range(0, 3), range(0, 5))


@pytest.fixture
def raw(tmp_path):
    lines, expected = milan_raw_records(7, SQUARES, N_STEPS)
    return write_lines(tmp_path / "raw.tsv", lines), lines, expected


def _expected_grid(expected: dict, act: str) -> np.ndarray:
    g = np.zeros((N_STEPS, 2, 4))
    for (k, sq), v in expected[act].items():
        r, c = divmod(sq - 1, 100)
        g[k, r, c] += v
    return g


def test_milan_raw_values_levels_and_attrs(tmp_path, grid_csv, raw):
    path, _, expected = raw
    out = run_import("milan-raw", [path], tmp_path / "m.zarr", grid=grid_csv)
    ds = open_city(out).load()
    # bounding box rows 0-1 x cols 0-2, padded east to 4 columns
    assert ds.sizes["y"] == 2 and ds.sizes["x"] == 4
    assert ds["square_id"].values.tolist() == [[1, 2, 3, 4], [101, 102, 103, 104]]
    for act in ACTS:
        var = "traffic_grid50" if act == "internet" else act
        np.testing.assert_allclose(ds[var].values, _expected_grid(expected, act), rtol=1e-6, atol=1e-6)
    assert ds["observed"].values.tolist() == [[1, 1, 0, 0], [0, 0, 1, 0]]
    assert json.loads(ds.attrs["missing_squares"]) == [3, 4, 101, 102, 104]
    # levels: grid100 = 2x2 squares, pseudo cells = 2x2, pseudo BS = 4x4 (here the whole 2x4 grid in one BS)
    g = ds["traffic_grid50"].values.astype(np.float64)
    np.testing.assert_allclose(ds["traffic_grid100"].values, g.reshape(N_STEPS, 1, 2, 2, 2).sum((2, 4)), rtol=1e-6)
    np.testing.assert_allclose(ds["traffic_cell"].values, ds["traffic_grid100"].values.reshape(N_STEPS, -1), rtol=1e-6)
    assert ds.sizes["bs"] == 1
    np.testing.assert_allclose(ds["traffic_bs"].values[:, 0], g.sum((1, 2)), rtol=1e-6)
    assert max(pyramid.consistency_errors(ds).values()) < 1e-6
    # time: epoch ms -> CET wall clock, 10-min steps
    assert str(ds["time"].values[0])[:16] == "2013-11-01T00:00"
    assert ds.attrs["time_step_minutes"] == 10
    assert np.all(np.diff(ds["time"].values) == np.timedelta64(10, "m"))
    # geometry from the grid file: SW corner, centres, true square size (~236 m x ~234 m)
    assert ds.attrs["lat0"] == pytest.approx(LAT0) and ds.attrs["lon0"] == pytest.approx(LON0)
    np.testing.assert_allclose(ds["lat"].values, LAT0 + (np.arange(2) + 0.5) * DLAT, atol=1e-9)
    np.testing.assert_allclose(ds["lon"].values, LON0 + (np.arange(4) + 0.5) * DLON, atol=1e-9)
    assert ds.attrs["pixel_size_x_m"] == pytest.approx(DLON * np.pi / 180 * 6371008.8 * np.cos(np.radians(LAT0)), rel=1e-3)
    assert ds.attrs["pixel_size_y_m"] == pytest.approx(DLAT * np.pi / 180 * 6371008.8, rel=1e-3)
    np.testing.assert_allclose(np.diff(ds["y"].values), ds.attrs["pixel_size_y_m"], rtol=1e-3)
    assert ds.attrs["kind"] == "real" and ds.attrs["city"] == "milan"
    assert "Milano grid squares" in ds.attrs["levels_built_by"]
    assert ds["traffic_grid50"].attrs["units"] == "1"


def test_milan_raw_multiple_files_equal_one(tmp_path, grid_csv, raw):
    path, lines, _ = raw
    t_split = CET_MIDNIGHT_MS + 5 * STEP_MS
    early = [ln for ln in lines if int(ln.split("\t")[1]) < t_split]
    late = [ln for ln in lines if int(ln.split("\t")[1]) >= t_split]
    a = write_lines(tmp_path / "day1.tsv", late)  # order of the files must not matter
    b = write_lines(tmp_path / "day0.tsv", early)
    one = open_city(run_import("milan-raw", [path], tmp_path / "one.zarr", grid=grid_csv)).load()
    two = open_city(run_import("milan-raw", [a, b], tmp_path / "two.zarr", grid=grid_csv)).load()
    np.testing.assert_array_equal(one["traffic_grid50"].values, two["traffic_grid50"].values)
    np.testing.assert_array_equal(one["time"].values, two["time"].values)
    with pytest.raises(InputDataError, match="also appears in"):
        run_import("milan-raw", [path, a], tmp_path / "overlap.zarr", grid=grid_csv)


def test_milan_raw_geojson_grid_gives_same_store(tmp_path, raw):
    path, _, _ = raw
    csv = write_milano_grid(tmp_path / "g.csv", range(0, 3), range(0, 5))
    gj = write_milano_grid(tmp_path / "g.geojson", range(0, 3), range(0, 5), geojson=True)
    a = open_city(run_import("milan-raw", [path], tmp_path / "a.zarr", grid=csv)).load()
    b = open_city(run_import("milan-raw", [path], tmp_path / "b.zarr", grid=gj)).load()
    np.testing.assert_allclose(a["lat"].values, b["lat"].values, atol=1e-9)
    np.testing.assert_allclose(a["x"].values, b["x"].values, atol=1e-6)
    np.testing.assert_array_equal(a["traffic_grid50"].values, b["traffic_grid50"].values)


def _mutate(lines, i, field, value):
    f = lines[i].split("\t")
    f[field] = value
    out = list(lines)
    out[i] = "\t".join(f)
    return out


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda L: _mutate(L, 4, 7, "nan"), r"line 5: column 'internet' is not a number \('nan'\)"),
        (lambda L: _mutate(L, 4, 6, "inf"), r"line 5: column 'callout' is infinite"),
        (lambda L: _mutate(L, 4, 3, "abc"), r"line 5: column 'smsin' is not a number"),
        (lambda L: _mutate(L, 4, 7, "-1.5"), r"line 5: negative internet"),
        (lambda L: _mutate(L, 4, 0, "9999"), r"line 5: unknown square_id 9999"),
        (lambda L: _mutate(L, 4, 0, ""), r"line 5: field 'square_id' must be an integer, got empty"),
        (lambda L: _mutate(L, 4, 1, str(CET_MIDNIGHT_MS + 1000)), r"line 5: time_interval .* not on the 10-min grid"),
        (lambda L: L[:4] + ["\t".join(L[4].split("\t")[:7])] + L[5:], r"line 5: 7 tab-separated field\(s\), expected 8"),
        (lambda L: L[:4] + [L[4] + "\t1"] + L[5:], r"line 5: 9 tab-separated field\(s\)"),
        (lambda L: L + [L[2]], rf"lines 3 and {{n}}: duplicate record"),
    ],
)
def test_milan_raw_bad_lines(tmp_path, grid_csv, raw, mutate, pattern):
    _, lines, _ = raw
    bad = mutate(lines)
    src = write_lines(tmp_path / "bad.tsv", bad)
    with pytest.raises(InputDataError, match=pattern.replace("{n}", str(len(bad)))) as e:
        run_import("milan-raw", [src], tmp_path / "bad.zarr", grid=grid_csv)
    assert "bad.tsv" in str(e.value)
    assert not (tmp_path / "bad.zarr").exists()


def test_milan_raw_empty_file_missing_interval_and_grid(tmp_path, grid_csv, raw):
    _, lines, expected = raw
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(InputDataError, match="empty.tsv: empty file"):
        run_import("milan-raw", [empty], tmp_path / "e.zarr", grid=grid_csv)
    gap = [ln for ln in lines if int(ln.split("\t")[1]) != CET_MIDNIGHT_MS + 3 * STEP_MS]
    src = write_lines(tmp_path / "gap.tsv", gap)
    with pytest.raises(InputDataError, match=r"1 of 12 10-min intervals have no record .* first at 2013-11-01T00:30"):
        run_import("milan-raw", [src], tmp_path / "g.zarr", grid=grid_csv)
    ds = open_city(run_import("milan-raw", [src], tmp_path / "g.zarr", grid=grid_csv, missing="zero")).load()
    assert float(ds["traffic_grid50"].isel(time=3).sum()) == 0.0
    assert float(ds["traffic_grid50"].isel(time=4).sum()) > 0.0
    with pytest.raises(ConfigError, match="needs --grid"):
        run_import("milan-raw", [src], tmp_path / "n.zarr")
    small = write_milano_grid(tmp_path / "small.csv", range(0, 1), range(0, 5))
    with pytest.raises(InputDataError, match="line .*unknown square_id 103"):
        run_import("milan-raw", [src], tmp_path / "s.zarr", grid=small)


# ---------------------------------------------------------------- milan-block


@pytest.fixture
def block(tmp_path):
    rng = np.random.default_rng(11)
    a = rng.gamma(2.0, 50.0, size=(12, 25))
    path = tmp_path / "block.csv"
    path.write_text("\n".join(",".join(repr(float(v)) for v in row) for row in a) + "\n")
    # DGRN rows 41-45 (north-numbered) are rows 55-59 from the south; cols 41-45 are 40-44 from the west
    grid = write_milano_grid(tmp_path / "grid.csv", range(54, 61), range(39, 46))
    return path, grid, a


def _dgrn_rc(j, order):
    ri, ci = (j % 5, j // 5) if order == "col-major" else (j // 5, j % 5)
    return 100 - (41 + ri), 40 + ci  # (row from the south, col from the west)


@pytest.mark.parametrize("order", ["col-major", "row-major"])
def test_milan_block_placement_and_padding(tmp_path, block, order):
    path, grid, a = block
    ds = open_city(run_import("milan-block", [path], tmp_path / "b.zarr", grid=grid, column_order=order)).load()
    assert (ds.sizes["y"], ds.sizes["x"]) == (6, 6)  # padded one row north, one column east
    sq = ds["square_id"].values
    assert sq[0, 0] == 55 * 100 + 40 + 1  # SW square of the box = DGRN row 45, col 41
    for j in range(25):
        r, c = _dgrn_rc(j, order)
        np.testing.assert_allclose(ds["traffic_grid50"].values[:, r - 55, c - 40], a[:, j], rtol=1e-6)
        assert sq[r - 55, c - 40] == r * 100 + c + 1
    assert ds["observed"].values[:5, :5].all() and ds["observed"].values[5].sum() == 0 and ds["observed"].values[:, 5].sum() == 0
    assert float(abs(ds["traffic_grid50"].values[:, 5, :]).sum() + abs(ds["traffic_grid50"].values[:, :, 5]).sum()) == 0.0
    assert max(pyramid.consistency_errors(ds).values()) < 1e-6
    assert ds.sizes["bs"] == 4 and ds.sizes["cell"] == 9
    assert str(ds["time"].values[0])[:16] == "2013-11-01T00:00" and ds.attrs["time_origin"] == "assumed"


def test_milan_block_crop_start_and_layout(tmp_path, block):
    path, grid, a = block
    ds = open_city(run_import("milan-block", [path], tmp_path / "c.zarr", grid=grid, pad="crop", start="2020-02-03T06:00", step_minutes=15)).load()
    assert (ds.sizes["y"], ds.sizes["x"]) == (4, 4)
    assert "observed" in ds and ds["observed"].values.all()
    for j in range(25):
        r, c = _dgrn_rc(j, "col-major")
        if 56 <= r <= 59 and 40 <= c <= 43:
            np.testing.assert_allclose(ds["traffic_grid50"].values[:, r - 56, c - 40], a[:, j], rtol=1e-6)
    assert len(json.loads(ds.attrs["dropped_squares"])) == 9
    assert str(ds["time"].values[1])[:16] == "2020-02-03T06:15"
    with pytest.raises(InputDataError, match="25 columns, expected 16"):
        run_import("milan-block", [path], tmp_path / "l.zarr", grid=grid, layout=(4, 4))


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda rows: [r[:-1] for r in rows], r"24 columns, expected 25"),
        (lambda rows: rows[:2] + [rows[2][:6] + [""] + rows[2][7:]] + rows[3:], r"line 3, column 7: empty field"),
        (lambda rows: rows[:2] + [rows[2][:6] + ["-3"] + rows[2][7:]] + rows[3:], r"line 3, column 7: negative traffic"),
        (lambda rows: rows[:2] + [rows[2][:6] + ["NaN"] + rows[2][7:]] + rows[3:], r"line 3: column 'column 7' is not a number"),
    ],
)
def test_milan_block_bad_input(tmp_path, block, edit, pattern):
    path, grid, _ = block
    rows = [ln.split(",") for ln in path.read_text().splitlines()]
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(",".join(r) for r in edit(rows)) + "\n")
    with pytest.raises(InputDataError, match=pattern):
        run_import("milan-block", [bad], tmp_path / "x.zarr", grid=grid)
    with pytest.raises(ConfigError, match="needs --grid"):
        run_import("milan-block", [path], tmp_path / "y.zarr")
