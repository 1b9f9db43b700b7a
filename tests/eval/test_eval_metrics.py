"""Traffic metrics over (metric, level, resolution) against independent numpy / scipy / skimage / hoggorm code."""

from __future__ import annotations

from pathlib import Path

import hoggorm
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from evalkit import generated_from, tiny_city, write
from scipy.stats import entropy
from skimage.metrics import peak_signal_noise_ratio

from mobscale.data import schema
from mobscale.data.store import open_city
from mobscale.errors import InputDataError, StoreError
from mobscale.eval.metrics import TRAFFIC_METRICS, metrics_to_dict, traffic_metrics

MILAN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "milan" / "dgrn_milan_internet_5x5_10min.csv"
MIN = schema.TEMPORAL_RESOLUTIONS


# ---------------------------------------------------------------- independent reference implementation


def _matrix(ds: xr.Dataset, lvl: str, res: str, sample: int | None = None) -> np.ndarray:
    """(T_res, U) by plain numpy: flatten space, sum whole blocks of native steps in float64, round to float32
    (the dtype of every stored / derived level), compute in float64."""
    da = ds[schema.TRAFFIC_VAR[lvl]]
    if sample is not None:
        da = da.isel(sample=sample)
    x = np.asarray(da.values, np.float64).reshape(da.shape[0], -1)
    f = MIN[res] // int(ds.attrs["time_step_minutes"])
    n = (x.shape[0] // f) * f
    return x[:n].reshape(n // f, f, -1).sum(axis=1).astype(np.float32).astype(np.float64)


def _jsd(a, b, n=100):
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    e = np.linspace(lo, hi, n + 1)
    p, q = np.histogram(a, e)[0].astype(float), np.histogram(b, e)[0].astype(float)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    return 0.5 * entropy(p, m) + 0.5 * entropy(q, m)


def _daily(x, P):
    """Mean daily profile minus mean, tiled (all daily harmonics), over whole days."""
    D = x.shape[0] // P
    x = x[: D * P]
    prof = x.reshape(D, P, -1).mean(0)
    return np.tile(prof - x.mean(0), (D, 1))


def _centred_rv(a, b):
    return hoggorm.RVcoeff([a - a.mean(0), b - b.mean(0)])[0, 1]


def reference(real, synth, lvl, res, parent=None, sample=None):
    R, S = _matrix(real, lvl, res), _matrix(synth, lvl, res, sample)
    out = {
        "mae": np.abs(S - R).mean(),
        "rmse": np.sqrt(((S - R) ** 2).mean()),
        "sprmse": np.sqrt(((S.mean(0) - R.mean(0)) ** 2).mean()),
        "psnr": peak_signal_noise_ratio(R, S, data_range=R.max()),
        "rv_real_synth": _centred_rv(R, S),
        "jsd_volume": _jsd(R, S),
        "jsd_diff": _jsd(np.diff(R, axis=0), np.diff(S, axis=0)),
    }
    P = 1440 // MIN[res]
    out["periodic_rmse"] = np.sqrt(((_daily(S, P) - _daily(R, P)) ** 2).mean()) if P > 1 else np.nan
    if parent:
        out["rv_coarser_real"] = _centred_rv(R, _matrix(real, parent, res))
        out["rv_coarser_synth"] = _centred_rv(S, _matrix(synth, parent, res, sample))
    else:
        out["rv_coarser_real"] = out["rv_coarser_synth"] = np.nan
    return out


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def pair():
    real = tiny_city(seed=0, days=3)
    return real, generated_from(real, seed=1)


def test_metrics_match_independent_computation(pair):
    real, synth = pair
    levels, res = ("bs", "cell", "grid100", "grid50"), ("1d", "4h", "1h")
    ds = traffic_metrics(real, synth, levels, res, progress=False)
    assert ds["value"].dims == ("metric", "level", "resolution")
    assert list(ds["metric"].values) == list(TRAFFIC_METRICS)
    for i, lvl in enumerate(levels):
        for r in res:
            ref = reference(real, synth, lvl, r, parent=levels[i - 1] if i else None)
            got = ds["value"].sel(level=lvl, resolution=r)
            for m, v in ref.items():
                g = float(got.sel(metric=m))
                if np.isnan(v):
                    assert np.isnan(g), (m, lvl, r)
                else:
                    assert g == pytest.approx(v, rel=2e-5, abs=1e-9), (m, lvl, r)
            assert float(ds["data_range"].sel(level=lvl, resolution=r)) == pytest.approx(_matrix(real, lvl, r).max(), rel=1e-6)


def test_identical_inputs_score_perfectly(pair):
    real, _ = pair
    ds = traffic_metrics(real, real.copy(), ("cell", "grid50"), ("1h",), progress=False)
    v = ds["value"].sel(resolution="1h")
    assert float(v.sel(metric="mae", level="grid50")) == 0.0
    assert np.isinf(float(v.sel(metric="psnr", level="cell")))
    assert float(v.sel(metric="jsd_volume", level="grid50")) == 0.0
    assert float(v.sel(metric="rv_real_synth", level="cell")) == pytest.approx(1.0)
    assert float(v.sel(metric="periodic_rmse", level="cell")) == pytest.approx(0.0, abs=1e-9)


def test_samples_give_mean_spread_and_per_sample(pair):
    real, _ = pair
    synth = generated_from(real, seed=7, n_samples=3)
    ds = traffic_metrics(real, synth, ("cell",), ("1h",), progress=False)
    per = ds["per_sample"].sel(level="cell", resolution="1h")
    for s in range(3):
        one = traffic_metrics(real, synth.isel(sample=s, drop=True), ("cell",), ("1h",), progress=False)
        np.testing.assert_allclose(per.isel(sample=s).values, one["value"].sel(level="cell", resolution="1h").values,
                                   rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(ds["value"].sel(level="cell", resolution="1h").values, per.mean("sample").values, rtol=1e-12)
    np.testing.assert_allclose(ds["spread"].sel(level="cell", resolution="1h").values, per.std("sample", ddof=1).values,
                               rtol=1e-12, equal_nan=True)
    d = metrics_to_dict(ds)
    assert len(d["cell"]["1h"]["rmse"]["per_sample"]) == 3 and d["cell"]["1h"]["data_range"] > 0


def test_ensemble_crps_and_sample_mean_against_brute_force(pair, tmp_path):
    """ds["ensemble"]: fair CRPS of the S samples (mean_i |x_i - y| - sum_{i != j} |x_i - x_j| / (2 S (S - 1))) and the
    errors of the sample mean, computed here value by value with plain numpy loops; the same through a chunked store
    with several workers; a single sample's CRPS is its MAE."""
    real, _ = pair
    synth = generated_from(real, seed=9, n_samples=3)
    ds = traffic_metrics(real, synth, ("cell", "grid50"), ("1h", "4h"), progress=False)
    for lvl, res in (("cell", "1h"), ("grid50", "4h")):
        y = _matrix(real, lvl, res)
        xs = [_matrix(synth.isel(sample=i, drop=True), lvl, res) for i in range(3)]
        member = sum(np.abs(x - y) for x in xs) / 3
        pair_abs = sum(np.abs(xs[i] - xs[j]) for i in range(3) for j in range(3) if i != j) / (3 * 2)
        e = ds["ensemble"].sel(level=lvl, resolution=res)
        assert float(e.sel(ensemble_metric="crps")) == pytest.approx((member - pair_abs / 2).mean(), rel=1e-9)
        assert float(e.sel(ensemble_metric="mae_of_mean")) == pytest.approx(np.abs(sum(xs) / 3 - y).mean(), rel=1e-9)
        assert float(e.sel(ensemble_metric="rmse_of_mean")) == pytest.approx(np.sqrt(((sum(xs) / 3 - y) ** 2).mean()), rel=1e-9)
        assert float(e.sel(ensemble_metric="members")) == 3
    write(real, tmp_path / "r.zarr", chunks={"time": 5, "y": 2, "x": 4, "y100": 1, "x100": 2, "cell": 1, "bs": 1})
    write(synth, tmp_path / "s.zarr", chunks={"sample": 1, "time": 7, "y": 8, "x": 3, "cell": 3})
    lazy = traffic_metrics(open_city(tmp_path / "r.zarr"), open_city(tmp_path / "s.zarr"), ("cell", "grid50"), ("1h", "4h"),
                           workers=2, max_block_values=100, progress=False)
    np.testing.assert_allclose(lazy["ensemble"].values, ds["ensemble"].values, rtol=1e-10)
    one = traffic_metrics(real, synth.isel(sample=0, drop=True), ("cell",), ("1h",), progress=False)
    assert float(one["ensemble"].sel(ensemble_metric="crps", level="cell", resolution="1h")) == pytest.approx(
        float(one["value"].sel(metric="mae", level="cell", resolution="1h")), rel=1e-12)
    d = metrics_to_dict(ds)
    assert d["cell"]["1h"]["ensemble"]["crps"] == pytest.approx(float(ds["ensemble"].sel(ensemble_metric="crps", level="cell", resolution="1h")))


def test_chunking_and_workers_do_not_change_results(pair, tmp_path):
    real, synth = pair
    small = {"time": 5, "y": 2, "x": 4, "y100": 1, "x100": 2, "cell": 1, "bs": 1}
    write(real, tmp_path / "r.zarr", chunks=small)
    write(synth, tmp_path / "s.zarr", chunks={"time": 7, "y": 8, "x": 3, "cell": 3})
    lazy = traffic_metrics(open_city(tmp_path / "r.zarr"), open_city(tmp_path / "s.zarr"), None, ("1d", "1h"),
                           workers=2, max_block_values=100, progress=False)
    assert open_city(tmp_path / "r.zarr")["traffic_grid50"].chunks is not None
    whole = traffic_metrics(real, synth, None, ("1d", "1h"), progress=False)
    np.testing.assert_allclose(lazy["value"].values, whole["value"].values, rtol=1e-10, equal_nan=True)


def test_rv_skipped_beyond_max_gram_steps(pair):
    real, synth = pair
    ds = traffic_metrics(real, synth, ("bs", "cell"), ("1d", "1h"), max_gram_steps=10, progress=False)
    assert np.isnan(float(ds["value"].sel(metric="rv_real_synth", level="cell", resolution="1h")))
    assert np.isfinite(float(ds["value"].sel(metric="rv_real_synth", level="cell", resolution="1d")))
    assert np.isfinite(float(ds["value"].sel(metric="rmse", level="cell", resolution="1h")))


def _milan_cell_store(values: np.ndarray) -> xr.Dataset:
    """A minimal store holding only the cell level: 25 Milan squares as cells, 10 min steps, float64."""
    T = values.shape[0]
    return xr.Dataset(
        {"traffic_cell": (("time", "cell"), values)},
        coords={"time": pd.date_range("2013-11-01", periods=T, freq="10min"), "cell": np.arange(values.shape[1])},
        attrs={"time_step_minutes": 10},
    )


@pytest.mark.shared_data
def test_milan_golden_values_through_traffic_metrics():
    if not MILAN.is_file():
        pytest.skip("shared Milan data absent")
    a = np.loadtxt(MILAN, delimiter=",")
    ds = traffic_metrics(_milan_cell_store(a[:144]), _milan_cell_store(a[144:288]), ("cell",), ("10min",), progress=False)
    v = ds["value"].sel(level="cell", resolution="10min")
    assert float(v.sel(metric="psnr")) == pytest.approx(26.973102622586783, rel=1e-12)
    assert float(v.sel(metric="rv_real_synth")) == pytest.approx(0.5253504101897306, rel=1e-12)
    assert float(ds["data_range"].sel(level="cell", resolution="10min")) == a[:144].max()


# ---------------------------------------------------------------- bad inputs fail clearly


def test_mismatched_city_fails(pair):
    real, synth = pair
    other = generated_from(tiny_city(seed=0, W=12, days=3))
    with pytest.raises(StoreError, match="coordinate 'x' differs"):
        traffic_metrics(real, other, ("grid50",), ("1h",), progress=False)
    moved = synth.assign(pixel_cell=(("y", "x"), np.roll(synth["pixel_cell"].values, 1)))  # same grid, other cells
    with pytest.raises(StoreError, match="pixel_cell"):
        traffic_metrics(real, moved, ("cell", "grid50"), ("1h",), progress=False)


def test_mismatched_time_or_step_fails(pair):
    real, synth = pair
    shifted = synth.assign_coords(time=synth["time"].values + np.timedelta64(1, "h"))
    with pytest.raises(StoreError, match="coordinate 'time' differs .* index 0"):
        traffic_metrics(real, shifted, ("bs",), ("1h",), progress=False)
    with pytest.raises(StoreError, match="coordinate 'time' differs .*lengths"):
        traffic_metrics(real, synth.isel(time=slice(0, 24)), ("bs",), ("1h",), progress=False)
    other_step = synth.copy()
    other_step.attrs["time_step_minutes"] = 30
    with pytest.raises(StoreError, match="native time step 30 min"):
        traffic_metrics(real, other_step, ("bs",), ("1h",), progress=False)


def test_empty_or_invalid_inputs_fail(pair):
    real, synth = pair
    with pytest.raises(StoreError, match="time axis is empty"):
        traffic_metrics(real, synth.isel(time=slice(0, 0)), ("bs",), ("1h",), progress=False)
    with pytest.raises(StoreError, match="no variable 'traffic_cell'"):
        traffic_metrics(real, synth.drop_vars("traffic_cell"), ("cell",), ("1h",), progress=False)
    with pytest.raises(InputDataError, match="unknown level 'city'"):
        traffic_metrics(real, synth, ("city",), ("1h",), progress=False)
    with pytest.raises(InputDataError, match="resolution 30min"):
        traffic_metrics(real, synth, ("bs",), ("30min",), progress=False)
    bad = synth.copy(deep=True)
    bad["traffic_bs"][3, 1] = np.nan
    with pytest.raises(InputDataError, match="traffic_bs holds NaN"):
        traffic_metrics(real, bad, ("bs",), ("1h",), progress=False)
    with pytest.raises(StoreError, match="expected \\('time', 'bs'\\)"):
        traffic_metrics(generated_from(real, n_samples=2), synth, ("bs",), ("1h",), progress=False)
