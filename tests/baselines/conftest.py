"""A tiny seeded synthetic city shared by the baseline tests (helpers: bl_common.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_city(tmp_path_factory):
    """16x16 px, 4 days (Monday 00:00 on), ~20 BS: small enough that whole-city windows are cheap."""
    from mobscale.config.data import SynthConfig
    from mobscale.data.synthetic import synth_city

    path = tmp_path_factory.mktemp("city") / "tiny.zarr"
    synth_city(SynthConfig(city="tiny", seed=5, height=16, width=16, days=4, pixels_per_bs=12, users=0), path, progress=False)
    return path
