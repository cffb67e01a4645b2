"""Synthetic experiments: the cost model, the Pareto sweep (quick), Figure 2(b) on the MDP and HF backends."""

import json
import math
from pathlib import Path

import pytest

from specs_llm.report import matched_latency_ratio
from specs_llm.synthetic import fig2b, synthetic_pareto
from specs_llm.timing import CostModel, Ledger

ROOT = Path(__file__).resolve().parent.parent


def test_paper_cost_model_numbers():
    cm = CostModel.paper()
    assert cm("draft", "draft_generation", 100) == pytest.approx(100 * 3e-3)
    assert cm("target", "target_generation", 100) == pytest.approx(100 * 14e-3)
    assert cm("target", "target_scoring", 100) == pytest.approx(100 * 1.4e-3)
    assert cm("prm", "prm_scoring", 100) == pytest.approx(100 * 1.4e-3)
    assert cm("loop", "selection", 0) == 0.0
    # decode cost follows the 1.5B/7B parameter ratio
    assert cm.target_decode / cm.draft_decode == pytest.approx(7 / 1.5)
    par = CostModel.paper(parallel_decode=True, tokens_per_block=32)
    assert par("target", "target_generation", 32 * 16) == pytest.approx(32 * 14e-3)
    assert par("target", "target_generation", 0) == 0.0
    assert "1.5B" in cm.describe()["derivation"] and "7.0B" in cm.describe()["derivation"]


def test_cost_model_charges_each_problem_its_own_tokens():
    ledger = Ledger(cost_model=CostModel.paper())
    with ledger.record("target", "target_generation", 0, [0, 1]) as call:
        call.tokens[0] += 10
        call.tokens[1] += 30
    assert ledger.problem_summary(0)["seconds"] == pytest.approx(10 * 14e-3)
    assert ledger.problem_summary(1)["seconds"] == pytest.approx(30 * 14e-3)


def test_matched_latency_ratio():
    front = [(1.0, 0.5), (2.0, 0.7), (4.0, 0.9)]
    assert matched_latency_ratio(front, 4.0, 0.5) == pytest.approx(0.25)
    assert matched_latency_ratio(front, 4.0, 0.8) == pytest.approx(3.0 / 4.0)
    assert matched_latency_ratio(front, 1.0, 0.95) is None
    assert matched_latency_ratio(front, 2.0, 0.1) == pytest.approx(0.5)


def test_synthetic_pareto_quick(tmp_path):
    result = synthetic_pareto(tmp_path, quick=True)
    for name in ("pareto.png", "pareto.json", "pareto.csv"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "pareto.json").read_text())["rows"] == result["rows"]
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"SPECS", "SPECS (idealised)", "target beam search", "draft beam search", "RSD"}
    for r in result["rows"]:
        assert 0 <= r["objective"] <= 1 and r["latency_s"] > 0 and r["latency_parallel_s"] > 0
        assert r["latency_parallel_s"] <= r["latency_s"] + 1e-12
        if r["reward_exact"] is not None:  # the loop agrees with the exact law
            assert abs(r["reward_sim"] - r["reward_exact"]) <= 5 * r["reward_sim_se"] + 1e-9
        if r["method"] in ("target beam search", "draft beam search", "SPECS (idealised)"):
            assert math.isfinite(r["J_exact"])
        else:
            assert r["J_exact"] is None
    beam1 = next(r for r in result["rows"] if r["method"] == "target beam search" and r["n"] == 1)
    # one target sample per block, H blocks of 32 tokens, PRM scoring of each: exact latency
    H, L = result["mdp"]["H"], result["mdp"]["tokens_per_block"]
    assert beam1["latency_s"] == pytest.approx(H * L * (14e-3 + 1.4e-3))
    assert beam1["J_exact"] == pytest.approx(beam1["reward_exact"])  # pi_t itself: KL = 0
    for regime in ("throughput", "parallel"):
        assert {x["beam_n"] for x in result["matched"][regime]["per_beam_n"]} == {1, 4}
    assert "ms per billion parameters" in result["cost_model"]["derivation"]


def test_fig2b_on_the_mdp(tmp_path):
    result = fig2b(tmp_path, quick=True, limit=40)
    assert (tmp_path / "fig2b.png").stat().st_size > 0
    rows = result["rows"]
    assert sum(r["count"] for r in rows) == result["traces"] == 40 * 5
    assert all(r["score_lo"] <= r["score_hi"] for r in rows)
    for r in rows:
        if r["count"]:
            assert 0 <= r["draft_accuracy"] <= 1 and 0 <= r["target_accuracy"] <= 1
    # the PRM is the target's success probability: the target's accuracy rises with the score
    filled = [r for r in rows if r["count"] >= 20]
    assert filled[-1]["target_accuracy"] > filled[0]["target_accuracy"]


def test_fig2b_on_tiny_hf_models(tiny_models, tiny_model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny-models").symlink_to(tiny_model_dir, target_is_directory=True)
    monkeypatch.setenv("SPECS_CACHE", str(cache))
    result = fig2b(tmp_path / "out", ROOT / "recipes" / "tiny" / "compare.yaml", quick=True, limit=2, samples=2)
    assert result["setup"]["backend"] == "hf" and result["outcome"].startswith("graded")
    assert result["traces"] + result["dropped_ended_in_prefix"] == 4
    assert sum(r["count"] for r in result["rows"]) == result["traces"]
    assert (tmp_path / "out" / "fig2b.json").is_file()
