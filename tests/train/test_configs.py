"""Every run config shipped in configs/ loads and validates (a renamed or removed field fails here, not in a
user's job), and composed configs resolve what they say they set."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobscale.config import load

ROOT = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(ROOT.glob("*.yaml"))


def test_configs_found():
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path):
    cfg = load(path)
    assert cfg.name


def test_mstdiff_3k_is_the_demo_with_three_options():
    demo, opt = load(ROOT / "mstdiff-demo.yaml"), load(ROOT / "mstdiff-3k.yaml")
    assert (opt.model.step_layers, opt.diffusion.rate_start, opt.diffusion.trajectory_temperature, opt.train.steps) == (1, 0.001, 0.75, 3000)
    assert (demo.model.step_layers, demo.diffusion.rate_start, demo.diffusion.trajectory_temperature) == (0, 0.01, 1.0)
    # everything else is the demo's (same city, users, network size)
    assert opt.data == demo.data and opt.model.width == demo.model.width and opt.model.users == demo.model.users


def test_mstdiff_3k_w64_differs_from_mstdiff_3k_in_width_only():
    base, wide = load(ROOT / "mstdiff-3k.yaml").model_dump(), load(ROOT / "mstdiff-3k-w64.yaml").model_dump()
    assert (base["model"]["width"], wide["model"]["width"]) == (32, 64)
    assert (base.pop("name"), wide.pop("name")) == ("mstdiff-3k", "mstdiff-3k-w64")
    base["model"].pop("width"), wide["model"].pop("width")
    assert wide == base
