"""run_import's contract: options, provenance, config attrs, atomic output, and the CLI path."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from mobscale.data.importers import FORMATS, format_options, run_import
from mobscale.data.importers._common import manifest_row
from mobscale.data.store import open_city
from mobscale.errors import ConfigError, InputDataError, OutputExistsError
from mobscale.launch import IMPORT_FORMATS, main


@pytest.fixture
def cube(tmp_path):
    a = np.random.default_rng(4).gamma(2.0, 1.0, size=(6, 4, 4))
    src = tmp_path / "src" / "cube.npy"
    src.parent.mkdir()
    np.save(src, a)
    return src, a


def test_every_cli_format_has_an_importer():
    assert set(FORMATS) == set(IMPORT_FORMATS)
    for fmt in FORMATS:
        assert "city" in format_options(fmt)


def test_provenance_and_config_attrs(tmp_path, cube):
    src, _ = cube
    (tmp_path / "MANIFEST.md").write_text(
        "| file(s) | source | content |\n|---|---|---|\n"
        "| other/x.npy | repo @ 1 | something else |\n"
        "| src/{cube,cube_ts}.npy | repo @ abc123 : data/cube.npy | a test cube |\n"
    )
    out = run_import("grid-npy", [src], tmp_path / "c.zarr", step_minutes=60, city="cubeville")
    ds = open_city(out)
    prov = json.loads(ds.attrs["provenance"])
    assert len(prov) == 1 and prov[0]["file"] == "cube.npy"
    assert prov[0]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert prov[0]["bytes"] == src.stat().st_size
    assert "repo @ abc123" in prov[0]["manifest"]
    cfg = json.loads(ds.attrs["config"])
    assert cfg["format"] == "grid-npy" and cfg["options"] == {"step_minutes": 60, "city": "cubeville"}
    assert cfg["defaults"]["negative"] == "refuse"
    assert ds.attrs["kind"] == "real" and ds.attrs["city"] == "cubeville"
    assert ds.attrs["crs"].startswith("+proj=eqc")


def test_manifest_row_matching(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "PROVENANCE.md").write_text(
        "| dir | repo |\n|---|---|\n| npd/Mobile.npy (+_ts) | npdiff @ 1 |\n| kst/* | kst @ 2 |\n"
    )
    for rel in ("npd/Mobile.npy", "npd/Mobile_ts.npy", "kst/kg.txt", "none/x.npy"):
        (tmp_path / "ref" / rel).parent.mkdir(exist_ok=True)
        (tmp_path / "ref" / rel).write_bytes(b"x")
    assert "npdiff @ 1" in manifest_row(tmp_path / "ref" / "npd" / "Mobile.npy")
    assert "npdiff @ 1" in manifest_row(tmp_path / "ref" / "npd" / "Mobile_ts.npy")  # same folder fallback
    assert "kst @ 2" in manifest_row(tmp_path / "ref" / "kst" / "kg.txt")
    assert manifest_row(tmp_path / "ref" / "none" / "x.npy") is None


def test_options_and_outputs(tmp_path, cube):
    src, a = cube
    with pytest.raises(ConfigError, match="unknown import format 'csv'"):
        run_import("csv", [src], tmp_path / "x.zarr")
    with pytest.raises(ConfigError, match=r"grid-npy: option\(s\) bs_coords do not apply"):
        run_import("grid-npy", [src], tmp_path / "x.zarr", step_minutes=60, bs_coords="bs.csv")
    with pytest.raises(InputDataError, match="missing.npy: no such file"):
        run_import("grid-npy", [tmp_path / "missing.npy"], tmp_path / "x.zarr")
    # None means "not given", so the CLI can pass every flag
    out = run_import("grid-npy", [src], tmp_path / "x.zarr", step_minutes=60, bs_coords=None, grid=None, split=None)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OutputExistsError, match="already exists"):
        run_import("grid-npy", [src], out, step_minutes=60)
    # a failing import with overwrite leaves the existing store untouched
    with pytest.raises(ConfigError):
        run_import("grid-npy", [src], out, overwrite=True, step_minutes=7)
    assert sorted(p.name for p in out.iterdir()) == before
    run_import("grid-npy", [src], out, overwrite=True, step_minutes=30)
    assert open_city(out).attrs["time_step_minutes"] == 30
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.zarr")]  # no temporaries left behind
    # text values (from a generic --option KEY=VALUE) become the numbers the importer declares
    geo = open_city(run_import("grid-npy", [src], tmp_path / "geo.zarr", step_minutes=60, lat0="30.5", lon0="120", pixel_size_m="100"))
    assert geo.attrs["lat0"] == 30.5 and geo.attrs["pixel_size_m"] == 100.0 and geo.attrs["georeferenced"] is True
    with pytest.raises(ConfigError, match="option lat0='north' is not a float"):
        run_import("grid-npy", [src], tmp_path / "bad.zarr", step_minutes=60, lat0="north")


def test_cli_import(tmp_path, cube, capsys):
    src, a = cube
    rc = main(["data", "import", "grid-npy", str(src), "--step-minutes", "60", "--out", str(tmp_path / "cli.zarr")])
    assert rc == 0
    np.testing.assert_allclose(open_city(tmp_path / "cli.zarr")["traffic_grid50"].values, a, rtol=1e-6)
    capsys.readouterr()
    rc = main(["data", "import", "grid-npy", str(src), "--out", str(tmp_path / "cli2.zarr")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("mobscale: error:") and "--step-minutes" in err[-1]
    assert not (tmp_path / "cli2.zarr").exists()
