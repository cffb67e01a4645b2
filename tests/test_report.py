"""Reports from results files: plots, tables, summaries, the Pareto front."""

import csv
import json
import shutil

import pytest
import yaml

from specs_llm.report import load_records, make_report, pareto_front, summarize
from specs_llm.runner import run_recipe


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small MDP run: SPECS, beam search (two n) and RSD, two seeds."""
    tmp = tmp_path_factory.mktemp("report")
    data = {
        "datasets": [{"name": "synthetic", "limit": 6}],
        "backend": {"kind": "mdp", "mdp": {"K": 3, "H": 3, "tokens_per_block": 8}},
        "defaults": {"sampling_temperature": 1.0},
        "methods": [
            {"name": "specs", "config": {"strategy": "specs", "n": 4}},
            {"name": "target_beam", "config": {"strategy": "beam"}, "sweep": {"n": [2, 4]}},
            {"name": "rsd", "config": {"strategy": "rsd", "n": 1, "threshold": 0.6}},
        ],
        "seeds": [0, 1],
        "batch_size": 6,
    }
    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    return run_recipe(recipe, tmp / "run", progress=False)


def test_make_report_draws_plots_and_tables(run_dir, tmp_path):
    paths = make_report([run_dir], tmp_path / "report")
    names = sorted(p.name for p in paths)
    assert names == sorted(["accuracy_latency.png", "latency_breakdown.png", "deferral_by_step.png",
                            "table.md", "table.csv", "summary.json"])
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    rows = list(csv.DictReader(open(tmp_path / "report" / "table.csv")))
    assert sorted((r["method"], r["setting"]) for r in rows) == [
        ("rsd", ""), ("specs", ""), ("target_beam", "n=2"), ("target_beam", "n=4")]
    for r in rows:
        assert r["seeds"] == "2" and r["ok"] == "12" and r["errors"] == "0"
        assert 0 <= float(r["accuracy"]) <= 1 and float(r["latency_mean_s"]) > 0
    md = (tmp_path / "report" / "table.md").read_text()
    assert md.startswith("| dataset | method |") and md.split("\n## ")[0].count("\n| synthetic |") == 4


def test_summary_aggregates_over_seeds(run_dir):
    records = load_records(run_dir)
    summary = summarize(records)
    assert summary["records"] == 48 and summary["errors"] == 0
    g = next(g for g in summary["groups"] if g["label"] == "target_beam (n=4)")
    mine = [r for r in records if r["label"] == "target_beam (n=4)"]
    assert g["accuracy"] == pytest.approx(sum(r["score"] for r in mine) / len(mine))
    per_seed = [sum(r["score"] for r in mine if r["seed"] == s) / 6 for s in (0, 1)]
    assert g["accuracy_by_seed"] == pytest.approx(dict(zip((0, 1), per_seed)))
    assert g["accuracy_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)
    assert sum(g["phase_seconds"].values()) == pytest.approx(g["latency_mean"])
    assert g["phase_calls"]["target_generation"] == pytest.approx(
        sum(r["phases"]["target_generation"]["calls"] for r in mine) / len(mine))
    assert g["phase_calls"]["draft_generation"] == 0 and g["steps"] == pytest.approx(3.0)
    assert g["deferral_rate"] == 0 and g["deferral_by_step"] == [0.0, 0.0, 0.0]
    rsd = next(g for g in summary["groups"] if g["method"] == "rsd")
    assert len(rsd["deferral_by_step"]) == 3


def test_report_reads_only_complete_records_and_never_writes_results(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    results = copy / "results.jsonl"
    results.write_bytes(results.read_bytes() + b'{"key": "partial')
    before = results.read_bytes()
    assert len(load_records(copy)) == 48
    (copy / "summary.json").unlink()
    (copy / "recipe.yaml").unlink()
    make_report([copy], tmp_path / "report")  # needs nothing but results.jsonl
    assert results.read_bytes() == before


def test_same_settings_in_two_directories_are_kept_apart(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    make_report([run_dir, other], tmp_path / "report")
    rows = list(csv.DictReader(open(tmp_path / "report" / "table.csv")))
    assert len(rows) == 8
    assert {r["method"].split("]")[0] + "]" for r in rows} == {"[run]", "[other]"}
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert {g["source"] for g in summary["groups"]} == {"run", "other"}


def test_pareto_front():
    pts = [(1.0, 0.5), (2.0, 0.7), (1.5, 0.4), (3.0, 0.7), (0.5, 0.1), (4.0, 0.9)]
    assert pareto_front(pts) == [4, 0, 1, 5]
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # equal points dominate neither


def test_missing_results_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.jsonl"):
        make_report([tmp_path], tmp_path / "out")


def test_matched_latency_and_accuracy_on_a_front():
    from specs_llm.report import accuracy_at_latency, front_points, matched_latency_ratio

    front = front_points([(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (4.0, 0.9)])
    assert front == [(1.0, 0.5), (2.0, 0.7), (4.0, 0.9)]  # (3, 0.6) is dominated
    assert accuracy_at_latency(front, 0.5) is None  # faster than any point
    assert accuracy_at_latency(front, 3.0) == pytest.approx(0.8)
    assert accuracy_at_latency(front, 9.0) == pytest.approx(0.9)
    assert matched_latency_ratio(front, 6.0, 0.8) == pytest.approx(3.0 / 6.0)
    assert matched_latency_ratio(front, 6.0, 0.95) is None


def test_report_compares_specs_with_target_beam_search(run_dir, tmp_path):
    make_report([run_dir], tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    beams = [g for g in summary["groups"] if g["method"] == "target_beam"]
    assert [m["beam"] for m in summary["matched"]] == [g["label"] for g in sorted(beams, key=lambda g: g["latency_mean"])]
    for m in summary["matched"]:
        if m["specs_accuracy_at_matched_latency"] is not None:
            assert m["accuracy_difference"] == pytest.approx(m["specs_accuracy_at_matched_latency"] - m["beam_accuracy"])
    assert "## SPECS vs target beam search" in (tmp_path / "r" / "table.md").read_text()


def test_report_command_writes_beside_a_single_run(run_dir, tmp_path, capsys, monkeypatch):
    """`specs report DIR` without --out writes DIR/report (two runs' reports never
    overwrite each other in the current directory) and says where."""
    import shutil

    from specs_llm.cli import main

    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["report", str(copy)]) == 0
    assert (copy / "report" / "table.md").is_file() and not (tmp_path / "out").exists()
    assert f"wrote the report to {copy / 'report'}" in capsys.readouterr().err
    assert main(["report", str(copy), str(run_dir), "--out", str(tmp_path / "both")]) == 0
    assert (tmp_path / "both" / "summary.json").is_file()
