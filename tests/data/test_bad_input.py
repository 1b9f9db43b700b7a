"""Every bad-input case gives one clear message naming the problem and where, a non-zero exit, no traceback,
and nothing half-written."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from mobscale.config.data import SynthConfig
from mobscale.data import synthetic
from mobscale.data.store import ZARR_KW, open_city
from mobscale.data.validate import validate_store
from mobscale.errors import OutputExistsError, StoreError

from tiny_city import TINY


def _rewrite(src, dst, mutate):
    ds = open_city(src).load()
    ds = mutate(ds)
    for v in ds.variables.values():
        v.encoding = {}
    ds.to_zarr(dst, mode="w-", **ZARR_KW)
    return dst


def _set(var, index, value):
    def f(ds):
        a = ds[var].values.copy()
        a[index] = value
        ds[var] = (ds[var].dims, a, ds[var].attrs)
        return ds
    return f


def _coord_set(var, index, value):
    def f(ds):
        a = ds[var].values.copy()
        a[index] = value
        return ds.assign_coords({var: (ds[var].dims, a, ds[var].attrs)})
    return f


CASES = {
    "nan": (_set("traffic_grid50", (2, 3, 4), np.nan), "traffic_grid50: 1 NaN/inf value(s) in this chunk, first at time=2, y=3, x=4"),
    "inf": (_set("traffic_cell", (5, 1), np.inf), "traffic_cell: 1 NaN/inf value(s) in this chunk, first at time=5, cell=1"),
    "negative": (_set("traffic_bs", (7, 0), -3.0), "traffic_bs: negative traffic (-3) at time=7, bs=0"),
    "wrong_dims": (lambda ds: ds.assign(traffic_cell=ds.traffic_cell.transpose("cell", "time")), "traffic_cell: dims ('cell', 'time') but the schema says ('time', 'cell')"),
    "missing_coord": (lambda ds: ds.drop_vars("bs_lat"), "missing coordinate 'bs_lat'"),
    "pixel_no_cell": (_set("pixel_cell", (3, 4), -1), "pixel_cell: 1 pixel(s) in no cell, first at y=3, x=4"),
    "cell_no_bs": (_coord_set("cell_bs", 2, 999), "cell_bs: 1 cell(s) in no BS, first cell=2"),
    "duplicate_time": (lambda ds: ds.assign_coords(time=np.r_[ds.time.values[:5], ds.time.values[4:-1]]), "time: duplicate timestamp"),
    "missing_time": (lambda ds: ds.isel(time=np.r_[0:10, 11:ds.sizes["time"]]), "time: missing timestamps after"),
    "unknown_category": (_set("aoi", (0, 1), 42), "aoi: unknown category 42 at y=0, x=1"),
    "inconsistent_level": (_set("traffic_bs", (1, 0), 1e6), "traffic_bs: differs from the sum of its children at time=1, bs=0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_store_message(tiny_store, tmp_path, case):
    mutate, expected = CASES[case]
    bad = _rewrite(tiny_store, tmp_path / f"{case}.zarr", mutate)
    with pytest.raises(StoreError) as e:
        validate_store(bad)
    assert expected in str(e.value), str(e.value)
    assert str(bad) in str(e.value)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mobscale.launch", *args], capture_output=True, text=True)


def test_cli_bad_store_one_line_no_traceback(tiny_store, tmp_path):
    bad = _rewrite(tiny_store, tmp_path / "neg.zarr", CASES["negative"][0])
    r = _cli("data", "validate", str(bad))
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("mobscale:")]
    assert len(lines) == 1 and "negative traffic" in lines[0]
    assert "Traceback" not in r.stderr
    r = _cli("--debug", "data", "validate", str(bad))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_truncated_and_corrupt_store(tiny_store, tmp_path):
    trunc = tmp_path / "trunc.zarr"
    shutil.copytree(tiny_store, trunc)
    chunk = sorted((trunc / "traffic_grid50" / "c").rglob("*"))
    chunk = [c for c in chunk if c.is_file()][0]
    chunk.write_bytes(chunk.read_bytes()[:40])  # cut a compressed chunk
    with pytest.raises(StoreError, match="traffic_grid50: unreadable data"):
        validate_store(trunc)
    missing = tmp_path / "missing_chunk.zarr"
    shutil.copytree(tiny_store, missing)
    [c for c in sorted((missing / "traffic_cell" / "c").rglob("*")) if c.is_file()][0].unlink()  # unwritten chunk reads as NaN fill
    with pytest.raises(StoreError, match="traffic_cell: .*NaN"):
        validate_store(missing)
    corrupt = tmp_path / "corrupt.zarr"
    shutil.copytree(tiny_store, corrupt)
    (corrupt / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt metadata"):
        validate_store(corrupt)
    r = _cli("data", "inspect", str(corrupt))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_path_not_a_store(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for p, msg in ((tmp_path / "plain", "not a Zarr v3 store"), (tmp_path / "file.txt", "is a file"), (tmp_path / "nope", "no such file")):
        with pytest.raises(StoreError, match=msg):
            validate_store(p)
        r = _cli("data", "validate", str(p))
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


def test_existing_output_untouched(tiny_store, tmp_path):
    out = tmp_path / "exists.zarr"
    shutil.copytree(tiny_store, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(OutputExistsError, match="already exists"):
        synthetic.synth_city(SynthConfig(**TINY), out, progress=False)
    r = _cli("data", "synth", "--size", "16x16", "--days", "1", "--out", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    orig = synthetic.TrafficModel.chunk

    def failing(self, sl):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return orig(self, sl)

    monkeypatch.setattr(synthetic.TrafficModel, "chunk", failing)
    out = tmp_path / "half.zarr"
    with pytest.raises(RuntimeError, match="disk on fire"):
        synthetic.synth_city(SynthConfig(**TINY), out, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary leftovers either


def test_bad_synth_parameters(tmp_path):
    r = _cli("data", "synth", "--size", "15x16", "--out", str(tmp_path / "odd.zarr"))
    assert r.returncode == 2 and "height" in r.stderr and "even" in r.stderr
    r = _cli("data", "synth", "--size", "banana", "--out", str(tmp_path / "x.zarr"))
    assert r.returncode == 2
    assert not any(tmp_path.iterdir())
