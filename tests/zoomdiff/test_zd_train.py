"""Training ZoomDiff: a tiny run on synthetic tensors learns, and the Task drives the real pipeline on a
synthetic city (prepare -> train -> export -> rebuild -> sample)."""

from __future__ import annotations

import json

import pytest
import torch

from mobscale.config import load_dict
from mobscale.diffusion.drdm import DRDM
from mobscale.errors import CheckpointError
from mobscale.model.registry import build_model
from mobscale.train.zoomdiff_task import DATA_STATE, ZoomDiffTask

from zd_synth import make_batch, segment_spread

TINY = {"kind": "zoomdiff", "width": 16, "blocks": 2, "heads": 2, "context_dim": 8, "tpe_dim": 16, "spe_dim": 8}


def test_tiny_training_run_reduces_the_loss():
    torch.set_num_threads(1)
    cfg = load_dict({"model": TINY, "diffusion": {"steps": 24, "spatial": ["cell", "grid100", "grid50"], "temporal": ["4h", "1h"], "fusion": "mlp"}})
    d = DRDM(cfg.diffusion)
    batch = make_batch(d, B=8, L=8, P=8, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg, {"patch": 8, "hours": 8, "stages": d.plan.pairs, "n_aoi": 8, "n_house_road": 7, "n_poi": 21})

    def held_out_loss() -> float:  # fixed draws of (n, eps), independent of the training stream
        with torch.no_grad():
            return sum(float(d.training_loss(model, batch["x"], batch, torch.Generator().manual_seed(100 + i))[0]) for i in range(6)) / 6

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    before = held_out_loss()
    for _ in range(80):
        loss, _ = d.training_loss(model, batch["x"], batch, g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    after = held_out_loss()
    assert before == pytest.approx(1.0, abs=0.1)  # eps_theta = 0 at init (zero output layer): E[eps^2] = 1
    assert after < 0.8 * before, (before, after)


@pytest.fixture()
def city_cfg():
    return load_dict({
        "seed": 3,
        "data": {"synth": {"height": 16, "width": 16, "days": 2, "users": 0}, "windows": {"patch": 8, "hours": 24, "test_fraction": 0.25}},
        "model": {**TINY, "blocks": 1},
        "diffusion": {"steps": 16, "fusion": "mlp"},
        "train": {"steps": 4, "batch_size": 2, "log_every": 2, "checkpoint_every": 4, "warmup_steps": 1},
    })


def test_task_prepares_shards_and_scores_a_synthetic_city(tmp_path, city_cfg):
    from mobscale.data.windows import CityWindows, fit_normaliser

    task = ZoomDiffTask(city_cfg)
    run = tmp_path / "run"
    run.mkdir()
    task.prepare(run)
    assert (run / "data" / "city.zarr" / "zarr.json").is_file()
    state = json.loads((run / DATA_STATE).read_text())
    assert [tuple(s) for s in state["stages"]] == task.stages == [("bs", "1d"), ("cell", "4h"), ("grid100", "2h"), ("grid50", "1h")]
    # the normaliser is fitted on the train split only
    train = CityWindows(run / "data" / "city.zarr", city_cfg.data.windows, "train", task.stages)
    assert state["normaliser"] == fit_normaliser(train, "log1p", seed=city_cfg.seed).state_dict()
    every = CityWindows(run / "data" / "city.zarr", city_cfg.data.windows, "all", task.stages)
    assert state["normaliser"] != fit_normaliser(every, "log1p", seed=city_cfg.seed).state_dict()

    task.setup(run)
    shards = [task.dataset("train", r, 2) for r in range(2)]
    keys = [{(w.t0, w.y0, w.x0) for w in ds.windows} for ds in shards]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert keys[0] | keys[1] == {(w.t0, w.y0, w.x0) for w in train.windows}

    model = task.build_model()
    batch = torch.utils.data.default_collate([shards[0][i] for i in range(len(shards[0]))])
    loss, metrics = task.loss(model, batch, torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(loss)) and metrics["loss"] == pytest.approx(loss.item())
    extra = task.export_extra()
    assert extra["boundaries"] == [16, 12, 8, 4, 0] and extra["data_info"]["patch"] == 8

    task.prepare(run)  # a resumed run reuses the normalisation
    assert json.loads((run / DATA_STATE).read_text()) == state
    other = load_dict({**city_cfg.model_dump(mode="json"), "diffusion": {"kind": "drdm", "steps": 16, "spatial": ["cell", "grid50"]}})
    with pytest.raises(CheckpointError, match="use a new run folder"):
        ZoomDiffTask(other).prepare(run)


def test_local_training_exports_a_model_that_samples(tmp_path, city_cfg):
    from mobscale.data.windows import CityWindows, Normaliser
    from mobscale.model.export import load_export
    from mobscale.train.loop import train_local

    torch.set_num_threads(1)
    export = train_local(city_cfg, tmp_path / "run")
    exp = load_export(export)
    cfg = exp.config
    model = build_model(cfg, exp.extra["data_info"])
    model.load_state_dict(exp.state_dict)
    model.eval()
    norm = Normaliser.from_state(exp.normalisation)
    process = DRDM(cfg.diffusion)
    test = CityWindows(tmp_path / "run" / "data" / "city.zarr", cfg.data.windows, "test", process.plan.pairs)
    batch = torch.utils.data.default_collate([test[0]])
    res = process.sample(model, batch, (1, 24, 8, 8), generator=torch.Generator().manual_seed(0), units=batch["units"], normaliser=norm, steps_per_stage=2)
    assert sorted(res.endpoints) == [0, 1, 2, 3]
    for s in process.plan.stages:
        out = res.endpoints[s.index]
        assert out.shape == (1, 24, 8, 8) and bool(torch.isfinite(out).all())
        assert segment_spread(out, batch["units"][:, s.level_index], s.block) == 0.0
    traffic = norm.inverse(res.final)
    assert bool((traffic >= 0).all())


def test_profile_prior_is_fitted_on_the_training_split_travels_in_the_export_and_drives_sampling(tmp_path, city_cfg):
    """diffusion.profile_prior=context_profile: prepare fits the reference on the training split (the same rates as
    the context_profile reference trained on its own), the export carries it, and the generator uses it."""
    from mobscale.data.windows import CityWindows
    from mobscale.model.export import load_export
    from mobscale.sample.generators import load_generator
    from mobscale.train.loop import train_local
    from mobscale.train.zoomdiff_task import StatisticalTask

    torch.set_num_threads(1)
    cfg = load_dict({**city_cfg.model_dump(mode="json"), "diffusion": {"kind": "drdm", "steps": 16, "fusion": "mlp", "profile_prior": "context_profile"}})
    export = train_local(cfg, tmp_path / "run")
    store = tmp_path / "run" / "data" / "city.zarr"
    assert (tmp_path / "run" / "profile_prior.pt").is_file()
    sd = load_export(export).state_dict
    ref_cfg = load_dict({"seed": 3, "data": {"store": str(store), "windows": city_cfg.data.windows.model_dump()},
                         "model": {"kind": "context_profile", "noise": "none"}})
    task = StatisticalTask(ref_cfg)
    (tmp_path / "ref").mkdir()
    task.prepare(tmp_path / "ref")
    task.setup(tmp_path / "ref")
    ref = task.fit(tmp_path / "ref", progress=False)
    assert sd["stat_prior.rate"].shape == ref.rate.shape and float(ref.rate.abs().sum()) > 0
    torch.testing.assert_close(sd["stat_prior.rate"], ref.rate)

    gen = load_generator(export)
    test = CityWindows(store, cfg.data.windows, "test", [("grid50", "1h")])
    batch = torch.utils.data.default_collate([{k: v for k, v in test[0].items() if k != "targets"}])
    out = gen.generate(batch, [torch.Generator().manual_seed(0)], steps_per_stage=2)
    assert out.shape == (1, 4, 24, 8, 8) and bool(torch.isfinite(out).all())
    gen.model.stat_prior.rate.mul_(50.0)  # a different prior, same weights and noise: a different city
    out2 = gen.generate(batch, [torch.Generator().manual_seed(0)], steps_per_stage=2)
    assert not torch.allclose(out[:, 0], out2[:, 0])


def test_historical_profile_prior_needs_a_time_split(city_cfg):
    from mobscale.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="profile_prior=historical needs the test places in training"):
        load_dict({**city_cfg.model_dump(mode="json"), "diffusion": {"kind": "drdm", "steps": 16, "profile_prior": "historical"}})
    with pytest.raises((ConfigError, ValueError), match="fusion=none"):
        load_dict({**city_cfg.model_dump(mode="json"), "diffusion": {"kind": "drdm", "steps": 16, "fusion": "none", "profile_prior": "context_profile"}})
