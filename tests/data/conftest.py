"""Tiny seeded synthetic stores shared by the data tests (built once per session)."""

from __future__ import annotations

import pytest

from mobscale.config.data import SynthConfig
from mobscale.data.synthetic import synth_city

from tiny_city import TINY


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "tiny.zarr"
    synth_city(SynthConfig(**TINY), path, progress=False)
    return path
