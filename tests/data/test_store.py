"""City store: schema, determinism, level and temporal consistency, density projection, windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from mobscale.config.data import SynthConfig, WindowConfig
from mobscale.data import pyramid, schema
from mobscale.data.ops import project, segment_mean
from mobscale.data.store import open_city, open_users
from mobscale.data.synthetic import synth_city
from mobscale.data.validate import validate_store
from mobscale.data.windows import HOURS, LEVEL_ORDER, CityWindows, Normaliser, fit_normaliser

from tiny_city import TINY


def test_schema_dims_coords_attrs(tiny_store):
    ds = open_city(tiny_store)
    for lvl, dims in schema.LEVEL_DIMS.items():
        assert ds[schema.TRAFFIC_VAR[lvl]].dims == dims
        assert ds[schema.TRAFFIC_VAR[lvl]].attrs["units"] == "MB"
    for c in schema.REQUIRED_COORDS:
        assert c in ds.coords, c
    for a in schema.REQUIRED_ATTRS:
        assert a in ds.attrs, a
    assert ds.attrs["time_step_minutes"] == 60
    assert ds.sizes["poi_category"] == 21
    assert ds["aoi"].attrs["flag_meanings"].split() == list(schema.AOI.names)
    assert ds["population"].dims == ("hour_of_week", "y", "x")
    # every cell belongs to a BS and every pixel to a cell
    assert set(np.unique(ds["pixel_cell"].values)) == set(range(ds.sizes["cell"]))
    assert set(np.unique(ds["cell_bs"].values)) == set(range(ds.sizes["bs"]))
    # data vars are lazy (Dask) when opened
    assert ds["traffic_grid50"].chunks is not None
    u = open_users(tiny_store)
    assert u["traffic"].dims == ("user", "time") and u["trajectory"].dims == ("user", "time")
    assert (np.diff(u["time"].values) == np.timedelta64(30, "m")).all()
    assert u.sizes["time"] == 2 * 48
    rel = set(str(r) for r in u["kg_relation"].values.tolist())
    assert rel == set(schema.KG_RELATIONS)
    assert validate_store(tiny_store)["levels"] == list(schema.SPATIAL_LEVELS)


def test_levels_sum_exactly(tiny_store):
    ds = open_city(tiny_store).load()
    g50 = ds.traffic_grid50.values.astype(np.float64)
    np.testing.assert_allclose(ds.traffic_grid100.values, g50.reshape(-1, 8, 2, 8, 2).sum((2, 4)), rtol=1e-5)
    pc = ds.pixel_cell.values
    cell = np.stack([[g50[t][pc == c].sum() for c in range(ds.sizes["cell"])] for t in range(ds.sizes["time"])])
    np.testing.assert_allclose(ds.traffic_cell.values, cell, rtol=1e-5)
    cb = ds.cell_bs.values
    bs = np.stack([[cell[t][cb == b].sum() for b in range(ds.sizes["bs"])] for t in range(ds.sizes["time"])])
    np.testing.assert_allclose(ds.traffic_bs.values, bs, rtol=1e-5)
    assert max(pyramid.consistency_errors(ds).values()) < 1e-6


@pytest.mark.parametrize("res,f", [("2h", 2), ("4h", 4), ("1d", 24)])
def test_temporal_pyramid_sums(tiny_store, res, f):
    ds = open_city(tiny_store)
    for lvl in schema.SPATIAL_LEVELS:
        coarse = pyramid.level(ds, lvl, res)
        assert coarse.chunks is not None  # stays lazy
        fine = ds[schema.TRAFFIC_VAR[lvl]].values.astype(np.float64)
        T = fine.shape[0] // f * f
        want = fine[:T].reshape(T // f, f, *fine.shape[1:]).sum(1)
        np.testing.assert_allclose(coarse.values, want, rtol=1e-5)
        assert (coarse["time"].values == ds["time"].values[:T:f]).all()


@pytest.mark.parametrize("lvl", schema.SPATIAL_LEVELS)
@pytest.mark.parametrize("res", [None, "4h"])
def test_density_projection(tiny_store, lvl, res):
    ds = open_city(tiny_store)
    dens = pyramid.density(ds, lvl, res).values.astype(np.float64)
    umap, n = pyramid.unit_map(ds, lvl)
    f = 1 if res is None else 4
    coarse = pyramid.level(ds, lvl, res).values.astype(np.float64).reshape(-1, n)
    # summing the density over a unit's pixels and a block's steps gives the unit value back
    back = pyramid.units_sum(dens.reshape(-1, f, *umap.shape).sum(1), umap, n)
    np.testing.assert_allclose(back, coarse, rtol=1e-4, atol=1e-3)
    # piecewise constant over units
    for u in range(min(n, 20)):
        vals = dens[:, umap == u]
        assert np.allclose(vals, vals[:, :1], rtol=1e-6)
    if f > 1:
        blocks = dens.reshape(-1, f, *umap.shape)
        assert np.allclose(blocks, blocks[:, :1])


def test_same_seed_identical_store(tmp_path):
    cfg = SynthConfig(**{**TINY, "users": 3})
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    synth_city(cfg, a, progress=False)
    synth_city(cfg, b, progress=False)
    da, db = open_city(a).load(), open_city(b).load()
    xr.testing.assert_identical(da, db)
    xr.testing.assert_identical(open_users(a).load(), open_users(b).load())
    c = tmp_path / "c.zarr"
    synth_city(cfg.model_copy(update={"seed": 4}), c, progress=False)
    assert not np.array_equal(open_city(c).traffic_grid50.values, da.traffic_grid50.values)


def test_realisation_redraws_the_traffic_of_the_same_city(tmp_path):
    """SynthConfig.realisation: another draw of the same city (the oracle reference of the tables): identical context,
    population and network hierarchy, different traffic. Keeping the hidden pixel factor keeps each pixel's long-run
    level, so that draw's per-pixel means track the city's more closely than a full redraw's."""
    base = {**TINY, "users": 0, "days": 3}
    paths = {}
    for name, over in {"city": {}, "again": {}, "r1": {"realisation": 1}, "r1_keep": {"realisation": 1, "redraw_pixel_factor": False},
                       "r2": {"realisation": 2}}.items():
        paths[name] = tmp_path / f"{name}.zarr"
        synth_city(SynthConfig(**base, **over), paths[name], progress=False)
    ds = {k: open_city(p).load() for k, p in paths.items()}
    xr.testing.assert_identical(ds["city"], ds["again"])  # realisation 0 is the city itself
    for k in ("r1", "r1_keep", "r2"):
        for v in ("aoi", "house_road", "poi", "population", "pixel_cell", "cell_bs"):
            np.testing.assert_array_equal(ds[k][v].values, ds["city"][v].values)
        assert not np.array_equal(ds[k].traffic_grid50.values, ds["city"].traffic_grid50.values)
    assert not np.array_equal(ds["r1"].traffic_grid50.values, ds["r2"].traffic_grid50.values)
    lvl = {k: np.log(ds[k].traffic_grid50.values.mean(0) + 1e-3) for k in ds}
    err = {k: np.abs(lvl[k] - lvl["city"]).mean() for k in ("r1", "r1_keep")}
    assert err["r1_keep"] < 0.7 * err["r1"], err


def test_chunk_size_does_not_change_traffic(tmp_path):
    """Per-hour RNG streams: the store does not depend on how time is chunked while writing."""
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    synth_city(SynthConfig(**{**TINY, "users": 0, "time_chunk": 12}), a, progress=False)
    synth_city(SynthConfig(**{**TINY, "users": 0, "time_chunk": 5}), b, progress=False)
    np.testing.assert_array_equal(open_city(a).traffic_grid50.values, open_city(b).traffic_grid50.values)


@settings(max_examples=30, deadline=None)
@given(
    t=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4), n=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
)
def test_hierarchy_kernels_property(t, h, w, n, seed):
    rng = np.random.default_rng(seed)
    g = rng.gamma(0.5, 3.0, (t, 2 * h, 2 * w)).astype(np.float32)
    umap = rng.integers(0, n, (2 * h, 2 * w))
    tot = g.astype(np.float64).sum((1, 2))
    np.testing.assert_allclose(pyramid.block_sum(g).astype(np.float64).sum((1, 2)), tot, rtol=1e-5)
    u = pyramid.units_sum(g, umap, n)
    np.testing.assert_allclose(u.astype(np.float64).sum(1), tot, rtol=1e-5)
    for k in range(n):
        np.testing.assert_allclose(u[:, k], g[:, umap == k].astype(np.float64).sum(1), rtol=1e-5, atol=1e-6)


def test_windows_targets_and_split(tiny_store):
    stages = [("bs", "1d"), ("cell", "4h"), ("grid100", "2h"), ("grid50", "1h")]
    wc = WindowConfig(patch=8, hours=24, test_fraction=0.25)
    train = CityWindows(tiny_store, wc, "train", stages)
    test = CityWindows(tiny_store, wc, "test", stages)
    spots = lambda d: {(w.y0, w.x0) for w in d.windows}  # noqa: E731
    assert spots(train) and spots(test) and not (spots(train) & spots(test))
    item = train[0]
    assert item["targets"].shape == (4, 24, 8, 8) and item["units"].shape == (4, 8, 8)
    for k, (lvl, res) in enumerate(stages):
        u = item["units"][LEVEL_ORDER.index(lvl)][None]
        tk = item["targets"][k][None]
        # each stage target is piecewise constant at its own level (projection is the identity on it)
        torch.testing.assert_close(project(tk, u, HOURS[res]), tk, rtol=1e-5, atol=1e-4)
    # grid50 density equals the stored pixel traffic
    w = train.windows[0]
    ds = open_city(tiny_store)
    raw = ds.traffic_grid50.isel(time=slice(w.t0, w.t0 + 24), y=slice(w.y0, w.y0 + 8), x=slice(w.x0, w.x0 + 8)).values
    np.testing.assert_allclose(item["targets"][3].numpy(), raw)
    # rank sharding is disjoint and complete
    r0 = CityWindows(tiny_store, wc, "train", stages, rank=0, world=2)
    r1 = CityWindows(tiny_store, wc, "train", stages, rank=1, world=2)
    assert set(r0.windows).isdisjoint(r1.windows) and set(r0.windows) | set(r1.windows) == set(train.windows)
    # lazy (uncached) reading gives the same items as the in-memory cache
    lazy = CityWindows(tiny_store, wc, "train", stages, cache_bytes=0)
    assert not lazy.arr.cached
    torch.testing.assert_close(lazy[1]["targets"], train[1]["targets"])
    torch.testing.assert_close(lazy[1]["context"]["population"], train[1]["context"]["population"])


def test_normaliser_round_trip_and_train_only(tiny_store):
    wc = WindowConfig(patch=8, hours=24, test_fraction=0.25)
    train = CityWindows(tiny_store, wc, "train", [("grid50", "1h")])
    n = fit_normaliser(train)
    x = train[0]["targets"]
    torch.testing.assert_close(n.inverse(n.forward(x)), x, rtol=1e-4, atol=1e-3)
    assert Normaliser.from_state(n.state_dict()).state_dict() == n.state_dict()


def test_segment_mean_matches_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 4, generator=g)
    units = torch.randint(0, 5, (2, 4, 4), generator=g)
    out = segment_mean(x, units)
    for b in range(2):
        for u in units[b].unique():
            m = units[b] == u
            want = x[b][:, m].mean(-1)
            torch.testing.assert_close(out[b][:, m], want[:, None].expand(-1, int(m.sum())))


@pytest.mark.parametrize("split_by", ["patch", "band", "time"])
def test_split_modes_are_disjoint(tiny_store, split_by):
    wc = WindowConfig(patch=8, hours=24, test_fraction=0.5, split_by=split_by)
    tr = CityWindows(tiny_store, wc, "train", [("grid50", "1h")])
    te = CityWindows(tiny_store, wc, "test", [("grid50", "1h")])
    assert set(tr.windows).isdisjoint(te.windows)
    if split_by == "time":
        assert max(w.t0 for w in tr.windows) < min(w.t0 for w in te.windows)
        assert {(w.y0, w.x0) for w in tr.windows} == {(w.y0, w.x0) for w in te.windows}
    else:
        assert {(w.y0, w.x0) for w in tr.windows}.isdisjoint({(w.y0, w.x0) for w in te.windows})
    if split_by == "band":  # the south rows of patches
        assert {w.y0 for w in te.windows} == {0}
