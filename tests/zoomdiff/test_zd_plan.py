"""Stage plans (Resolution Greediness Preference, paper Sec. IV-D) against the paper's worked examples."""

from __future__ import annotations

import pytest

from mobscale.config.zoomdiff import DRDMConfig
from mobscale.diffusion.drdm import DRDM, make_plan
from mobscale.errors import ConfigError

S3 = ["cell", "grid100", "grid50"]
T4 = ["1d", "4h", "2h", "1h"]


def test_s3t4_fine_greedy_n600_matches_paper_example():
    # Sec. V-C: "under S3T4 with N=600 the boundaries are {450, 300, 150}: (1 day, Cell), (4h, 100m grid),
    # (2h, 50m grid), (1h, 50m grid)"
    plan = make_plan(S3, T4, 600, "fine_greedy")
    assert plan.boundaries == [600, 450, 300, 150, 0]
    assert plan.pairs == [("cell", "1d"), ("grid100", "4h"), ("grid50", "2h"), ("grid50", "1h")]
    assert [(s.lo, s.hi) for s in plan.stages] == [(450, 600), (300, 450), (150, 300), (0, 150)]


# Table IV, S3T2 = (BS, Cell, 100m grid) x (2h, 1h), N = 400
S3T2 = (["bs", "cell", "grid100"], ["2h", "1h"])


def test_s3t2_fine_greedy_table_iv():
    plan = make_plan(*S3T2, 400, "fine_greedy")
    # Table IV Fine Gr.: n=267 (2h, BS), n=133 (1h, Cell), n=0 (1h, 100m grid)
    assert plan.boundaries == [400, 267, 133, 0]
    assert plan.pairs == [("bs", "2h"), ("cell", "1h"), ("grid100", "1h")]


def test_s3t2_coarse_greedy_table_iv():
    plan = make_plan(*S3T2, 400, "coarse_greedy")
    # Table IV Coarse Gr.: n=267 (2h, BS), n=133 (2h, Cell), n=0 (1h, 100m grid)
    assert plan.boundaries == [400, 267, 133, 0]
    assert plan.pairs == [("bs", "2h"), ("cell", "2h"), ("grid100", "1h")]


def test_s3t2_uniform_table_iv():
    plan = make_plan(*S3T2, 400, "uniform")
    # Table IV Uniform has four stages with nodes 267, 200, 133, 0 (spatial thirds and temporal halves). The
    # table labels node 200 "(1h, Cell)"; with the union rule the stage ending there, [200, 267), lies in the
    # first temporal half, so it is (2h, Cell) -- the table's label belongs to the next stage.
    assert plan.boundaries == [400, 267, 200, 133, 0]
    assert plan.pairs == [("bs", "2h"), ("cell", "2h"), ("cell", "1h"), ("grid100", "1h")]


def test_uniform_with_equal_level_counts_has_k_stages():
    plan = make_plan(["bs", "cell", "grid100", "grid50"], T4, 200, "uniform")
    assert plan.boundaries == [200, 150, 100, 50, 0]
    assert plan.pairs == [("bs", "1d"), ("cell", "4h"), ("grid100", "2h"), ("grid50", "1h")]


def test_s3t4_uniform_union_of_boundaries():
    plan = make_plan(S3, T4, 600, "uniform")
    assert plan.boundaries == [600, 450, 400, 300, 200, 150, 0]
    assert plan.pairs == [("cell", "1d"), ("cell", "4h"), ("grid100", "4h"), ("grid100", "2h"), ("grid50", "2h"), ("grid50", "1h")]


@pytest.mark.parametrize("rgp", ["uniform", "fine_greedy", "coarse_greedy"])
def test_plans_cover_every_step_once_and_refine_monotonically(rgp):
    order_s = ["bs", "cell", "grid100", "grid50"]
    order_t = ["1d", "4h", "2h", "1h"]
    plan = make_plan(S3, T4, 97, rgp)
    covered = [plan.stage_of(n) for n in range(97)]
    assert covered == sorted(covered, reverse=True)  # high n = coarse stage
    assert sorted(set(covered)) == list(range(plan.K))
    assert sum(s.steps for s in plan.stages) == 97
    lv = [order_s.index(s.level) for s in plan.stages]
    rs = [order_t.index(s.resolution) for s in plan.stages]
    assert lv == sorted(lv) and rs == sorted(rs)
    assert plan.pairs[0] == ("cell", "1d") and plan.pairs[-1] == ("grid50", "1h")


def test_too_few_steps_per_stage_is_a_config_error():
    # the config check passes (8 >= 2 * 4) but the uniform union of S3 and T4 boundaries leaves 1-step stages
    cfg = DRDMConfig(spatial=S3, temporal=T4, steps=8, rgp="uniform")
    with pytest.raises(ConfigError, match="raise drdm.steps"):
        DRDM(cfg)


def test_last_stage_at_finds_where_a_refinement_starts():
    plan = make_plan(S3, T4, 600, "fine_greedy")
    assert plan.last_stage_at("grid100") == 1
    assert plan.last_stage_at("grid50") == 3
    assert plan.last_stage_at("grid50", "2h") == 2
    with pytest.raises(ConfigError, match="no DRDM stage at level bs"):
        plan.last_stage_at("bs")
