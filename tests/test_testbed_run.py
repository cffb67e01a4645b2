"""A small run on the shipped testbed models through the runner and the report (HF backend).

20 held-out problems, one seed: the plumbing end to end on real trained
models, and the shipped target measurably more accurate than the shipped
draft (the full comparison is docs/testbed.md)."""

from __future__ import annotations

import json

import pytest

RECIPE = """
name: testbed-ci
datasets: [{name: testbed, limit: 20}]
backend:
  kind: hf
  options: {dtype: float32, device: cpu}
  draft: testbed:draft
  target: testbed:target
  prm: {path: testbed:prm, convention: value_head}
defaults: {k: 1, max_steps: 8, max_step_tokens: 32, sampling_temperature: 0.7}
methods:
  - {name: target_single, config: {strategy: bon, generator: target, n: 1, max_step_tokens: 160}}
  - {name: draft_single, config: {strategy: bon, generator: draft, n: 1, max_step_tokens: 160}}
  - {name: specs, config: {strategy: specs, n: 4, temperature: 0.2, reward_weight: 10.0, threshold: 7.0}}
  - {name: target_beam, config: {strategy: beam, generator: target, n: 2}}
seeds: [0]
batch_size: 20
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from specs_llm.runner import run_recipe

    root = tmp_path_factory.mktemp("testbed_run")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE)
    return run_recipe(recipe, root / "run", progress=False)


def test_every_record_is_graded(run):
    records = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 * 20
    assert all(r["status"] == "ok" and r["grade_status"] in ("ok", "no_answer") for r in records), \
        {(r["status"], r["grade_status"]) for r in records}
    specs = [r for r in records if r["method"] == "specs"]
    assert all(r["steps_by_source"]["draft"] + r["steps_by_source"]["target"] == r["steps"] for r in specs)
    assert sum(r["steps_by_source"]["draft"] for r in specs) > 0  # SPECS kept draft steps


def test_target_beats_draft_and_search_works(run):
    summary = json.loads((run / "summary.json").read_text())
    acc = {row["method"]: row["accuracy"] for row in summary["groups"]}
    assert acc["target_single"] >= acc["draft_single"] + 0.3, acc
    assert acc["specs"] > 0.5 and acc["target_beam"] > 0.5, acc


def test_report_draws_every_method(run, tmp_path):
    from specs_llm.report import make_report

    paths = [str(p) for p in make_report([str(run)], str(tmp_path / "report"))]
    assert any(p.endswith(".png") for p in paths)
    table = next(p for p in paths if p.endswith(".md"))
    text = open(table).read()
    for method in ("target_single", "draft_single", "specs", "target_beam"):
        assert method in text
