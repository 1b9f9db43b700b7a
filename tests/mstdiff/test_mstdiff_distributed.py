"""MSTDiffTask under the distributed engine: 2 Ray Train workers with DeepSpeed ZeRO-2 (gloo, CPU). The frozen
VQ-VAE stays out of the optimizer there too, and the export samples like a local one."""

from __future__ import annotations

import pytest
import torch

from mobscale.config import load_dict
from mobscale.model.export import load_export
from mobscale.sample.users import sample_users
from mobscale.train.mstdiff_task import DATA_FILE

from mst_city import tiny_cfg, tiny_city


@pytest.mark.slow
def test_ray_deepspeed_two_workers(tmp_path):
    from mobscale.train.ray_job import train_ray

    city = tiny_city(tmp_path / "tiny.zarr")
    cfg = load_dict(tiny_cfg(city, **{"distributed.workers": 2, "distributed.deepspeed.zero_stage": 2, "name": "mst-ray"}))
    export = train_ray(cfg, tmp_path / "run")
    ex = load_export(export)
    assert ex.kind == "mstdiff" and ex.extra["step"] == cfg.train.steps
    prep = torch.load(tmp_path / "run" / DATA_FILE, weights_only=True)
    for k, v in prep["vq_state"].items():
        assert torch.equal(ex.state_dict[f"vqvae.{k}"], v), k
    ds = sample_users(export, 2, seed=0, progress=False)
    assert ds["trajectory"].shape == (2, 48) and ds["traffic"].shape == (2, 48)
