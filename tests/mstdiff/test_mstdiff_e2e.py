"""End to end on a tiny city: MSTDiffTask through the single-process engine -> export -> users sampled into a
schema-valid store; the pretrained VQ-VAE is unchanged by diffusion training (and changed when fine-tuned);
trajectory-only data; determinism; boundary errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mobscale.config import load_dict
from mobscale.data.store import open_city, open_users
from mobscale.data.validate import validate_store
from mobscale.errors import ConfigError, StoreError
from mobscale.model.export import load_export
from mobscale.sample.users import sample_users, sample_users_to_store
from mobscale.train.engine_utils import seed_model_init
from mobscale.train.loop import train_local
from mobscale.train.mstdiff_task import DATA_FILE, MSTDiffTask

from mst_city import tiny_cfg, tiny_city


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return tiny_city(tmp_path_factory.mktemp("city") / "tiny.zarr")


@pytest.fixture(scope="module")
def trained(city, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    cfg = load_dict(tiny_cfg(city))
    export = train_local(cfg, run)
    return run, export


def test_task_contract(city, tmp_path):
    task = MSTDiffTask(load_dict(tiny_cfg(city)))
    task.prepare(tmp_path)
    task.setup(tmp_path)
    ds = task.dataset("train")
    item = ds[0]
    assert item["w0"].shape == (48,) and item["l0"].shape == (48,) and item["l0"].dtype == torch.int64
    assert len(ds) == 18 * 2  # 24 users, 25 % held out -> 18 train users x 2 day-windows
    shards = [task.dataset("train", r, 2) for r in range(2)]
    assert len(shards[0]) + len(shards[1]) == len(ds)
    assert len(task.dataset("test")) == 6 * 2
    model = task.build_model()
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    loss, logs = task.loss(model, batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and {"mse", "kl", "ce"} <= set(logs)
    info = task.export_extra()["data_info"]
    assert info["band_lengths"] == [6, 6, 12, 24] and info["n_locations"] == int(task.state["vocab"].numel())
    norm = task.normalisation()
    assert norm["traffic_transform"] == "log1p" and norm["rates"].numel() == 6
    with pytest.raises(ConfigError, match="split"):
        task.dataset("nope")


def test_train_export_and_frozen_vqvae_unchanged(trained):
    run, export = trained
    ex = load_export(export)
    assert ex.kind == "mstdiff" and ex.extra["step"] == 4
    prep = torch.load(run / DATA_FILE, weights_only=True)
    for k, v in prep["vq_state"].items():
        assert torch.equal(ex.state_dict[f"vqvae.{k}"], v), k
    # while the rest of the network did train (compare with the engine's seeded initialisation)
    task = MSTDiffTask(ex.config)
    task.setup(run)
    seed_model_init(ex.config.seed)
    init = task.build_model().state_dict()
    for k, v in init.items():
        if k.startswith("vqvae."):
            assert torch.equal(v, ex.state_dict[k]), k
    moved = [k for k in init if not k.startswith("vqvae.") and not torch.equal(init[k], ex.state_dict[k])]
    assert len(moved) > 10


def test_fine_tuned_vqvae_ablation_changes_it(city, tmp_path):
    cfg = load_dict(tiny_cfg(city, **{"model.freeze_vqvae": False}))
    ex = load_export(train_local(cfg, tmp_path / "ft"))
    prep = torch.load(tmp_path / "ft" / DATA_FILE, weights_only=True)
    changed = [k for k, v in prep["vq_state"].items() if not torch.equal(ex.state_dict[f"vqvae.{k}"], v)]
    assert changed and any("encoder" in k for k in changed)


def test_sample_users_into_a_valid_store(trained, city, tmp_path):
    _, export = trained
    out = sample_users_to_store(export, city, tmp_path / "gen.zarr", n_users=5, seed=3, progress=False)
    validate_store(out)
    u = open_users(out)
    assert u["traffic"].shape == (5, 48) and u["trajectory"].shape == (5, 48)
    tr = u["traffic"].values
    assert np.isfinite(tr).all() and (tr >= 0).all()
    ids = u["trajectory"].values
    assert ids.min() >= 0 and ids.max() < open_city(city).sizes["bs"]
    assert "kg_head" in u and open_city(out).attrs["kind"] == "generated"
    a = sample_users(export, 5, seed=3, progress=False)
    np.testing.assert_array_equal(a["trajectory"].values, ids)
    np.testing.assert_array_equal(a["traffic"].values, tr)
    b = sample_users(export, 5, seed=4, progress=False)
    assert not np.array_equal(a["trajectory"].values, b["trajectory"].values)
    # the sampling temperature is an override at sampling time, recorded with the output
    c = sample_users(export, 5, seed=3, progress=False, temperature=0.5)
    assert "trajectory temperature=0.5" in c.attrs["provenance"] and "trajectory temperature=1," in a.attrs["provenance"]
    assert not np.array_equal(c["trajectory"].values, ids)
    with pytest.raises(ValueError, match="temperature"):
        sample_users(export, 2, seed=1, progress=False, temperature=0.0)


def test_generated_volumes_stay_within_the_training_maximum(trained):
    """diffusion.traffic_clip_x0 = "max" (default): every clean estimate is capped in the time domain at the
    largest normalised training volume, so no generated half-hour exceeds the largest training one."""
    run, export = trained
    ex = load_export(export)
    n = ex.normalisation
    top = float(np.expm1(n["traffic_z_max"] * n["traffic_sigma"] + n["traffic_mu"]))
    capped = sample_users(export, 40, seed=1, progress=False)["traffic"].values
    free = sample_users(export, 40, seed=1, progress=False, traffic_clip="none")["traffic"].values
    assert capped.max() <= top * (1 + 1e-4)
    assert not np.array_equal(capped, free)
    with pytest.raises(ValueError, match="traffic_clip"):
        sample_users(export, 2, seed=1, progress=False, traffic_clip="data")


def test_sampling_refuses_another_city(trained, tmp_path):
    _, export = trained
    other = tiny_city(tmp_path / "other.zarr", n_bs=10)
    with pytest.raises(StoreError, match="base stations"):
        sample_users_to_store(export, other, tmp_path / "x.zarr", n_users=2, progress=False)


def test_trajectory_only_store(tmp_path, caplog):
    city = tiny_city(tmp_path / "traj.zarr", traffic=False, kg=False)
    with pytest.raises(ConfigError, match="use_traffic"):
        MSTDiffTask(load_dict(tiny_cfg(city))).prepare(tmp_path / "bad")
    cfg = load_dict(tiny_cfg(city, **{"model.use_traffic": False, "model.coord_features": "scaled"}))
    with caplog.at_level(logging.WARNING, logger="mobscale"):
        export = train_local(cfg, tmp_path / "run")
    assert any("no KG triples" in r.message for r in caplog.records)
    # the coordinate features are centred and scaled by one number (raw km swamp the learned embeddings on a
    # country-wide dataset), which keeps the geographic neighbour ranking
    from mobscale.model.kg_embed import knn_neighbours
    from mobscale.train.mstdiff_task import bs_coords_km

    ex = load_export(export)
    feats = ex.state_dict["loc_features"].numpy().astype(np.float64)
    assert np.abs(feats.mean(0)).max() < 1e-5 and abs(feats.std() - 1) < 1e-4
    vocab = np.asarray(ex.normalisation["vocab"])
    km = bs_coords_km(open_city(city))[vocab]
    assert np.abs(km.mean(0)).min() > 0.5  # the raw km are not centred: the check above is not vacuous
    np.testing.assert_allclose(feats, (km - km.mean(0)) / km.std(), rtol=1e-5, atol=1e-6)
    m = cfg.model
    np.testing.assert_array_equal(knn_neighbours(feats, km, m.kg_neighbours, m.kg_max_distance_km),
                                  np.asarray(ex.normalisation["neighbours"]))
    ds = sample_users(export, 3, seed=0, progress=False)
    assert "traffic" not in ds and ds["trajectory"].shape == (3, 48)

    # multiscale coordinate features (the default): the scaled coordinates plus sin/cos at 11 wavelengths
    # (0.5 km ... 512 km); the neighbour graph is the same geographic one
    cfg2 = load_dict(tiny_cfg(city, **{"model.use_traffic": False}))
    assert cfg2.model.coord_features == "multiscale"
    export2 = train_local(cfg2, tmp_path / "run_ms")
    ex2 = load_export(export2)
    f2 = ex2.state_dict["loc_features"].numpy().astype(np.float64)
    assert f2.shape == (len(vocab), 2 + 4 * 11)
    np.testing.assert_allclose(f2[:, :2], feats, rtol=1e-5, atol=1e-6)
    four = f2[:, 2:].reshape(len(vocab), 2, 2, 11)  # (place, sin|cos, y|x, wavelength)
    np.testing.assert_allclose(four[:, 0] ** 2 + four[:, 1] ** 2, 1.0, rtol=1e-5)
    d = km[:, None, :] - km[None, :, :]  # the phase difference of two places at wavelength w is 2 pi d / w
    c = four[:, 1, :, 0][:, None] * four[:, 1, :, 0][None] + four[:, 0, :, 0][:, None] * four[:, 0, :, 0][None]
    np.testing.assert_allclose(c, np.cos(2 * np.pi * d / 0.5), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(ex2.normalisation["neighbours"]), np.asarray(ex.normalisation["neighbours"]))
    assert sample_users(export2, 2, seed=0, progress=False)["trajectory"].shape == (2, 48)


def test_write_users_group_replaces_atomically(trained, tmp_path):
    from mobscale.errors import OutputExistsError
    from mobscale.sample.users import write_users_group

    _, export = trained
    store = tiny_city(tmp_path / "host.zarr")
    gen = sample_users(export, 2, seed=1, progress=False)
    with pytest.raises(OutputExistsError):
        write_users_group(gen, store)
    write_users_group(gen, store, overwrite=True)
    validate_store(store)
    u = open_users(store)
    assert u.sizes["user"] == 2
    np.testing.assert_array_equal(u["trajectory"].values, gen["trajectory"].values)
    assert not [p for p in store.iterdir() if p.name.startswith(".users")]
