"""ZoomDiffTask under the distributed engine: 2 Ray Train workers with DeepSpeed ZeRO-3 (gloo, CPU), with the
profile prior on. The prior's statistics are buffers fitted once by the driver (prepare): every worker loads the
same ones, ZeRO-3 (which partitions parameters, not buffers) leaves them whole, and the consolidated export carries
them and samples like a local one."""

from __future__ import annotations

import pytest
import torch

from mobscale.config import load_dict
from mobscale.model.export import load_export
from mobscale.train.zoomdiff_task import PROFILE_PRIOR

from tiny_runs import TINY_RUN


@pytest.mark.slow
def test_ray_deepspeed_zero3_two_workers_with_a_profile_prior(tmp_path):
    from mobscale.data.windows import CityWindows
    from mobscale.sample.generators import load_generator
    from mobscale.train.ray_job import train_ray

    raw = {**TINY_RUN, "name": "zd-ray",
           "diffusion": {**TINY_RUN["diffusion"], "profile_prior": "context_profile", "fusion": "mlp"},
           "distributed": {"workers": 2, "deepspeed": {"enabled": True, "zero_stage": 3}}}
    cfg = load_dict(raw)
    export = train_ray(cfg, tmp_path / "run")
    ex = load_export(export)
    assert ex.kind == "zoomdiff" and ex.extra["step"] == cfg.train.steps
    fitted = torch.load(tmp_path / "run" / PROFILE_PRIOR, weights_only=True)
    assert float(fitted["rate"].abs().sum()) > 0
    for k, v in fitted.items():
        assert torch.equal(ex.state_dict[f"stat_prior.{k}"], v), k
    gen = load_generator(export)
    test = CityWindows(tmp_path / "run" / "data" / "city.zarr", cfg.data.windows, "test", [("grid50", "1h")])
    batch = torch.utils.data.default_collate([{k: v for k, v in test[0].items() if k != "targets"}])
    out = gen.generate(batch, [torch.Generator().manual_seed(0)], steps_per_stage=2)
    assert out.shape[:2] == (1, gen.process.K) and bool(torch.isfinite(out).all())
