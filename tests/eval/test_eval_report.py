"""The report builds from a tiny store (one generated sample, stages without a sample dim) and rejects bad stages."""

from __future__ import annotations

import numpy as np
import pytest
from evalkit import generated_from, stages_group, tiny_city
from rich.console import Console

from mobscale.errors import StoreError
from mobscale.eval import report
from mobscale.eval.metrics import finalize_traffic, traffic_statistics


def test_report_from_tiny_store(tmp_path):
    real = tiny_city(seed=1, days=2)
    synth = generated_from(real, seed=3)
    ts = traffic_statistics(real, synth, ("bs", "grid100"), ("4h", "1h"), progress=False)
    ds = finalize_traffic(ts, jsd="mstdiff")
    figs = [
        ("maps", report.fig_maps(real, synth, ts.levels, tmp_path / "maps.png")),
        ("series", report.fig_series(real, synth, ts.levels, tmp_path / "series.png")),
        ("dist", report.fig_distributions(ts, tmp_path / "dist.png")),
        ("stages", report.fig_stages(stages_group(real), real, tmp_path / "stages.png")),
    ]
    for _, p in figs:
        assert p.is_file() and p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG"
    page = report.write_html(tmp_path / "report.html", "t", {"real": "r"}, [("m", report.traffic_table_html(ds))], figs,
                             {"jsd": "x"})
    text = page.read_text()
    assert text.count("<img ") == 4 and "rmse" in text and "grid100" in text
    con = Console(record=True, width=120)
    report.print_traffic_table(ds, con)
    out = con.export_text()
    assert "traffic metrics at 4h" in out and "psnr ↑" in out
    jsd = float(ds["value"].sel(metric="jsd_volume", level="bs", resolution="1h"))
    assert 0 < jsd <= 1.0  # base-2 distance in mstdiff mode


def test_stages_need_level_and_resolution(tmp_path):
    real = tiny_city(seed=1, days=1)
    st = stages_group(real, stages=(("cell", "1h"),))
    st["stage_0"].attrs.pop("level")
    with pytest.raises(StoreError, match="stages/stage_0: missing attribute 'level'"):
        report.fig_stages(st, real, tmp_path / "s.png", "gen.zarr")
    bad = stages_group(real, stages=(("cell", "1h"),)).rename({"stage_0": "other"})
    with pytest.raises(StoreError, match="no stage_k variables"):
        report.fig_stages(bad, real, tmp_path / "s.png")
    flat = stages_group(real, stages=(("cell", "1h"),))
    flat["stage_0"] = flat["stage_0"].isel(y=0)
    with pytest.raises(StoreError, match="expected \\(sample\\?, time, y, x\\)"):
        report.fig_stages(flat, real, tmp_path / "s.png")
    assert np.isfinite(stages_group(real)["stage_0"].values).all()
