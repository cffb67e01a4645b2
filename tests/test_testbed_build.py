"""`specs testbed build` in miniature: the same code path, a few training steps, deterministic."""

from __future__ import annotations

import json

import pytest

from specs_llm.testbed import train
from specs_llm.testbed.build import BuildSpec, Stop, build


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
    assert meta["bfloat16_autocast"] == train.fast_bfloat16()  # float32 training on CPUs without native bf16
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


def test_grow_lm_starts_as_the_shallow_model():
    import torch

    from specs_llm.testbed.tokenizer import train_tokenizer

    tok = train_tokenizer(["Compute 3 + 4.", "3 + 4 = 7.\n\nThe answer is \\boxed{7}."], 300)
    small = train.new_lm(train.Shape(64, 2, 1, 1, 128), tok, 0)
    with torch.no_grad():  # a trained-looking model: no zero projections anywhere
        for p in small.parameters():
            p.add_(0.05 * torch.randn_like(p))
    big = train.grow_lm(small, 5, tok, 1)
    assert big.config.num_hidden_layers == 5 and big.config.hidden_size == 64
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad():
        assert torch.allclose(big(input_ids=ids).logits, small(input_ids=ids).logits, atol=1e-5)
    # the old layers sit first and last, the new ones between start as the identity
    assert torch.equal(big.model.layers[4].mlp.up_proj.weight, small.model.layers[1].mlp.up_proj.weight)
    assert not big.model.layers[2].mlp.down_proj.weight.any()
    with pytest.raises(ValueError, match="cannot grow"):
        train.grow_lm(big, 3, tok, 0)


def test_a_build_with_a_first_stage_and_a_target_stop(tmp_path):
    import dataclasses

    from specs_llm.testbed.task import Difficulty

    mini = BuildSpec.miniature()
    spec = dataclasses.replace(mini, target=dataclasses.replace(mini.target, layers=3),
                               pretrain=Difficulty(max_ops=2, digits=1),
                               target_pretrain=train.Schedule(steps=3, batch_size=4, warmup=1),
                               target_pretrain_layers=1,
                               draft_pretrain=train.Schedule(steps=2, batch_size=4, warmup=1),
                               target_stop=Stop(accuracy=0.0, start=2, every=2, problems=4))
    meta = json.loads((build(tmp_path / "b", spec, progress=False) / "build.json").read_text())
    assert [c["step"] for c in meta["target_checks"]] == [2]  # accuracy >= 0 stops at the first check
    assert len(meta["losses"]["target"]["every_10"]) == 1 and set(meta["losses"]) >= {"target_pretrain", "draft_pretrain"}
    assert json.loads((tmp_path / "b" / "target" / "config.json").read_text())["num_hidden_layers"] == 3


def test_build_cli(tmp_path, monkeypatch):
    from specs_llm import cli

    asked = []

    def named(name, seed=0):
        asked.append(name)
        return BuildSpec.miniature(seed)

    monkeypatch.setattr(BuildSpec, "named", staticmethod(named))
    assert cli.main(["testbed", "build", "--out", str(tmp_path / "tb"), "--seed", "2"]) == 0
    assert json.loads((tmp_path / "tb" / "build.json").read_text())["spec"]["seed"] == 2
    monkeypatch.chdir(tmp_path)
    assert cli.main(["testbed", "build", "--name", "testbed-hard"]) == 0
    assert asked == ["testbed", "testbed-hard"] and (tmp_path / "out" / "testbed-hard" / "build.json").is_file()


def test_the_hard_testbed_spec():
    hard, easy = BuildSpec.named("testbed-hard"), BuildSpec.named("testbed")
    assert easy == BuildSpec() and hard == BuildSpec.hard() and hard.hash() != easy.hash()
    d = hard.difficulty
    assert (d.min_ops + 1, d.max_ops + 1, d.digits) == (3, 6, 2)  # 3-6 steps, two-digit operands
    assert hard.pretrain.digits == 1 and hard.target_pretrain_layers < hard.target.layers  # learnt shallow, grown
    assert hard.target.layers >= 10 and hard.draft.layers == 2  # >= 3x the draft's decode cost
    assert 0.55 <= hard.target_stop.accuracy <= 0.75 and 0.20 <= hard.draft_stop.accuracy <= 0.45
    with pytest.raises(ValueError, match="testbeds are"):
        BuildSpec.named("testbed-easy")


def test_a_built_hard_testbed_is_found_by_name(mini, monkeypatch):
    """A build named by $SPECS_TESTBED_HARD_DIR: its models and its held-out split by name."""
    from specs_llm.data import load_problems
    from specs_llm.recipes import resolve_model_path

    out, _ = mini
    monkeypatch.delenv("SPECS_TESTBED_HARD_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="testbed-hard is not shipped"):
        resolve_model_path("testbed-hard:target")
    monkeypatch.setenv("SPECS_TESTBED_HARD_DIR", str(out))
    assert resolve_model_path("testbed-hard:target") == str(out / "target")
    assert resolve_model_path("testbed:target") != str(out / "target")  # the other testbed is untouched
    assert len(load_problems("testbed-hard")) == BuildSpec.miniature().heldout_size


def test_quality_recipe_of_the_hard_testbed():
    import yaml

    from specs_llm.recipes import parse_recipe
    from specs_llm.testbed.quality import quality_recipe

    recipe = parse_recipe(yaml.safe_load(quality_recipe("hf", 20, 0, "testbed-hard")))
    assert [m.name for m in recipe.methods] == ["draft_single", "target_single", "target_beam4", "bon4_prm",
                                               "bon4_vote"]
    assert recipe.datasets[0].name == "testbed-hard" and recipe.backend.target.path == "testbed-hard:target"
    with pytest.raises(ValueError, match="testbed must be one of"):
        quality_recipe("hf", 20, 0, "testbed-easy")
