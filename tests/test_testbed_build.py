"""`specs testbed build` in miniature: the same code path, a few training steps, deterministic."""

from __future__ import annotations

import json

import pytest

from specs_llm.testbed.build import BuildSpec, build


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("testbed_build")
    return build(root / "a", BuildSpec.miniature(), progress=False), root


def test_miniature_build_writes_loadable_models(mini):
    from specs_llm.backends.base import State
    from specs_llm.backends.hf import HFLanguageModel, HFRewardModel

    out, _ = mini
    meta = json.loads((out / "build.json").read_text())
    assert set(meta["files"]) == {f"{r}/model.safetensors" for r in ("draft", "target", "prm")}
    for name in ("target", "draft", "prm"):
        losses = meta["losses"][name]
        assert losses["last_10_mean"] < losses["first"], (name, losses)  # training moves the loss down
    assert meta["losses"]["prm"]["first"] == pytest.approx(0.6931, abs=1e-3)  # a zero head: reward 0.5
    assert meta["prm_data"]["reference"] == BuildSpec.miniature().prm_problems
    # the draft's stopping rule ran: checks at steps 2 and 4 (a few-step draft solves nothing, so no stop)
    assert [c["step"] for c in meta["draft_checks"]] == [2, 4]
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in meta["draft_checks"])
    state = State("Compute 3 + 4.")
    (steps,) = HFLanguageModel(out / "target").generate([state], 2, stop=["\n\n"], max_tokens=8, temperature=1.0,
                                                        seed=0)
    assert len(steps) == 2
    (rewards,) = HFRewardModel(out / "prm").rewards([state.extend("3 + 4 = 7.")])
    assert len(rewards) == 1 and 0.0 < rewards[0] < 1.0
    assert (out / "heldout.jsonl").read_text().count("\n") == BuildSpec.miniature().heldout_size


def test_build_is_deterministic(mini):
    out, root = mini
    again = build(root / "b", BuildSpec.miniature(), progress=False)
    first, second = (json.loads((d / "build.json").read_text())["files"] for d in (out, again))
    assert first == second  # byte-identical weights (SHA-256)
    other = build(root / "c", BuildSpec.miniature(seed=1), progress=False)
    assert json.loads((other / "build.json").read_text())["files"] != first


def test_build_cli(tmp_path, monkeypatch):
    from specs_llm import cli

    monkeypatch.setattr("specs_llm.testbed.build.BuildSpec", lambda seed=0: BuildSpec.miniature(seed))
    assert cli.main(["testbed", "build", "--out", str(tmp_path / "tb"), "--seed", "2"]) == 0
    assert json.loads((tmp_path / "tb" / "build.json").read_text())["spec"]["seed"] == 2
