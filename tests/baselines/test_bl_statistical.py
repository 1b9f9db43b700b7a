"""Statistical references against hand-computed values on a tiny store; refinement splits; export round trip;
`mobscale refine` / `mobscale sample` through the export-loading path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from mobscale.config import dump
from mobscale.config.baselines import ContextProfileModelConfig, HistoricalModelConfig
from mobscale.data import ops, pyramid
from mobscale.errors import ConfigError, InputDataError
from mobscale.model.export import save_export
from mobscale.model.statistical import StatisticalModel
from mobscale.train.zoomdiff_task import StatisticalTask

from bl_common import run_cfg

TRAIN_HOURS = 72  # split_by=time, test_fraction 0.25 of 4 days: days 0-2 train


@pytest.fixture(scope="module")
def raw(tiny_city):
    """The store's arrays read with plain xarray (independent of mobscale's window code)."""
    ds = xr.open_zarr(tiny_city, consolidated=False).load()
    pc = ds["pixel_cell"].values.astype(np.int64)
    return {
        "g50": ds["traffic_grid50"].values.astype(np.float64),  # (96, 16, 16), hourly, from Monday 00:00
        "pop": ds["population"].values.astype(np.float64),  # (168, 16, 16) by hour of week
        "aoi": ds["aoi"].values.astype(np.int64),
        "bs": ds["traffic_bs"].values.astype(np.float64),
        "cell": ds["traffic_cell"].values.astype(np.float64),
        "pixel_cell": pc,
        "pixel_bs": ds["cell_bs"].values.astype(np.int64)[pc],
    }


_FITTED: dict = {}


def fitted(store, tmp_path_factory, model: dict, split_by: str = "time", patch: int = 8):
    """(cfg, task, fitted model, run dir), cached per configuration."""
    key = (str(store), tuple(sorted(model.items())), split_by, patch)
    if key not in _FITTED:
        cfg = run_cfg(store, model, split_by=split_by, patch=patch)
        task = StatisticalTask(cfg)
        run = tmp_path_factory.mktemp("stat-run")
        task.prepare(run)
        task.setup(run)
        _FITTED[key] = (cfg, task, task.fit(run, progress=False), run)
    return _FITTED[key]


def _batch(store, origins, patch=8, hours=24, coarse=None):
    from mobscale.data.windows import ContextWindows, Window

    ds = ContextWindows(store, [Window(*o) for o in origins], patch, hours, coarse=coarse)
    return torch.utils.data.default_collate([ds[i] for i in range(len(ds))])


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _z(task, x):
    return task.normaliser.forward(torch.as_tensor(x)).numpy()


def test_historical_profile_and_residual_days_match_hand_computation(tiny_city, tmp_path_factory, raw):
    cfg, task, m, _ = fitted(tiny_city, tmp_path_factory, {"kind": "historical"})
    z = _z(task, raw["g50"][:TRAIN_HOURS]).reshape(3, 24, 16, 16)  # (day, hour of day, y, x)
    assert int(m.slot_hours) == 24  # 3 training days < 1 week: hour-of-day slots
    np.testing.assert_allclose(m.profile.numpy(), z.mean(0), atol=1e-5)
    np.testing.assert_allclose(m.residuals.numpy(), z - z.mean(0), atol=1e-5)
    assert m.grid.tolist() == [16, 16]
    with pytest.raises(ConfigError, match="not trained by gradient descent"):
        task.loss(m, {})


def test_historical_lognormal_noise_is_the_residual_law_per_pixel_and_hour(tiny_city, tmp_path_factory, raw):
    _, task, m, _ = fitted(tiny_city, tmp_path_factory, {"kind": "historical", "noise": "lognormal"})
    z = _z(task, raw["g50"][:TRAIN_HOURS]).reshape(3, 24, 16, 16)
    np.testing.assert_allclose(m.resid_mean.numpy(), 0.0, atol=1e-5)  # residuals about the hour-of-day mean
    np.testing.assert_allclose(m.resid_std.numpy(), z.std(0), atol=1e-5)
    assert m.residuals.numel() == 0


def test_historical_generation_resamples_whole_training_days(tiny_city, tmp_path_factory):
    _, task, m, _ = fitted(tiny_city, tmp_path_factory, {"kind": "historical"})
    b = _batch(tiny_city, [(60, 8, 0), (30, 0, 8)])  # window 0: 12:00 on day 2 -> 11:00 on day 3
    out = m.generate(b, _gens(5, 6), task.normaliser)
    assert out.shape == (2, 24, 8, 8)
    prof = m.profile[:, 8:16, 0:8]
    hod = (12 + torch.arange(24)) % 24
    cands = [task.normaliser.inverse(prof[hod] + m.residuals[d, :, 8:16, 0:8][hod]) for d in range(3)]
    for block in (slice(0, 12), slice(12, 24)):  # each calendar day of the window is one whole training day
        hits = [d for d in range(3) if torch.allclose(out[0, block], cands[d][block], rtol=1e-5, atol=1e-6)]
        assert hits, block
    # seeded, and window 0's draw does not depend on its batch companion
    again = m.generate(_batch(tiny_city, [(60, 8, 0), (12, 8, 8)]), _gens(5, 9), task.normaliser)
    assert torch.equal(out[0], again[0]) and not torch.equal(out[1], again[1])
    with pytest.raises(InputDataError, match="outside the 16x16 grid"):
        b2 = _batch(tiny_city, [(0, 8, 8)])
        b2["origin"][0, 1] = 12
        m.generate(b2, _gens(0), task.normaliser)


def test_historical_without_noise_is_the_profile(tiny_city, tmp_path_factory):
    _, task, m, _ = fitted(tiny_city, tmp_path_factory, {"kind": "historical", "noise": "none"})
    out = m.generate(_batch(tiny_city, [(72, 0, 8)]), _gens(0), task.normaliser)
    torch.testing.assert_close(out[0], task.normaliser.inverse(m.profile[:, 0:8, 8:16]))


def test_historical_needs_the_same_places_in_training(tiny_city):
    with pytest.raises(ConfigError, match="split_by=time"):
        run_cfg(tiny_city, {"kind": "historical"}, split_by="band")
    with pytest.raises(ConfigError, match="mean_share"):
        run_cfg(tiny_city, {"kind": "context_profile", "refine": "mean_share"}, split_by="patch")


def _train_mask(task) -> np.ndarray:
    from mobscale.data.windows import CityWindows

    cw = CityWindows(task.store, task.cfg.data.windows, "all", task.stages)
    mask = np.ones((16, 16), bool)
    for y0, x0 in cw.test_region()["patches"]:
        mask[y0 : y0 + 8, x0 : x0 + 8] = False
    return mask


def test_context_profile_rate_is_traffic_per_person_by_aoi_and_hour(tiny_city, tmp_path_factory, raw):
    _, task, m, _ = fitted(tiny_city, tmp_path_factory, {"kind": "context_profile"}, split_by="band")
    mask = _train_mask(task)
    assert 0 < mask.sum() < 256
    g, pop, aoi = raw["g50"], raw["pop"], raw["aoi"]
    num, den = np.zeros((8, 24)), np.zeros((8, 24))
    for t in range(96):  # split_by=band: every hour, training pixels only
        for a in range(8):
            sel = mask & (aoi == a)
            num[a, t % 24] += g[t][sel].sum()
            den[a, t % 24] += pop[t % 168][sel].sum()
    pooled = num.sum(0) / den.sum(0)
    want = np.where(den > 0, num / np.where(den > 0, den, 1), pooled)
    assert int(m.slot_hours) == 24
    np.testing.assert_allclose(m.rate.numpy(), want, rtol=1e-5)
    # the log-normal residual law of one (AoI type, hour) cell, by hand
    a, h = int(np.bincount(aoi[mask]).argmax()), 14
    sel = mask & (aoi == a)
    r = np.concatenate([_z(task, g[t][sel]) - _z(task, want[a, h] * pop[t % 168][sel]) for t in range(h, 96, 24)])
    assert m.resid_mean[a, h].item() == pytest.approx(r.mean(), abs=1e-4)
    assert m.resid_std[a, h].item() == pytest.approx(r.std(), abs=1e-4)


def test_context_profile_generates_rate_times_population_anywhere(tiny_city, tmp_path_factory):
    _, task, m, _ = fitted(tiny_city, tmp_path_factory, {"kind": "context_profile", "noise": "none"}, split_by="band")
    b = _batch(tiny_city, [(12, 0, 0), (40, 8, 8)])
    out = m.generate(b, _gens(0, 1), task.normaliser)
    hod = b["hour"] % 24
    want = m.rate[b["context"]["aoi"].unsqueeze(1), hod.view(2, 24, 1, 1)] * b["context"]["population"]
    torch.testing.assert_close(out, want)
    b["context"]["aoi"][0, 0, 0] = 99
    with pytest.raises(InputDataError, match="outside \\[0, 8\\)"):
        m.generate(b, _gens(0, 1), task.normaliser)


def _with_refine(m: StatisticalModel, method: str) -> StatisticalModel:
    cls = HistoricalModelConfig if m.kind == "historical" else ContextProfileModelConfig
    other = StatisticalModel(cls(refine=method))
    other.load_state_dict(m.state_dict())
    return other


@pytest.mark.parametrize("method", ["uniform", "population", "mean_share", "zeros"])
def test_refinement_splits_keep_each_units_patch_total(tiny_city, tmp_path_factory, method):
    _, _, m, _ = fitted(tiny_city, tmp_path_factory, {"kind": "historical"})
    m = _with_refine(m, method)
    for k, lvl in enumerate(("bs", "cell", "grid100")):
        b = _batch(tiny_city, [(24, 0, 0), (36, 8, 8)], coarse=(lvl, "1h"))
        coarse = b.pop("coarse")
        fine = m.split(k, coarse, b)
        assert fine.shape == coarse.shape and (fine >= 0).all()
        if method == "zeros":
            assert torch.count_nonzero(fine) == 0
        elif method != "mean_share":  # patch-local: each unit's part in the patch keeps coarse x its pixels
            torch.testing.assert_close(ops.segment_mean(fine, b["units"][:, k]), coarse, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="refinement starts"):
        m.split(3, coarse, b)


def test_whole_city_splits_are_exact_disaggregations(tiny_city, tmp_path_factory, raw):
    """On a city-sized window: mean_share and population splits reproduce the unit totals exactly, with the
    hand-computed pixel weights."""
    _, _, m, _ = fitted(tiny_city, tmp_path_factory, {"kind": "historical"})
    b = _batch(tiny_city, [(24, 0, 0)], patch=16, coarse=("bs", "1h"))
    coarse = b.pop("coarse")
    pb, n_bs = raw["pixel_bs"], raw["bs"].shape[1]
    bs = raw["bs"][24:48]  # (24, n_bs)
    # mean share: pixel share of its BS's training total
    tot = raw["g50"][:TRAIN_HOURS].sum(0)
    share = tot / pyramid.units_sum(tot, pb, n_bs)[pb]
    fine = _with_refine(m, "mean_share").split(0, coarse, b)[0].double().numpy()
    np.testing.assert_allclose(fine, bs[:, pb] * share, rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(pyramid.units_sum(fine, pb, n_bs), bs, rtol=2e-5)
    # population-weighted disaggregation (the public ZoomDiff code's fine-grid "ground truth")
    pop = raw["pop"][24:48]  # Monday 24:00 = hour of week 24
    want = bs[:, pb] * pop / pyramid.units_sum(pop, pb, n_bs)[:, pb]
    fine = _with_refine(m, "population").split(0, coarse, b)[0].double().numpy()
    np.testing.assert_allclose(fine, want, rtol=2e-5, atol=1e-9)
    # cells split by mean share sum to the cell traffic
    b = _batch(tiny_city, [(24, 0, 0)], patch=16, coarse=("cell", "1h"))
    fine = _with_refine(m, "mean_share").split(1, b.pop("coarse"), b)[0].double().numpy()
    np.testing.assert_allclose(pyramid.units_sum(fine, raw["pixel_cell"], raw["cell"].shape[1]), raw["cell"][24:48], rtol=2e-5)


def _export(cfg, task, model, run):
    return save_export(run / "export", kind=cfg.model.kind, config_yaml=dump(cfg), state_dict=model.state_dict(),
                       normalisation=task.normalisation(), extra=task.export_extra())


def test_export_round_trip_and_generator(tiny_city, tmp_path_factory):
    from mobscale.sample.generators import load_generator

    cfg, task, m, run = fitted(tiny_city, tmp_path_factory, {"kind": "historical"})
    path = _export(cfg, task, m, run)
    payload = torch.load(path / "model.pt", weights_only=True)
    assert payload["kind"] == "historical" and payload["state_dict"]["residuals"].shape == (3, 24, 16, 16)
    gen = load_generator(path)
    assert gen.stages == [("bs", "1h"), ("cell", "1h"), ("grid100", "1h"), ("grid50", "1h")]
    assert (gen.patch, gen.hours) == (8, 24)
    for k, v in m.state_dict().items():
        assert torch.equal(gen.model.state_dict()[k], v)
    b = _batch(tiny_city, [(24, 0, 0), (48, 8, 8)])
    out = gen.generate(b, _gens(3, 4))
    assert out.shape == (2, 4, 24, 8, 8)
    torch.testing.assert_close(out[:, 3], m.generate(b, _gens(3, 4), task.normaliser))
    torch.testing.assert_close(out[:, 0], ops.segment_mean(out[:, 3], b["units"][:, 0]))  # BS stage = unit means
    # refinement through the generator: stage k is the given coarse density, finer stages its split
    rb = _batch(tiny_city, [(24, 0, 0), (48, 8, 8)], coarse=("cell", "1h"))
    coarse = rb.pop("coarse")
    ref = gen.generate(rb, _gens(3, 4), refine=(1, coarse))
    torch.testing.assert_close(ref[:, 1], coarse)
    torch.testing.assert_close(ref[:, 3], m.split(1, coarse, rb))  # historical default: mean_share
    torch.testing.assert_close(ref[:, 0], ops.segment_mean(coarse, rb["units"][:, 0]))


def test_mobscale_refine_population_weights_bs_traffic(tiny_city, tmp_path_factory, raw, tmp_path):
    """`mobscale refine --level bs` with the population split on a city-sized patch: the 50 m output is the
    exact population-weighted disaggregation of the store's BS traffic."""
    from mobscale.launch import main

    cfg, task, m, run = fitted(tiny_city, tmp_path_factory, {"kind": "context_profile"}, split_by="time", patch=16)
    exp = _export(cfg, task, m, run)
    out = tmp_path / "refined.zarr"
    assert main(["refine", "--checkpoint", str(exp), "--coarse", str(tiny_city), "--level", "bs", "--out", str(out)]) == 0
    got = xr.open_zarr(out, consolidated=False)["traffic_grid50"].values.astype(np.float64)
    T = got.shape[0]
    assert T == 96
    pb, n_bs = raw["pixel_bs"], raw["bs"].shape[1]
    pop = raw["pop"][np.arange(T) % 168]
    want = raw["bs"][:T][:, pb] * pop / pyramid.units_sum(pop, pb, n_bs)[:, pb]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_mobscale_sample_writes_the_historical_profile(tiny_city, tmp_path_factory, tmp_path):
    from mobscale.launch import main

    cfg, task, m, run = fitted(tiny_city, tmp_path_factory, {"kind": "historical", "noise": "none"})
    exp = _export(cfg, task, m, run)
    out = tmp_path / "hist.zarr"
    # no reconciliation: every window yields the profile, so the blended 50 m field must be the profile itself
    assert main(["sample", "--checkpoint", str(exp), "--context", str(tiny_city), "--out", str(out), "--no-reconcile"]) == 0
    got = xr.open_zarr(out, consolidated=False)["traffic_grid50"].values
    want = task.normaliser.inverse(m.profile[torch.arange(got.shape[0]) % 24]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_mobscale_sample_reconcile_levels_flag(tiny_city, tmp_path_factory, tmp_path, capsys):
    """--reconcile-levels picks the stage outputs the 50 m output is scaled to; an unknown level is refused with the
    choices, before anything is written."""
    import json

    from mobscale.launch import main
    from mobscale.sample.generators import load_generator

    cfg, task, m, run = fitted(tiny_city, tmp_path_factory, {"kind": "historical", "noise": "none"})
    exp = _export(cfg, task, m, run)
    out = tmp_path / "hist.zarr"
    assert main(["sample", "--checkpoint", str(exp), "--context", str(tiny_city), "--out", str(out), "--reconcile-levels", "grid100"]) == 2
    assert "--reconcile-levels 'grid100': give a comma-separated subset of bs,cell" in capsys.readouterr().err
    assert not out.exists()
    have = [lvl for lvl, _ in load_generator(str(exp)).stages[:-1]]
    assert "bs" in have and "cell" in have
    assert main(["sample", "--checkpoint", str(exp), "--context", str(tiny_city), "--out", str(out), "--reconcile-levels", "bs,cell"]) == 0
    assert json.loads((tmp_path / "hist.zarr.sampling" / "reconcile.json").read_text())["anchors"] == ["bs", "cell"]
    # --nest-stages reaches the run's spec (and so its hash: a nested run never resumes a plain one)
    spec = lambda name: json.loads((tmp_path / f"{name}.zarr.sampling" / "_mobscale_sample.json").read_text())["spec"]  # noqa: E731
    assert spec("hist")["nest_stages"] is False
    assert main(["sample", "--checkpoint", str(exp), "--context", str(tiny_city), "--out", str(tmp_path / "nest.zarr"), "--nest-stages"]) == 0
    assert spec("nest")["nest_stages"] is True
