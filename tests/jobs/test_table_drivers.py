"""The jobs/ table drivers run end to end on a tiny city and score what they say they score.

They are the commands behind results/ (hours at their real budgets); here each runs for a few training steps on a
32x32-pixel, 2-day synthetic city, so the numbers are meaningless but every code path of the driver runs: training
through the single-process engine, whole-city sampling, the stage outputs, the references and the scoring. The
all-zeros reference gives an independent check of the scoring: its MAE must be the mean real traffic of the
held-out region, computed here straight from the Zarr arrays.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from mobscale.data.store import open_city

REPO = Path(__file__).resolve().parents[2]
TINY = ["--size", "32x32", "--days", "2", "--steps", "3", "--steps-per-stage", "2"]


def _run(args: list[str], tmp: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{args[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def _driver():
    spec = importlib.util.spec_from_file_location("zoomdiff_tables", REPO / "jobs" / "zoomdiff_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_zoomdiff_table1_driver_scores_against_an_independent_computation(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    _run(["jobs/zoomdiff_tables.py", "table1", *TINY, "--models", "ZoomDiff", "--samples", "2", "--out", str(out), "--work", str(work)], tmp_path)
    md = (out / "zoomdiff_table1.md").read_text()
    rows = json.loads((out / "zoomdiff_table1.json").read_text())["rows"]
    oracle, oracle_keep = "oracle: the city's generator redrawn (perfect context-conditional model)", "oracle, knowing the hidden per-pixel factors"
    assert set(rows) == {"ZoomDiff", "context_profile", "context_profile (mean, no noise)", "zeros", oracle, oracle_keep}
    assert "| ZoomDiff |" in md and "3 training steps per model" in md and "grid50@1h crps" in md
    for name, r in rows.items():
        for lvl in ("bs@1h", "cell@1h", "grid100@1h", "grid50@1h"):
            assert math.isfinite(r[lvl]["mae"]) and r[lvl]["mae"] >= 0, (name, lvl)

    # the held-out region the driver scores (its own split logic, tested in tests/data), then the mean real traffic
    # of that region read directly from the store's arrays
    store = work / "data" / "city.zarr"
    args = type("A", (), {"set": []})()
    ys, xs, ts = _driver().test_region(args, store, "demo.yaml")
    g50 = np.asarray(zarr.open_group(str(store), mode="r")["traffic_grid50"][:], dtype=np.float64)
    region = g50[ts, ys, xs]
    assert rows["zeros"]["grid50@1h"]["mae"] == pytest.approx(np.abs(region).mean(), rel=1e-5)
    T, H, W = region.shape
    g100 = region.reshape(T, H // 2, 2, W // 2, 2).sum(axis=(2, 4))
    assert rows["zeros"]["grid100@1h"]["mae"] == pytest.approx(np.abs(g100).mean(), rel=1e-5)
    # and a model that generated something is not scored as zeros
    assert rows["ZoomDiff"]["grid50@1h"]["mae"] != pytest.approx(rows["zeros"]["grid50@1h"]["mae"], rel=1e-6)

    # ensemble columns: a noise-free reference's CRPS is its MAE; a generator's two samples differ, so its CRPS is
    # below the mean MAE of its samples; the oracle's sample-mean MAE, recomputed from its two realisation stores
    for lvl in ("bs@1h", "grid50@1h"):
        det = rows["context_profile (mean, no noise)"][lvl]
        assert det["members"] == 2 and det["crps"] == pytest.approx(det["mae"], rel=1e-9)
        assert rows["ZoomDiff"][lvl]["crps"] < rows["ZoomDiff"][lvl]["mae"]
    real_o = [np.asarray(zarr.open_group(str(work / "data" / f"city_oracle_redraw_{r}.zarr"), mode="r")["traffic_grid50"][:],
                         dtype=np.float64)[ts, ys, xs] for r in (1, 2)]
    assert not np.allclose(real_o[0], region) and not np.allclose(real_o[0], real_o[1])
    assert rows[oracle]["grid50@1h"]["mae_of_mean"] == pytest.approx(np.abs((real_o[0] + real_o[1]) / 2 - region).mean(), rel=1e-5)

    # the configs reconcile the finest output to the BS stage output only: jobs/zoomdiff_rescore.py, which rebuilds
    # the written levels of any reconciliation from a store's stages group, gives back the written store and scores
    spec = importlib.util.spec_from_file_location("zoomdiff_rescore", REPO / "jobs" / "zoomdiff_rescore.py")
    rs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rs)
    gen = work / "gen" / "table1" / "ZoomDiff_s2.zarr"
    written, rebuilt, none = open_city(gen).load(), rs.rebuild(gen, ("bs",)), rs.rebuild(gen, ())
    for v in ("traffic_bs", "traffic_cell", "traffic_grid100", "traffic_grid50"):
        np.testing.assert_allclose(rebuilt[v].values, written[v].values, rtol=1e-4, atol=1e-4 * float(written[v].values.max()))
    # without reconciliation the BS totals are the finest output's own sums, which differ from the BS stage's
    assert np.abs(none["traffic_bs"].values - written["traffic_bs"].values).max() > 1e-3 * float(written["traffic_bs"].values.max())
    again = _driver().score(store, rebuilt, (ys, xs, ts))
    for lvl in ("bs@1h", "cell@1h", "grid100@1h", "grid50@1h"):
        assert again[lvl]["crps"] == pytest.approx(rows["ZoomDiff"][lvl]["crps"], rel=1e-4)
        assert again[lvl]["mae"] == pytest.approx(rows["ZoomDiff"][lvl]["mae"], rel=1e-4)


def test_zoomdiff_stage_table_driver_reports_every_stage(tmp_path):
    """Table IV (the same code path as Table III): one row per RGP, every stage scored, consistency reported."""
    out, work = tmp_path / "results", tmp_path / "work"
    _run(["jobs/zoomdiff_tables.py", "table4", *TINY, "--out", str(out), "--work", str(work)], tmp_path)
    rows = json.loads((out / "zoomdiff_table4.json").read_text())
    refs = {k: rows.pop(k) for k in ("reference: context_profile (mean, no noise)", "reference: all zeros")}
    assert list(rows) == ["Uniform", "Coarse Gr.", "Fine Gr."]
    for name, r in rows.items():
        stages = sorted(k for k in r if k.startswith("stage"))
        # S3T2 = 3 spatial x 2 temporal resolutions: every path starts at (2 h, BS) and ends at (1 h, 100 m); how
        # many nodes lie between depends on the RGP
        assert stages[0] == "stage0 (2h, bs)" and stages[-1].endswith("(1h, grid100)"), (name, stages)
        assert 3 <= len(stages) <= 4, (name, stages)
        assert all(math.isfinite(r[s]["mae"]) for s in stages)
        # every stage but the last is compared with the final output
        assert [c["stage"] for c in r["consistency"]] == list(range(len(stages) - 1))
    md = (out / "zoomdiff_table4.md").read_text()
    assert "| Fine Gr. |" in md and "total_ratio" in md
    # the last stage's total ratio: the generated 50 m traffic (the finest output, not reconciled in stage tables)
    # over the real one, summed over the held-out region, straight from the two stores
    store = work / "data" / "city.zarr"
    ys, xs, ts = _driver().test_region(type("A", (), {"set": []})(), store, "demo.yaml")
    real = np.asarray(zarr.open_group(str(store), mode="r")["traffic_grid50"][:], dtype=np.float64)[ts, ys, xs]
    for name in rows:
        gen = np.asarray(open_city(work / "gen" / "table4" / f"{name.replace(' ', '_')}.zarr")["traffic_grid50"].values, dtype=np.float64)
        gen = gen[0] if gen.ndim == 4 else gen
        last = max(k for k in rows[name] if k.startswith("stage"))
        assert rows[name][last]["total_ratio"] == pytest.approx(gen[ts, ys, xs].sum() / real.sum(), rel=1e-4)
    # the references are scored at every stage of every row; all-zeros at (1 h, 100 m) = the mean real 2x2 block
    assert set(refs["reference: all zeros"]) == set(refs["reference: context_profile (mean, no noise)"]) == {k for r in rows.values() for k in r if k.startswith("stage")}
    T, H, W = real.shape
    blocks = real.reshape(T, H // 2, 2, W // 2, 2).sum(axis=(2, 4))
    for key in ("stage3 (1h, grid100)", "stage2 (1h, grid100)"):
        assert refs["reference: all zeros"][key]["mae"] == pytest.approx(blocks.mean(), rel=1e-5)
    assert 0 < refs["reference: context_profile (mean, no noise)"]["stage0 (2h, bs)"]["total_ratio"] < 10


def test_table4_rgp_filter_trains_only_the_chosen_settings(tmp_path):
    """`table4 --rgp`: only those RGP rows, each trained once, in the table's order; the references stay."""
    out, work = tmp_path / "results", tmp_path / "work"
    _run(["jobs/zoomdiff_tables.py", "table4", *TINY, "--no-oracle", "--rgp", "fine_greedy", "coarse_greedy", "--out", str(out), "--work", str(work)], tmp_path)
    rows = json.loads((out / "zoomdiff_table4.json").read_text())
    assert list(rows) == ["Coarse Gr.", "Fine Gr.", "reference: context_profile (mean, no noise)", "reference: all zeros"]
    assert sorted(p.name for p in (work / "table4" / "runs").iterdir()) == ["Coarse_Gr.", "Fine_Gr.", "context_profile_mean"]


def test_table6_driver_refines_hour_by_hour_and_scores_the_daily_anchor_too(tmp_path):
    """Refinement keeps the given hourly BS traffic (BS MAE 0 up to float error); the same samples anchored to the
    model's daily BS stage only (rebuilt from the stored stages) lose the within-day shape (BS MAE > 0); the
    population split is exact at BS by construction."""
    out, work = tmp_path / "results", tmp_path / "work"
    _run(["jobs/zoomdiff_tables.py", "table6", *TINY, "--samples", "2", "--out", str(out), "--work", str(work)], tmp_path)
    rows = json.loads((out / "zoomdiff_table6.json").read_text())
    hourly, daily = "ZoomDiff (zero-shot, from the S4T4 model)", "ZoomDiff (zero-shot), same samples anchored to daily BS totals only (refine --anchor stage)"
    assert {hourly, daily, "ZoomDiff (trained bs -> 50 m)", "population split of BS traffic", "uniform split of BS traffic"} <= set(rows)
    zeros_bs = rows["uniform split of BS traffic"]["bs@1h"]["mae"] + rows[daily]["bs@1h"]["mae"]  # a scale for "0"
    assert rows[hourly]["bs@1h"]["mae"] < 1e-4 * zeros_bs
    assert rows["population split of BS traffic"]["bs@1h"]["mae"] < 1e-4 * zeros_bs
    assert rows[daily]["bs@1h"]["mae"] > 1e-2 * rows["uniform split of BS traffic"]["cell@1h"]["mae"]
    for lvl in ("cell@1h", "grid100@1h", "grid50@1h"):
        assert math.isfinite(rows[hourly][lvl]["crps"]) and rows[hourly][lvl]["crps"] > 0


def test_table7_driver_transfers_across_cities(tmp_path):
    """Table VII for ZoomDiff only (`--models`): trained on B, A -> B zero-shot and few-shot, scored on B's held-out
    district beside B's references; the few-shot run starts from A's weights and trains only the transfer subset."""
    import torch

    from mobscale.model.export import load_export

    out, work = tmp_path / "results", tmp_path / "work"
    _run(["jobs/zoomdiff_tables.py", "table7", *TINY, "--no-oracle", "--models", "ZoomDiff", "--out", str(out), "--work", str(work)], tmp_path)
    rows = json.loads((out / "zoomdiff_table7.json").read_text())
    assert [k for k in rows if not k.startswith("reference")] == ["ZoomDiff: trained on B", "ZoomDiff: A -> B zero-shot", "ZoomDiff: A -> B few-shot"]
    assert all(math.isfinite(r["grid50@1h"]["mae"]) for r in rows.values())
    assert sorted(p.name for p in (work / "table7" / "runs").iterdir())[:3] == ["ZoomDiff_A", "ZoomDiff_A_to_B_few", "ZoomDiff_B"]
    # all-zeros on B: its 50 m MAE is the mean real 50 m traffic of B's held-out region, straight from the store
    store = work / "data" / "cityB.zarr"
    ys, xs, ts = _driver().test_region(type("A", (), {"set": []})(), store, "demo.yaml")
    real = np.asarray(zarr.open_group(str(store), mode="r")["traffic_grid50"][:], dtype=np.float64)[ts, ys, xs]
    assert rows["reference on B: zeros"]["grid50@1h"]["mae"] == pytest.approx(real.mean(), rel=1e-5)
    # few-shot: the parameters outside the transfer subset are A's, unchanged; some inside it moved
    a = load_export(work / "table7" / "runs" / "ZoomDiff_A" / "export").state_dict
    f = load_export(work / "table7" / "runs" / "ZoomDiff_A_to_B_few" / "export").state_dict
    same = {k for k in a if torch.equal(a[k], f[k])}
    assert same and len(same) < len(a)


def test_table3_samples_one_trained_model_per_noise_and_adding(tmp_path):
    """CD/SD acts only in the sampler: Table III trains three models for its five rows, and a row that shares a
    model samples the same weights with its own denoising (else the rows would not compare what they say)."""
    import torch

    from mobscale.model.export import load_export

    out, work = tmp_path / "results", tmp_path / "work"
    _run(["jobs/zoomdiff_tables.py", "table3", *TINY, "--out", str(out), "--work", str(work)], tmp_path)
    rows = json.loads((out / "zoomdiff_table3.json").read_text())
    assert list(rows) == ["CN, CA, CD", "CN, CA, SD", "CN, SA, SD", "SN, SA, CD", "SN, SA, SD",
                          "reference: context_profile (mean, no noise)", "reference: all zeros"]
    runs = work / "table3" / "runs"
    trained = sorted(p.parent.name for p in runs.glob("*/wall.json"))
    assert trained == ["CN_CA_CD", "CN_SA_SD", "SN_SA_CD", "context_profile_mean"]  # three networks, one fitted reference
    for trained, derived, want in (("CN_CA_CD", "CN_CA_SD", "SD"), ("SN_SA_CD", "SN_SA_SD", "SD")):
        a, b = load_export(runs / trained / "export"), load_export(runs / derived / "export")
        assert a.config.diffusion.denoising == "CD" and b.config.diffusion.denoising == want
        assert a.config.model_dump(exclude={"diffusion"}) == b.config.model_dump(exclude={"diffusion"})
        assert a.config.diffusion.model_dump(exclude={"denoising"}) == b.config.diffusion.model_dump(exclude={"denoising"})
        assert a.state_dict.keys() == b.state_dict.keys() and all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
        # same weights, other sampler: the stage-0 outputs agree (stage 0 starts alike), the later ones do not
        r_a, r_b = rows[trained.replace("_", ", ")], rows[derived.replace("_", ", ")]
        assert r_a["stage0 (1d, bs)"]["mae"] == pytest.approx(r_b["stage0 (1d, bs)"]["mae"], rel=1e-6)
        assert r_a["stage3 (1h, grid50)"]["mae"] != pytest.approx(r_b["stage3 (1h, grid50)"]["mae"], rel=1e-6)
    # a setting that changes training cannot be swapped in after it
    with pytest.raises(ValueError, match="change training"):
        _driver().sampled_as(runs / "CN_CA_CD" / "export", tmp_path / "bad", {"noise": "SN"})


def test_table_markdown_bolds_the_best_of_each_column():
    rows = {"a": {"s": {"mae": 2.0, "psnr": 10.0, "total_ratio": 0.7}}, "b": {"s": {"mae": 3.0, "psnr": 12.0, "total_ratio": 1.2}},
            "c": {"s": {"mae": 4.0, "psnr": 11.0, "total_ratio": 2.5}}}
    md = _driver().markdown("t", "h", rows, [("s", "mae"), ("s", "psnr"), ("s", "total_ratio")])
    assert "| a | **2** | 10 | 0.7 |" in md  # lowest MAE
    assert "| b | 3 | **12** | **1.2** |" in md  # highest PSNR; the total ratio nearest 1 (|log 1.2| < |log 0.7|)
    assert "| c | 4 | 11 | 2.5 |" in md


def _fake_movesim_geolife(folder: Path, rows: int = 16, seed: int = 0) -> Path:
    """A MoveSim-format GeoLife folder (real.data, test.data, gps): 20 locations ~220 m apart in Beijing, user-days
    of 48 slots that stay at home, move to one or two other places and come back."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    gps = [(39.90 + 0.002 * (i // 5), 116.30 + 0.0025 * (i % 5)) for i in range(20)]
    (folder / "gps").write_text("".join(f"{a} {b}\n" for a, b in gps))
    for name in ("real.data", "test.data"):
        lines = []
        for _ in range(rows):
            home, away = rng.choice(20, size=2, replace=False)
            day = np.full(48, home)
            a, b = sorted(rng.choice(np.arange(10, 40), size=2, replace=False))
            day[a:b] = away
            day[b] = (away + 1) % 20  # a one-slot transit on the way home
            lines.append(" ".join(map(str, day)))
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_mstdiff_table_driver_runs_trajectory_ablations_on_geolife(tmp_path):
    geo = _fake_movesim_geolife(tmp_path / "geolife")
    out = tmp_path / "mst"
    _run(["jobs/mstdiff_tables.py", "--out", str(out), "--steps", "2", "--variants", "full", "--geolife", str(geo),
          "--geolife-rows", "12", "--geolife-variants", "traj_only,no_ce,sampled_last",
          "--set", "data.synth.users=40", "--set", "data.synth.height=24", "--set", "data.synth.width=24",
          "--set", "model.vq_pretrain_steps=2", "--set", "model.kg_epochs=1"], tmp_path)
    res = json.loads((out / "tables.json").read_text())["geolife"]
    assert res["settings"] == {"rows": 24, "test_rows": 12, "locations": 20, "steps": 2, "visited_bs": res["settings"]["visited_bs"]}
    assert 2 <= res["settings"]["visited_bs"] <= 20
    for mode in ("clean", "movesim"):
        assert set(res[mode]) == {"traj_only", "no_ce", "sampled_last", "markov", "epr", "train_users"}, res[mode].keys()
        assert all(math.isfinite(v) and v >= 0 for r in res[mode].values() for v in r.values())
    runs = out / "geolife_runs"
    # no_ce trains its own model with the CE weight off; sampled_last is a sampling setting on the trajectory-only run
    assert (runs / "traj_only" / "export" / "model.pt").exists() and (runs / "no_ce" / "export" / "model.pt").exists()
    assert not (runs / "sampled_last").exists() and not (runs / "full").exists()
    import yaml

    cfgs = {v: yaml.safe_load((runs / v / "config.yaml").read_text()) for v in ("traj_only", "no_ce")}
    assert cfgs["no_ce"]["model"]["lambda_ce"] == 0.0 and cfgs["traj_only"]["model"]["lambda_ce"] > 0
    assert cfgs["traj_only"]["model"]["use_traffic"] is False
    assert res["clean"]["sampled_last"] != res["clean"]["traj_only"]  # the last-step setting reaches the sampler
    assert "+ no CE term" in (out / "tables.md").read_text()
    # real trajectories only: GeoLife as MoveSim's locations, and the same rows imported onto base stations (the
    # importer's 500 m pseudo-BS) as a --traj-store; no synthetic city, no synthetic runs
    _run(["-m", "mobscale.launch", "data", "import", "movesim", str(geo), "--out", str(tmp_path / "geo_bs.zarr")], tmp_path)
    only = tmp_path / "only"
    _run(["jobs/mstdiff_tables.py", "--out", str(only), "--steps", "2", "--no-synthetic", "--geolife", str(geo), "--geolife-rows", "12",
          "--geolife-variants", "traj_only", "--traj-store", str(tmp_path / "geo_bs.zarr"), "--traj-store-rows", "20"], tmp_path)
    res_only = json.loads((only / "tables.json").read_text())
    assert "synthetic" not in res_only and set(res_only["geolife"]["clean"]) == {"traj_only", "markov", "epr", "train_users"}
    assert not (only / "runs").exists() and not (only / "city.zarr").exists()
    assert res_only["geolife"]["clean"]["markov"] == res["clean"]["markov"]  # same rows, same split, same baseline draw
    imported = res_only["traj_stores"][str(tmp_path / "geo_bs.zarr")]
    n_bs = open_city(tmp_path / "geo_bs.zarr").sizes["bs"]
    assert imported["settings"]["rows"] == 20 and imported["settings"]["test_rows"] == 10 and imported["settings"]["locations"] == n_bs
    assert n_bs < 20  # the 500 m grid merges some of the 20 source locations into one base station
    assert set(imported["clean"]) == {"traj_only", "markov", "epr", "train_users"}
    assert (only / "store_runs" / "geo_bs" / "traj_only" / "export" / "model.pt").exists()
    md = (only / "tables.md").read_text()
    assert "2 training steps per variant, seed 0, real trajectories only" in md and "Table II on " + str(tmp_path / "geo_bs.zarr") in md
    # a traffic ablation has no meaning without traffic: refused before anything runs
    r = subprocess.run([sys.executable, "jobs/mstdiff_tables.py", "--out", str(tmp_path / "bad"), "--geolife-variants", "traj_only,wo_traj"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--geolife-variants: a subset of traj_only," in r.stderr
    r = subprocess.run([sys.executable, "jobs/mstdiff_tables.py", "--out", str(tmp_path / "bad"), "--no-synthetic", "--geolife", str(tmp_path / "nowhere")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--no-synthetic: no GeoLife data at" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_mstdiff_table_driver(tmp_path):
    out = tmp_path / "mst"
    _run(["jobs/mstdiff_tables.py", "--out", str(out), "--steps", "2", "--variants", "full,sampled_last,no_x0_cap,temp05", "--no-geolife",
          "--set", "data.synth.users=40", "--set", "data.synth.height=24", "--set", "data.synth.width=24",
          "--set", "model.vq_pretrain_steps=2", "--set", "model.kg_epochs=1"], tmp_path)
    res = json.loads((out / "tables.json").read_text())["synthetic"]
    for table in ("traffic", "trajectories"):
        assert {"full", "sampled_last", "train_users"} <= set(res[table]), res[table].keys()
        for name, r in res[table].items():
            assert r and all(math.isfinite(v) and v >= 0 for v in r.values()), (table, name, r)
    assert {"markov", "epr"} <= set(res["trajectories"])
    # sampled_last changes sampling only: it reuses the full variant's trained model instead of training its own
    assert (out / "runs" / "full" / "export" / "model.pt").exists()
    assert not any((out / "runs" / v).exists() for v in ("sampled_last", "no_x0_cap", "temp05"))
    assert res["trajectories"]["temp05"] != res["trajectories"]["full"]  # the temperature reaches the sampler
    assert "no_x0_cap" in res["traffic"] and "Table I: traffic" in (out / "tables.md").read_text()
    assert "with --set data.synth.users=40, " in (out / "tables.md").read_text()  # the header names the overrides
    # the check prints the run's users; its training users are the volumes as read (zeros stay zeros, not the
    # float32 round-off of inverted coefficients)
    import torch

    spec = importlib.util.spec_from_file_location("mstdiff_check", REPO / "jobs" / "mstdiff_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rep = mod.main([str(out / "runs" / "full"), "--users", "6", "--probe", "--temperature", "0.8"])
    prep = torch.load(out / "runs" / "full" / "mstdiff_data.pt", weights_only=True)
    train = prep["traffic_train"].numpy()
    assert (train == 0).mean() > 0.05
    assert rep["traffic"]["training users"]["zero_share"] == round(float((train == 0).mean()), 4)
    assert rep["traffic"]["held-out users"]["zero_share"] == round(float((prep["traffic_test"].numpy() == 0).mean()), 4)
    assert rep["traffic"]["generated"]["users"] == 6
    test = prep["trajectory_test"].numpy()
    traj = rep["trajectories"]
    assert traj["held-out users"]["moves"] == round(float((test[:, 1:] != test[:, :-1]).sum(1).mean()), 2)
    assert traj["generated"]["users"] == traj["Markov chain"]["users"] == 6
    # the trajectory summary by hand: stays of 2, 3 and 1 slots at three places 0.01 degree (1.11 km) apart
    latlon = np.array([[0.0, 0.0], [0.0, 0.01], [0.01, 0.01]])
    s = mod.mobility_summary(np.array([[0, 0, 1, 1, 1, 2]]), latlon)
    assert (s["moves"], s["distinct"], s["stay_mean"], s["one_slot_stays"]) == (2.0, 3.0, 2.0, 0.333)
    assert s["km_q10"] == s["km_q50"] == s["km_q90"] == pytest.approx(1.112, abs=1e-3)
    assert (s["far_moves"], s["away_days"]) == (0.0, 0.0)
    # a day with one slot in another city (1 degree of latitude = 111 km away): 2 of its 3 moves are far
    far = mod.mobility_summary(np.array([[0, 0, 3, 0, 1, 1], [0, 0, 0, 0, 0, 0]]), np.vstack([latlon, [[1.0, 0.0]]]))
    assert (far["far_moves"], far["away_days"]) == (0.667, 0.5)
    assert mod.one_slot_stays(np.array([[0, 0, 1, 1, 1, 2], [0, 1, 0, 2, 2, 2]])).tolist() == [
        [False, False, False, False, False, True], [True, True, True, False, False, False]]
    probe = rep["denoising probe (step: accuracy of argmax p(l0 | l_s))"]
    assert 0 in probe and len(probe) >= 4
    # step 0 corrupts little: most tokens are still clean
    assert probe[0]["clean_tokens"] > 0.5 and probe[0]["clean_tokens"] >= probe[max(probe)]["clean_tokens"]
    assert all(0.0 <= v["stays"] <= 1.0 and 0.0 <= v["transits"] <= 1.0 for v in probe.values())
