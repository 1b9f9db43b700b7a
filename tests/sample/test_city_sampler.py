"""City-scale generation: template -> shards -> reconciliation; resumable, idempotent, seam-free, consistent."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import xarray as xr

from mobscale.data import pyramid, schema
from mobscale.data.store import open_city
from mobscale.data.validate import validate_store
from mobscale.errors import MobscaleError, OutputExistsError
from mobscale.sample.city import SampleSpec, _state_dir, sample_city
from mobscale.sample.tiles import TilePlan, axis_starts, core_bounds, ramp


def _spec(exp, ctx, out, **kw):
    base = dict(export=str(exp), context=str(ctx), out=str(out), seed=7, steps_per_stage=2, overlap=2, batch_size=4)
    base.update(kw)
    return SampleSpec(**base)


def _equal_stores(a, b, exact=True):
    A, B = open_city(a).load(), open_city(b).load()
    for v in schema.TRAFFIC_VAR.values():
        if exact:
            np.testing.assert_array_equal(A[v].values, B[v].values)
        else:
            np.testing.assert_allclose(A[v].values, B[v].values, rtol=2e-5, atol=1e-6)
    SA, SB = open_city(a, group="stages").load(), open_city(b, group="stages").load()
    for v in SA.data_vars:
        if exact:
            np.testing.assert_array_equal(SA[v].values, SB[v].values)
        else:
            np.testing.assert_allclose(SA[v].values, SB[v].values, rtol=2e-5, atol=1e-6)


def test_tiling_covers_and_ramps():
    assert axis_starts(32, 8, 2) == [0, 6, 12, 18, 24]
    assert axis_starts(30, 8, 2)[-1] == 22
    r = ramp(8, 2)
    assert r[0] < r[1] < 1 and r[2:6].tolist() == [1, 1, 1, 1]
    plan = TilePlan.make(32, 16, 48, 8, 24, 2)
    for n in (1, 2, 5, 100):
        shards = plan.shards(n, 8, 8, num_samples=2)
        cover = np.zeros((2, 48, 32, 16), int)
        for s in shards:
            cover[s.sample, s.t, s.y, s.x] += 1
        assert (cover == 1).all()  # shards partition (samples x time x space) exactly


@pytest.mark.parametrize("n,size,overlap", [(64, 16, 4), (30, 8, 2), (32, 8, 0), (34, 8, 3), (16, 16, 0), (40, 12, 6)])
def test_core_bounds_partition_the_axis_inside_the_windows(n, size, overlap):
    starts = axis_starts(n, size, overlap)
    cores = core_bounds(starts, size, n)
    assert len(cores) == len(starts) and cores[0][0] == 0 and cores[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(cores[:-1], cores[1:]))  # contiguous, no gap, no double cover
    for s, (lo, hi) in zip(starts, cores):
        assert s <= lo < hi <= s + size  # every kept pixel lies in its own window
    if all(s % 2 == 0 for s in starts) and size % 2 == 0:
        assert all(lo % 2 == 0 for lo, _ in cores)  # 100 m blocks are never split
    # each pixel's core is (one of) the window(s) with the nearest centre, up to the 1 px shift to an even border
    centres = np.array(starts) + size / 2
    for i, (lo, hi) in enumerate(cores):
        for p in range(lo, hi):
            assert abs(p + 0.5 - centres[i]) <= np.abs(p + 0.5 - centres).min() + 1.0


def test_overlap_not_smaller_than_patch_is_a_config_error():
    from mobscale.config import load_dict
    from mobscale.errors import ConfigError

    with pytest.raises(ConfigError, match=r"overlap 8 px must be smaller than the model's patch of 8 px"):
        TilePlan.make(32, 16, 48, 8, 24, 8)
    # caught at config load already, with the setting to change
    with pytest.raises(ConfigError, match=r"sample.overlap=4 must be smaller than data.windows.patch=4"):
        load_dict({"data": {"windows": {"patch": 4}}})
    assert load_dict({"data": {"windows": {"patch": 4}}, "sample": {"overlap": 0}}).sample.overlap == 0


@pytest.fixture(scope="module")
def reference(tiny_export, tmp_path_factory):
    exp, ctx = tiny_export
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    rep = sample_city(_spec(exp, ctx, out, shards=3), progress=False)
    return out, rep


def test_output_store_valid_consistent_and_piecewise_constant(reference, tiny_export):
    out, rep = reference
    assert rep["status"] == "complete"
    validate_store(out)
    root = open_city(out)
    assert root.attrs["kind"] == "generated" and "model_kind" in json.loads(root.attrs["provenance"])
    assert max(rep["root_consistency_max_rel_error"].values()) < 1e-5
    # anchors (bs, cell) are matched exactly after top-down reconciliation, and were not before
    by_level = {s["level"]: s for s in rep["stages"]}
    assert by_level["bs"]["rel_l1_stage_vs_final"] < 1e-5
    assert by_level["bs"]["rel_l1_stage_vs_children_raw"] > 1e-4
    # every stage output is piecewise constant over whole units (also across tiles) and its time blocks
    st = open_city(out, group="stages").load()
    for k, (lvl, res) in enumerate([("bs", "4h"), ("cell", "1h"), ("grid50", "1h")]):
        d = st[f"stage_{k}"].isel(sample=0).values
        um, n = pyramid.unit_map(root, lvl)
        for u in range(n):
            vals = d[:, um == u]
            assert np.allclose(vals, vals[:, :1], rtol=1e-5, atol=1e-7)
        b = {"4h": 4, "1h": 1}[res]
        blocks = d.reshape(-1, b, *d.shape[1:])
        assert np.allclose(blocks, blocks[:, :1], rtol=1e-5, atol=1e-7)
    assert np.isfinite(st["stage_2"].values).all() and (root.traffic_grid50.values >= 0).all()


def test_unobserved_pixels_stay_empty(reference, tiny_export, tmp_path):
    """A context whose importer marked pixels unobserved (padding, missing squares): the generated city has no
    traffic there, at any stage, and its levels are still exact sums; elsewhere it is the unmasked city."""
    from mobscale.data.store import write_city

    exp, ctx = tiny_export
    c = open_city(ctx).load()
    H, W = c.sizes["y"], c.sizes["x"]
    obs = np.ones((H, W), np.int8)
    obs[:, : W // 4] = 0  # a strip cutting through cells and BS (partly observed units)
    obs[H // 2, W // 2] = 0
    c["observed"] = (("y", "x"), obs)
    ctx2 = write_city(c, tmp_path / "ctx_masked.zarr", users=None)
    out = tmp_path / "masked.zarr"
    rep = sample_city(_spec(exp, ctx2, out, shards=3), progress=False)
    validate_store(out)
    assert max(rep["root_consistency_max_rel_error"].values()) < 1e-5
    root = open_city(out).load()
    g50 = root.traffic_grid50.values
    assert (g50[:, obs == 0] == 0).all() and (g50[:, obs == 1] > 0).mean() > 0.5
    st = open_city(out, group="stages").load()
    for v in st.data_vars:
        assert (st[v].values[:, :, obs == 0] == 0).all(), v
    # the BS anchor is still matched exactly after reconciliation
    assert {s["level"]: s for s in rep["stages"]}["bs"]["rel_l1_stage_vs_final"] < 1e-5
    assert "observed" in root and "observed mask" in root.attrs["levels_built_by"]


def test_rerun_is_a_noop_and_existing_output_refused(reference, tiny_export):
    out, _ = reference
    exp, ctx = tiny_export
    before = os.stat(out / "zarr.json").st_mtime_ns
    assert sample_city(_spec(exp, ctx, out, shards=3), progress=False)["status"] == "already complete"
    assert os.stat(out / "zarr.json").st_mtime_ns == before
    with pytest.raises(OutputExistsError):
        sample_city(_spec(exp, ctx, out, shards=3, seed=8), progress=False)


def test_shard_count_does_not_change_the_city(reference, tiny_export, tmp_path):
    exp, ctx = tiny_export
    out = tmp_path / "one.zarr"
    sample_city(_spec(exp, ctx, out, shards=1), progress=False)
    _equal_stores(out, reference[0], exact=False)


def test_killed_task_resumes_to_the_same_store(reference, tiny_export, tmp_path, monkeypatch):
    """Local executor (submitit, separate processes): kill one task mid-write, re-run, compare."""
    exp, ctx = tiny_export
    out = tmp_path / "killed.zarr"
    monkeypatch.setenv("MOBSCALE_FAULT", "mid-write:1")
    with pytest.raises(MobscaleError, match="re-run the same command") as e:
        sample_city(_spec(exp, ctx, out, shards=3), workers=2, progress=False)
    assert "log" in str(e.value)
    markers = sorted(p.name for p in (_state_dir(out) / "_shards").glob("*.done"))
    assert len(markers) < 3 and not out.exists()
    monkeypatch.delenv("MOBSCALE_FAULT")
    rep = sample_city(_spec(exp, ctx, out, shards=3), workers=2, progress=False)
    assert rep["status"] == "complete"
    _equal_stores(out, reference[0], exact=True)


def test_core_blend_takes_every_pixel_from_one_window(reference, tiny_export, tmp_path):
    """blend="core": the finest stage of the city is, pixel for pixel, the output of the single window whose core
    holds the pixel, generated alone with its own seed (no averaging of independent samples, so no loss of
    spread); every pixel is covered once; the result does not depend on the sharding; levels stay consistent."""
    import torch

    from mobscale.data.windows import ContextWindows
    from mobscale.sample.city import load_for, make_layout, window_seed

    exp, ctx = tiny_export
    spec = _spec(exp, ctx, tmp_path / "core.zarr", shards=3, blend="core")
    rep = sample_city(spec, progress=False)
    validate_store(spec.out)
    assert max(rep["root_consistency_max_rel_error"].values()) < 1e-5
    gen = load_for(spec)
    lay = make_layout(spec, gen)
    assert len(lay.plan.ys) > 2 and len(lay.plan.xs) > 2  # windows really overlap in both directions
    fine = open_city(spec.out, group="stages")[f"stage_{lay.K - 1}"].isel(sample=0).values
    cover = np.zeros(fine.shape, int)
    n_windows = np.zeros(fine.shape, int)
    wins = lay.plan.windows_touching(slice(0, lay.T), slice(0, lay.H), slice(0, lay.W))
    ds = ContextWindows(ctx, wins, lay.P, lay.L)
    for i, w in enumerate(wins):
        batch = torch.utils.data.default_collate([ds[i]])
        g = [torch.Generator().manual_seed(window_seed(spec.seed, 0, w.t0, w.y0, w.x0))]
        alone = gen.generate(batch, g, steps_per_stage=spec.steps_per_stage, eta=spec.eta).numpy()[0, -1]
        core = lay.plan.core_weight(w.y0, w.x0) > 0
        box = fine[w.t0 : w.t0 + lay.L, w.y0 : w.y0 + lay.P, w.x0 : w.x0 + lay.P]
        np.testing.assert_allclose(box[:, core], alone[:, core], rtol=1e-4, atol=1e-6)
        cover[w.t0 : w.t0 + lay.L, w.y0 : w.y0 + lay.P, w.x0 : w.x0 + lay.P] += core
        n_windows[w.t0 : w.t0 + lay.L, w.y0 : w.y0 + lay.P, w.x0 : w.x0 + lay.P] += 1
    assert (cover == 1).all()
    # the ramp blend of the same windows (same seeds): identical where one window covers a pixel, a mean of
    # several samples (so different) where windows overlap
    ramp_fine = open_city(reference[0], group="stages")[f"stage_{lay.K - 1}"].isel(sample=0).values
    np.testing.assert_allclose(ramp_fine[n_windows == 1], fine[n_windows == 1], rtol=1e-5, atol=1e-7)
    assert not np.allclose(ramp_fine[n_windows > 1], fine[n_windows > 1], rtol=1e-3)
    one = tmp_path / "core1.zarr"
    sample_city(_spec(exp, ctx, one, shards=1, blend="core"), progress=False)
    _equal_stores(one, spec.out, exact=False)


def test_unknown_blend_is_refused(tiny_export, tmp_path):
    exp, ctx = tiny_export
    with pytest.raises(MobscaleError, match="blend must be 'ramp' or 'core'"):
        sample_city(_spec(exp, ctx, tmp_path / "x.zarr", blend="median"), progress=False)


def test_several_samples(tiny_export, tmp_path):
    exp, ctx = tiny_export
    out = tmp_path / "k2.zarr"
    sample_city(_spec(exp, ctx, out, shards=2, num_samples=2), progress=False)
    validate_store(out)
    g = open_city(out).traffic_grid50
    assert g.dims == ("sample", "time", "y", "x") and g.sizes["sample"] == 2
    assert not np.array_equal(g.isel(sample=0).values, g.isel(sample=1).values)


def test_refine_from_bs_matches_the_coarse_input(tiny_export, tmp_path):
    """The given BS traffic is hourly; the model's BS stage is at 4 h. By default the output keeps every given hour
    (the stage's 4 h blocks would throw the within-block shape away); with anchor 'stage' only the 4 h totals."""
    exp, ctx = tiny_export
    out = tmp_path / "refined.zarr"
    rep = sample_city(_spec(exp, ctx, out, refine_level="bs"), progress=False)
    validate_store(out)
    assert "given hourly bs traffic" in open_city(out).attrs["levels_built_by"]
    real1 = pyramid.level(open_city(ctx), "bs", "1h").values
    gen1 = pyramid.level(open_city(out), "bs", "1h").values
    np.testing.assert_allclose(gen1, real1[: gen1.shape[0]], rtol=1e-4, atol=1e-6 * float(real1.max()))
    assert rep["anchors"] == ["bs"]
    # the earlier behaviour, kept as an option: 4 h totals exact, the hours inside a block the model's own
    from mobscale.launch import main

    out_s = tmp_path / "refined_stage.zarr"
    assert main(["refine", "--checkpoint", str(exp), "--coarse", str(ctx), "--level", "bs", "--out", str(out_s),
                 "--seed", "7", "--steps-per-stage", "2", "--anchor", "stage"]) == 0
    validate_store(out_s)
    assert json.loads(open_city(out_s).attrs["config"])["sample"]["refine_anchor"] == "stage"
    assert "the bs stage output" in open_city(out_s).attrs["levels_built_by"]
    real4 = pyramid.level(open_city(ctx), "bs", "4h").values
    for o in (out, out_s):
        gen4 = pyramid.level(open_city(o), "bs", "4h").values
        np.testing.assert_allclose(gen4, real4[: gen4.shape[0]], rtol=1e-4)
    gs = pyramid.level(open_city(out_s), "bs", "1h").values
    rel = np.abs(gs - real1[: gs.shape[0]]).sum() / np.abs(real1[: gs.shape[0]]).sum()
    assert rel > 1e-2, f"stage-anchored hours should differ from the given ones (rel L1 {rel:.2e})"


def test_refine_hourly_anchor_with_a_cell_anchor_keeps_the_given_hours_exact(tiny_export, tmp_path):
    """BS given hourly, cells anchored to the model's cell stage (1 h here) as well: the BS hours are met exactly
    (data wins) and each cell gets its stage's share of its BS's given hour."""
    exp, ctx = tiny_export
    out = tmp_path / "refined_bs_cell.zarr"
    rep = sample_city(_spec(exp, ctx, out, refine_level="bs", reconcile_levels=("bs", "cell")), progress=False)
    validate_store(out)
    assert rep["anchors"] == ["bs", "cell"]
    real1 = pyramid.level(open_city(ctx), "bs", "1h").values
    gen1 = pyramid.level(open_city(out), "bs", "1h").values
    T = gen1.shape[0]
    np.testing.assert_allclose(gen1, real1[:T], rtol=1e-4, atol=1e-6 * float(real1.max()))
    root = open_city(out)
    k_cell = [i for i, s in enumerate(rep["stages"]) if s["level"] == "cell"][0]
    assert rep["stages"][k_cell]["resolution"] == "1h"
    pc, cb = root["pixel_cell"].values, root["cell_bs"].values
    st = open_city(out, group="stages")[f"stage_{k_cell}"].isel(sample=0).values.astype(np.float64)
    cell_stage = pyramid.units_sum(st, pc, root.sizes["cell"])  # (T, cells): the stage's own totals
    in_bs = pyramid.units_sum(cell_stage, cb, root.sizes["bs"])[:, cb]
    want = np.where(in_bs > 0, cell_stage / np.where(in_bs > 0, in_bs, 1), 0) * real1[:T][:, cb]
    got = root.traffic_cell.values
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * float(want.max()))
    # with the BS anchor alone the cells keep the finest output's own shares, which differ from the cell stage's
    only_bs = tmp_path / "refined_bs_only.zarr"
    sample_city(_spec(exp, ctx, only_bs, refine_level="bs"), progress=False)
    assert np.abs(open_city(only_bs).traffic_cell.values - want).sum() > 1e-2 * np.abs(want).sum()


def test_reconcile_field_meets_given_hours_and_nests_coarser_cell_blocks():
    """Unit test of the arithmetic on a 2x2-pixel city: 2 BS (columns), 4 cells (pixels), 8 hours; the BS target is
    given hourly, the cell stage at 4 h. Given hours exact; cells exact where the given hours allow it."""
    from mobscale.sample.city import reconcile_field

    rng = np.random.default_rng(0)
    pc = np.array([[0, 1], [2, 3]])
    cb = np.array([0, 0, 1, 1])
    bs_map = cb[pc]
    umaps = {"bs": (bs_map, 2), "cell": (pc, 4)}
    F = rng.uniform(1, 2, (8, 2, 2))
    given = rng.uniform(5, 10, (8, 2))
    cell_stage = rng.uniform(1, 3, (8, 4))  # per-hour totals of a stage at 4 h (only block sums matter)
    stages = [("bs", "4h"), ("cell", "4h"), ("grid50", "1h")]
    bs_stage = rng.uniform(1, 3, (8, 2))
    out = reconcile_field(F, [bs_stage, cell_stage, None], stages, umaps, cb, ["bs"], None, {"bs": given})
    np.testing.assert_allclose(pyramid.units_sum(out, bs_map, 2), given, rtol=1e-12)
    # without `given`, only the stage's 4 h totals hold
    out_s = reconcile_field(F, [bs_stage, cell_stage, None], stages, umaps, cb, ["bs"], None)
    got = pyramid.units_sum(out_s, bs_map, 2).reshape(2, 4, 2).sum(1)
    np.testing.assert_allclose(got, bs_stage.reshape(2, 4, 2).sum(1), rtol=1e-12)
    # a cell anchor at 4 h under the given hourly BS: BS hours still exact, cell 4 h totals nested into them
    out_c = reconcile_field(F, [bs_stage, cell_stage, None], stages, umaps, cb, ["bs", "cell"], None, {"bs": given})
    np.testing.assert_allclose(pyramid.units_sum(out_c, bs_map, 2), given, rtol=1e-12)
    cells4 = pyramid.units_sum(out_c, pc, 4).reshape(2, 4, 4).sum(1)
    bs4 = given.reshape(2, 4, 2).sum(1)
    np.testing.assert_allclose(cells4.reshape(2, 2, 2).sum(2), bs4, rtol=1e-12)  # children sum to the given BS blocks
    # the share of each cell in its BS block follows the cell stage's shares up to the within-block reweighting
    want_share = cell_stage.reshape(2, 4, 4).sum(1).reshape(2, 2, 2)
    want_share = want_share / want_share.sum(2, keepdims=True)
    got_share = cells4.reshape(2, 2, 2) / cells4.reshape(2, 2, 2).sum(2, keepdims=True)
    assert np.abs(got_share - want_share).max() < 0.1


def test_refine_reconciles_to_the_given_level_whatever_the_levels(tiny_export, tmp_path):
    """The refined level is data: it is an anchor even when reconcile_levels does not name it."""
    exp, ctx = tiny_export
    out = tmp_path / "refined_cell.zarr"
    rep = sample_city(_spec(exp, ctx, out, refine_level="cell", reconcile_levels=()), progress=False)
    assert rep["anchors"] == ["cell"]
    real = pyramid.level(open_city(ctx), "cell", "1h").values
    gen = pyramid.level(open_city(out), "cell", "1h").values
    np.testing.assert_allclose(gen, real[: gen.shape[0]], rtol=1e-4, atol=1e-6 * float(real.max()))


def test_no_reconcile_keeps_bottom_up_levels(reference, tiny_export, tmp_path):
    exp, ctx = tiny_export
    out = tmp_path / "noreco.zarr"
    rep = sample_city(_spec(exp, ctx, out, shards=3, reconcile=False), progress=False)
    validate_store(out)
    st = open_city(reference[0], group="stages")["stage_2"].isel(sample=0).values
    np.testing.assert_allclose(open_city(out).traffic_grid50.values, st, rtol=1e-6)
    assert rep["anchors"] == []


def test_reconcile_levels_choose_the_anchors(reference, tiny_export, tmp_path):
    """The default reconciles to the BS stage only; asking for cells too matches the cell stage as well; the stage
    outputs themselves do not depend on it, and the BS totals are the BS stage's either way."""
    ref, rep = reference
    exp, ctx = tiny_export
    assert rep["anchors"] == ["bs"]
    by = {s["level"]: s for s in rep["stages"]}
    assert by["bs"]["rel_l1_stage_vs_final"] < 1e-5 and by["cell"]["rel_l1_stage_vs_final"] > 1e-4
    out = tmp_path / "bs_cell.zarr"
    rep2 = sample_city(_spec(exp, ctx, out, shards=3, reconcile_levels=("bs", "cell")), progress=False)
    validate_store(out)
    assert rep2["anchors"] == ["bs", "cell"]
    by2 = {s["level"]: s for s in rep2["stages"]}
    assert by2["bs"]["rel_l1_stage_vs_final"] < 1e-5
    A, B = open_city(ref).load(), open_city(out).load()
    # a cell anchor is the cell stage's totals rescaled to sum to the BS anchor: the written cell traffic is the
    # cell stage's totals times one factor per (BS, 4 h block of the BS stage); without it, not
    stage_cell = open_city(out, group="stages")["stage_1"].isel(sample=0).values
    cell_tot = pyramid.units_sum(stage_cell.astype(np.float64), np.asarray(A.pixel_cell.values), A.sizes["cell"])
    cb = np.asarray(A.cell_bs.values)

    def factor_spread(written):  # largest relative spread of written / stage total within a (BS, 4 h block)
        ratio = (written / np.where(cell_tot > 0, cell_tot, np.nan)).reshape(-1, 4, len(cb))  # cells the stage left empty: no factor
        spread = [1 - np.nanmin(r) / np.nanmax(r) for t in range(ratio.shape[0]) for b in range(A.sizes["bs"])
                  if np.nanmax(r := ratio[t][:, cb == b], initial=0) > 0]
        return float(np.max(spread))

    assert factor_spread(B.traffic_cell.values.astype(np.float64)) < 1e-4
    assert factor_spread(A.traffic_cell.values.astype(np.float64)) > 1e-2
    np.testing.assert_allclose(pyramid.level(A, "bs", "4h").values, pyramid.level(B, "bs", "4h").values, rtol=1e-5)
    assert not np.allclose(A.traffic_cell.values, B.traffic_cell.values, rtol=1e-3)
    SA, SB = open_city(ref, group="stages").load(), open_city(out, group="stages").load()
    for v in SA.data_vars:
        np.testing.assert_array_equal(SA[v].values, SB[v].values)
    with pytest.raises(MobscaleError, match=r"reconcile levels \['grid100'\] unknown"):
        sample_city(_spec(exp, ctx, tmp_path / "bad.zarr", reconcile_levels=("grid100",)), progress=False)


def test_nested_stages_agree_with_one_another(reference, tiny_export, tmp_path):
    """sample.nest_stages: each window's stages are scaled to the previous stage's unit totals inside the sampler,
    so the stage outputs written for the city agree with one another far better than without (not exactly: units
    cut by window edges are nested per window piece and then averaged over whole units); stage 0 is unchanged."""
    ref, rep = reference
    exp, ctx = tiny_export
    out = tmp_path / "nested.zarr"
    rep2 = sample_city(_spec(exp, ctx, out, shards=3, nest_stages=True), progress=False)
    validate_store(out)
    SA, SB = open_city(ref, group="stages").load(), open_city(out, group="stages").load()
    np.testing.assert_array_equal(SA["stage_0"].values, SB["stage_0"].values)
    assert not np.allclose(SA["stage_2"].values, SB["stage_2"].values, rtol=1e-3)
    raw = lambda r: {s["level"]: s["rel_l1_stage_vs_children_raw"] for s in r["stages"] if s["level"] != "grid50"}  # noqa: E731
    before, after = raw(rep), raw(rep2)
    print("stage vs the finest output's sums, rel. L1, plain / nested:", before, after)
    for lvl in before:
        assert after[lvl] < 0.5 * before[lvl]


def test_refine_anchor_levels_and_given_hourly_totals(tiny_export):
    """Which levels anchor a refinement, and the given totals read for them (grid100 included, in unit-map order)."""
    from mobscale.sample.city import anchor_levels, given_hourly

    exp, ctx = tiny_export
    s4 = [("bs", "1d"), ("cell", "4h"), ("grid100", "2h"), ("grid50", "1h")]
    spec = lambda **kw: SampleSpec(export=str(exp), context=str(ctx), out="unused", **kw)  # noqa: E731
    assert anchor_levels(spec(refine_level="bs"), s4) == ["bs"]
    assert anchor_levels(spec(refine_level="bs", reconcile_levels=("bs", "cell")), s4) == ["bs", "cell"]
    # refining from cells: the BS stage is fixed by the given cells, so it is no anchor (it was one before)
    assert anchor_levels(spec(refine_level="cell"), s4) == ["cell"]
    assert anchor_levels(spec(refine_level="cell", refine_anchor="stage"), s4) == ["bs", "cell"]
    # grid100 is not on the network tree: an anchor only as given data
    assert anchor_levels(spec(refine_level="grid100"), s4) == ["grid100"]
    assert anchor_levels(spec(refine_level="grid100", refine_anchor="stage"), s4) == ["bs"]
    assert anchor_levels(spec(), s4) == ["bs"]
    ds = open_city(ctx)
    g50 = pyramid.level(ds, "grid50", "1h").values.astype(np.float64)
    for lvl in ("bs", "cell", "grid100"):
        um, n = pyramid.unit_map(ds, lvl)
        np.testing.assert_allclose(given_hourly(ctx, lvl), pyramid.units_sum(g50, um, n), rtol=1e-4, atol=1e-3)
