"""End to end on a tiny city: train -> export -> sample every window of the held-out split. The trained model must
beat an untrained one, and every intermediate stage output must be piecewise constant at its own level."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mobscale.config import load_dict
from mobscale.data.ops import project
from mobscale.data.windows import HOURS, LEVEL_ORDER, CityWindows
from mobscale.sample.generators import load_generator

from tiny_runs import TINY_RUN


def _held_out_error(export, store) -> tuple[float, dict]:
    gen = load_generator(export)
    cfg = gen.export.config
    ds = CityWindows(store, cfg.data.windows, "test", gen.stages)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    targets = batch.pop("targets")
    out = gen.generate(batch, [torch.Generator().manual_seed(i) for i in range(targets.shape[0])])
    errs = {k: float((out[:, k] - targets[:, k]).abs().mean()) for k in range(out.shape[1])}
    return errs[out.shape[1] - 1], {"out": out, "units": batch["units"], "stages": gen.stages, "errs": errs}


@pytest.mark.slow
def test_trained_beats_untrained_and_stages_are_piecewise_constant(tmp_path, tiny_export):
    from mobscale.train.loop import train_local

    _, store = tiny_export
    run = copy.deepcopy(TINY_RUN)
    run["data"]["store"] = str(store)
    run["model"].update({"width": 16, "blocks": 2, "heads": 2})
    run["train"].update({"steps": 300, "batch_size": 4, "lr": 3e-3, "checkpoint_every": 300, "warmup_steps": 10})
    untrained = train_local(load_dict({**run, "train": {**run["train"], "steps": 1}}), tmp_path / "untrained")
    trained = train_local(load_dict(run), tmp_path / "trained")
    e0, _ = _held_out_error(untrained, store)
    e1, info = _held_out_error(trained, store)
    assert e1 < 0.8 * e0, (e1, e0)
    out, units = info["out"], info["units"]
    for k, (lvl, res) in enumerate(info["stages"]):
        x = out[:, k]
        u = None if lvl == "grid50" else units[:, LEVEL_ORDER.index(lvl)]
        torch.testing.assert_close(project(x, u, HOURS[res]), x, rtol=1e-4, atol=1e-4)
    assert np.isfinite(out.numpy()).all() and (out >= 0).all()
