"""`mobscale eval {traffic, trajectories, users}`: outputs, report, and one-line errors on bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from evalkit import generated_from, stages_group, tiny_city, users_group, write

from mobscale.launch import main

GEOLIFE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "trajectories" / "movesim_geolife"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    real = tiny_city(seed=0, days=2)
    write(real, d / "real.zarr", users=users_group(real, n_users=8, seed=0))
    write(generated_from(real, seed=2, n_samples=2), d / "gen.zarr", stages=stages_group(real, n_samples=2),
          users=users_group(real, n_users=6, seed=4, n_samples=2))
    write(tiny_city(seed=5, days=2), d / "train.zarr", users=users_group(real, n_users=8, seed=9))
    write(tiny_city(seed=0, W=12, days=2), d / "other.zarr")
    return d


def _images_exist(html_path: Path) -> list[str]:
    srcs = re.findall(r"<img src='([^']+)'", html_path.read_text())
    assert srcs, "report has no figures"
    for s in srcs:
        assert (html_path.parent / s).is_file(), s
    return srcs


def test_eval_traffic_writes_metrics_netcdf_and_report(stores, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", "traffic", "--real", str(stores / "real.zarr"), "--synthetic", str(stores / "gen.zarr"),
               "--levels", "bs", "cell", "grid50", "--resolutions", "1d", "1h", "--train", str(stores / "train.zarr"),
               "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["n_samples"] == 2 and res["levels"] == ["bs", "cell", "grid50"] and res["resolutions"] == ["1d", "1h"]
    cell = res["metrics"]["grid50"]["1h"]
    assert len(cell["rmse"]["per_sample"]) == 2 and cell["rmse"]["mean"] > 0 and cell["data_range"] > 0
    assert res["metrics"]["bs"]["1h"]["rv_coarser_real"]["mean"] is None  # the coarsest level has no parent
    assert 0 < res["privacy"]["ratio"] and res["privacy"]["n_synthetic"] == 2 * res["privacy"]["n_holdout"]
    assert res["conventions"]["jsd"]["kind"] == "divergence"
    ds = xr.open_dataset(out / "metrics.nc")
    assert ds["value"].dims == ("metric", "level", "resolution") and ds.sizes["sample"] == 2
    np.testing.assert_allclose(float(ds["value"].sel(metric="rmse", level="grid50", resolution="1h")), cell["rmse"]["mean"])
    ds.close()
    srcs = _images_exist(out / "report.html")
    assert "figures/stages.png" in srcs and "figures/maps.png" in srcs
    assert "traffic metrics at 1h" in capsys.readouterr().out


def test_eval_users(stores, tmp_path):
    out = tmp_path / "users"
    rc = main(["eval", "users", "--real", str(stores / "real.zarr"), "--synthetic", str(stores / "gen.zarr"),
               "--train", str(stores / "train.zarr"), "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "metrics.json").read_text())
    assert set(res["trajectories"]) == {"distance", "radius", "duration", "dailyloc", "grank", "irank"}
    assert set(res["traffic"]) == {"jsd_volume", "jsd_diff", "periodic_rmse"}
    assert res["n_samples"] == 2 and {"traffic", "trajectories"} == set(res["privacy"])
    _images_exist(out / "report.html")


def _movesim_files(d: Path, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_loc = 40
    gps = d / "gps"
    gps.write_text("".join(f"{39.9 + rng.random() * 0.1:.3f} {116.3 + rng.random() * 0.1:.3f}\n" for _ in range(n_loc)))
    for name, n in (("real.data", 30), ("gen.data", 25), ("train.data", 40)):
        rows = np.repeat(rng.integers(0, n_loc, (n, 12)), 4, axis=1)  # stays of 4 slots
        (d / name).write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
    return gps


@pytest.mark.parametrize("mode", ["movesim", "clean"])
def test_eval_trajectories(tmp_path, mode):
    gps = _movesim_files(tmp_path)
    out = tmp_path / f"traj_{mode}"
    rc = main(["eval", "trajectories", "--real", str(tmp_path / "real.data"), "--synthetic", str(tmp_path / "gen.data"),
               "--gps", str(gps), "--mode", mode, "--train", str(tmp_path / "train.data"), "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "metrics.json").read_text())
    for k in ("distance", "radius", "duration", "dailyloc", "grank", "irank"):
        assert isinstance(res[k], float) and 0.0 <= res[k] <= np.log(2) + 1e-12
    assert res["meta"]["mode"] == mode and res["privacy"]["metric"] == "hamming"
    _images_exist(out / "report.html")


@pytest.mark.shared_data
def test_eval_trajectories_golden_through_cli(tmp_path):
    if not (GEOLIFE / "gps").is_file():
        pytest.skip("shared MoveSim GeoLife data absent")
    out = tmp_path / "golden"
    rc = main(["eval", "trajectories", "--real", str(GEOLIFE / "test.data"), "--synthetic", str(GEOLIFE / "val.data"),
               "--gps", str(GEOLIFE / "gps"), "--mode", "movesim", "--no-report", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "metrics.json").read_text())
    got = [res[k] for k in ("distance", "radius", "duration", "dailyloc", "grank", "irank")]
    np.testing.assert_allclose(got, (0.00084, 0.00232, 0.00141, 0.00811, 0.00483, 0.01386), atol=5e-6)
    assert not (out / "report.html").exists()


def test_eval_errors_are_one_line_and_leave_nothing(stores, tmp_path, capsys):
    out = tmp_path / "bad"
    rc = main(["eval", "--real", str(stores / "real.zarr"), "--synthetic", str(stores / "other.zarr"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(r"other\.zarr: coordinate '\w+' differs", err) and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    rc = main(["eval", "--real", str(stores / "real.zarr"), "--synthetic", str(stores / "gen.zarr"), "--levels", "city",
               "--out", str(out)])
    assert rc == 2 and "unknown level 'city'" in capsys.readouterr().err
    rc = main(["eval", "--real", str(tmp_path / "nope.zarr"), "--synthetic", str(stores / "gen.zarr"), "--out", str(out)])
    assert rc == 2 and "no such file" in capsys.readouterr().err
    rc = main(["eval", "trajectories", "--real", "a", "--synthetic", "b", "--out", str(out)])
    assert rc == 2 and "--gps FILE is required" in capsys.readouterr().err
    rc = main(["eval", "users", "--real", str(stores / "real.zarr"), "--synthetic", str(stores / "other.zarr"),
               "--out", str(out)])
    assert rc == 2 and "no 'users' group" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc = main(["eval", "--real", str(stores / "real.zarr"), "--synthetic", str(stores / "gen.zarr"), "--no-report",
               "--out", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err and (out / "keep.txt").is_file()



def test_eval_sums_a_finer_real_store_to_the_generated_step(tmp_path):
    """A model trained at 1 h on a 15-min store writes 1 h: the real traffic is summed to 1 h before scoring, and
    the numbers equal those against a real store written at 1 h in the first place (summed here with numpy)."""
    from mobscale.data import pyramid
    from mobscale.data.store import open_city
    from mobscale.errors import StoreError

    fine = tiny_city(seed=0, days=2, step_minutes=15)
    timed = [v for v in fine.data_vars if "time" in fine[v].dims]
    hourly = fine.drop_vars(timed).isel(time=slice(0, None, 4))
    for v in timed:
        hourly[v] = (fine[v].dims, fine[v].values.astype(np.float64).reshape(-1, 4, *fine[v].shape[1:]).sum(1).astype(np.float32),
                     fine[v].attrs)
    hourly.attrs["time_step_minutes"] = 60
    write(fine, tmp_path / "fine.zarr")
    write(hourly, tmp_path / "hourly.zarr")
    write(generated_from(hourly, seed=3), tmp_path / "gen.zarr")
    import logging

    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # the project logger does not propagate to root
    logging.getLogger("mobscale.eval.metrics").addHandler(handler)  # setup_logging resets the "mobscale" handlers
    res = {}
    try:
        for name in ("fine", "hourly"):
            assert main(["eval", "traffic", "--real", str(tmp_path / f"{name}.zarr"), "--synthetic", str(tmp_path / "gen.zarr"),
                         "--levels", "bs", "grid50", "--resolutions", "1h", "4h", "--no-report", "--out", str(tmp_path / name)]) == 0
            res[name] = json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
    finally:
        logging.getLogger("mobscale.eval.metrics").removeHandler(handler)
    assert any("scoring against the real traffic summed to 60 min" in m for m in said)  # said, not silent
    for lvl in ("bs", "grid50"):
        for r in ("1h", "4h"):
            for m in ("mae", "rmse", "psnr"):
                assert res["fine"][lvl][r][m]["mean"] == pytest.approx(res["hourly"][lvl][r][m]["mean"], rel=1e-5)
    # only whole multiples of the native step can be summed into
    with pytest.raises(StoreError, match="cannot sum a 60-min store into 30-min steps"):
        pyramid.at_time_step(open_city(tmp_path / "hourly.zarr"), 30)
