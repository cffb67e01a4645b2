"""`specs theory converge` and `specs theory verify` end to end on a small instance."""

import json
import subprocess
import sys

import pytest

from specs_theory.converge import run_converge
from specs_theory.verify import run_verify

REQUIRED = {"experiment", "method", "n", "kl_forward", "kl_reverse", "tv", "objective_gap", "bound"}


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "specs_llm.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for cmd in ("theory", "generate", "run", "report", "synthetic"):
        assert cmd in out.stdout
    out = subprocess.run([sys.executable, "-m", "specs_llm.cli", "theory", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert "converge" in out.stdout and "verify" in out.stdout


def test_converge_writes_records_csv_and_plots(tmp_path, capsys):
    result = run_converge(tmp_path, quick=True, seed=1, instance=dict(K=3, H=2))
    data = json.loads((tmp_path / "converge.json").read_text())
    assert data["asymptotic_constant"] == pytest.approx(result["asymptotic_constant"])
    assert data["asymptotic_constant"] > 0
    experiments = {r["experiment"] for r in data["records"]}
    assert {"E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8", "E10", "gaps", "multibeam"} <= experiments
    for r in data["records"]:
        assert REQUIRED <= set(r)
    e4 = [r for r in data["records"] if r["experiment"] == "E4" and r["method"] == "specs"]
    assert all(r["kl_forward"] <= r["bound"] for r in e4)  # Theorem C1 on this instance
    assert (tmp_path / "converge.csv").read_text().splitlines()[0].startswith("experiment,method,n,tau")
    for name in ("kl_vs_n.png", "objective_gap.png", "threshold.png", "smc_vs_specs.png", "multibeam.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert "asymptotic constant c" in capsys.readouterr().out


def test_verify_passes_and_fails_loudly(tmp_path, monkeypatch, capsys):
    from specs_llm.cli import main

    rc = main(["theory", "verify", "--quick", "--K", "3", "--H", "2", "--seed", "2", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "verify.json").read_text())
    failed = [c["claim"] for c in report["claims"] if c["verdict"] == "FAIL"]
    assert rc == 0 and report["passed"], failed
    assert len(report["claims"]) >= 30
    assert sum(report["counts"].values()) == len(report["claims"])
    for c in report["claims"]:
        assert c["passed"] == (c["verdict"] == "PASS")
        assert (c["needed"] is not None) == (c["verdict"] == "NOT REACHED")
    # A claim that fails makes the command exit non-zero.
    import specs_theory.verify as V

    real = V.check_claims
    monkeypatch.setattr(V, "check_claims", lambda mdp, facts: real(mdp, facts) + [V._claim("X", "broken", "1", "0", False)])
    assert main(["theory", "verify", "--quick", "--K", "2", "--H", "2", "--out", str(tmp_path)]) == 1
    # NOT REACHED alone is not a failure.
    monkeypatch.setattr(V, "check_claims", lambda mdp, facts: real(mdp, facts) + [
        V.Claim("X", "far away", "1", "0", V.NOT_REACHED, "n >= 1e30")])
    assert main(["theory", "verify", "--quick", "--K", "2", "--H", "2", "--out", str(tmp_path)]) == 0
    assert "NOT REACHED" in capsys.readouterr().out


def test_verify_rejects_bad_instances(capsys):
    from specs_llm.cli import main

    assert main(["theory", "verify", "--beta", "0"]) == 2
    assert "--beta" in capsys.readouterr().err
    with pytest.raises(ValueError, match="too many"):
        run_verify(K=9, H=5)
