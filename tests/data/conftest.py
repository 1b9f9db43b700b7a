"""Tiny seeded synthetic stores shared by the data tests (built once per session)."""

from __future__ import annotations

import pytest

from mobscale.config.data import SynthConfig
from mobscale.data.synthetic import synth_city

TINY = dict(city="tiny", seed=3, height=16, width=16, days=2, pixels_per_bs=12, users=6, user_days=2, time_chunk=12)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "tiny.zarr"
    synth_city(SynthConfig(**TINY), path, progress=False)
    return path
