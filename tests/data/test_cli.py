"""CLI round trip: synth -> validate -> inspect -> plot; `mobscale X` == `python -m mobscale.launch X`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


def _run(*args, exe=None):
    cmd = [exe, *args] if exe else [sys.executable, "-m", "mobscale.launch", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_synth_validate_inspect_plot(tmp_path):
    out = tmp_path / "c.zarr"
    r = _run("data", "synth", "--city", "rt", "--seed", "5", "--size", "16x16", "--days", "1", "--users", "4",
             "--pixels-per-bs", "12", "--set", "user_days=1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = _run("data", "validate", str(out))
    assert r.returncode == 0 and "valid" in r.stdout
    r = _run("data", "inspect", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["city"] == "rt" and s["time"]["steps"] == 24 and s["users"]["users"] == 4
    assert set(s["levels"]) == {"bs", "cell", "grid100", "grid50"}
    totals = {d["total"] for d in s["levels"].values()}
    assert max(totals) - min(totals) <= 1e-5 * max(totals)
    assert max(s["consistency_max_rel_error"].values()) < 1e-6
    r = _run("data", "inspect", str(out))
    assert r.returncode == 0 and "traffic levels" in r.stdout
    r = _run("data", "plot", str(out), "--out", str(tmp_path / "fig"))
    assert r.returncode == 0, r.stderr
    pngs = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    assert pngs == ["context.png", "levels_density.png", "network.png", "timeseries.png", "users.png"]
    assert all((tmp_path / "fig" / p).stat().st_size > 10_000 for p in pngs)


def test_console_script_is_the_launcher():
    exe = shutil.which("mobscale")
    if exe is None:
        pytest.skip("console script not installed in this environment")
    a, b = _run("--help", exe=exe), _run("--help")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
