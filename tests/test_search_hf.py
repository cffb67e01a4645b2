"""The search loop end to end on the tiny HF models: every strategy, seeds, tokenizers."""

import json

import pytest

from specs_llm.config import SearchConfig
from specs_llm.search import Models, run_search
from specs_llm.timing import Ledger

QUESTIONS = ["What is 1+1?", "Solve x + 2 = 5.", "Name a prime."]

SEARCHES = [
    dict(strategy="specs", n=4, k=1, threshold=7.0),
    dict(strategy="specs", n=4, k=2, threshold=None, first_step="draft", target_mode="soft"),
    dict(strategy="beam", generator="target", n=4, k=2),
    dict(strategy="beam", generator="draft", n=4, k=1, aggregation="prm_min"),
    dict(strategy="bon", n=4, aggregation="vote"),
    dict(strategy="rsd", n=1, threshold=0.5),
    dict(strategy="smc", n=4, generator="draft", reward_weight=10.0, resampling="systematic", aggregation="sample"),
    dict(strategy="smc", n=3, generator="target", ratio_weight=0.0, ess_threshold=0.5, aggregation="vote"),
]


@pytest.fixture(scope="module")
def models(hf_draft, hf_target, hf_prm):
    return Models(hf_draft, hf_target, hf_prm)


@pytest.mark.parametrize("cfg", SEARCHES, ids=[f"{c['strategy']}-{i}" for i, c in enumerate(SEARCHES)])
def test_every_strategy_completes_and_reproduces(models, cfg):
    config = SearchConfig(max_steps=3, max_step_tokens=16, sampling_temperature=1.0, seed=1, **cfg)
    ledger = Ledger()
    first = run_search(QUESTIONS, models, config, ledger=ledger)
    again = run_search(QUESTIONS, models, config)
    for a, b in zip(first, again):
        assert a.error is None, a.error
        assert a.text is not None and a.steps
        for s in a.steps:
            assert s.source in ("draft", "target") and s.num_tokens >= 0
        assert a.to_dict()["steps"] == b.to_dict()["steps"]
        assert a.timing["seconds"] > 0 and a.timing["by_model"]["prm"]["calls"] > 0
    summary = ledger.summary()
    if "target" not in config.roles:
        assert "target" not in summary["by_model"]
    if cfg["strategy"] == "specs":
        assert "target_scoring" in summary["by_phase"] or cfg.get("first_step", "target") == "target"
    if cfg["strategy"] == "smc":
        for a, b in zip(first, again):
            assert a.smc == b.smc and [t["step"] for t in a.smc] == list(range(len(a.smc)))
            assert len(a.finished) == cfg["n"] and all(0 < t["ess"] <= cfg["n"] + 1e-9 for t in a.smc)
        if cfg["generator"] == "draft":  # the exponentiated score needs the target's log-probs
            assert "target_scoring" in summary["by_phase"]


@pytest.mark.parametrize("cfg", [SEARCHES[0], SEARCHES[2], SEARCHES[6]], ids=["specs", "beam", "smc"])
def test_cohorts_reproduce_the_lockstep_loop(models, cfg):
    """Two cohorts, each its own loop in its own thread, against one lockstep
    loop: the same steps (tokens exactly; log-probs and scores up to the float
    noise of a smaller batch's padding)."""
    config = SearchConfig(max_steps=3, max_step_tokens=16, sampling_temperature=1.0, seed=4, **cfg)
    questions = QUESTIONS + ["What is 2+3?"]
    lockstep = run_search(questions, models, config)
    cohorts = run_search(questions, models, config, cohorts=2)
    for a, b in zip(lockstep, cohorts):
        assert a.error is None and b.error is None
        assert a.text == b.text and a.answer == b.answer
        assert [(s.text, s.source, s.deferred, s.num_tokens) for s in a.steps] == \
            [(s.text, s.source, s.deferred, s.num_tokens) for s in b.steps]
        assert a.steps[-1].score == pytest.approx(b.steps[-1].score, abs=1e-4)


def _blank_pieces_dropped(text, delimiter="\n\n"):
    """What the final text of a best-of-n response was before issue 18: its
    pieces between delimiters, blank ones dropped, joined again."""
    return delimiter.join(t for t in text.split(delimiter) if t.strip())


@pytest.mark.parametrize("cfg", SEARCHES, ids=[f"{c['strategy']}-{i}" for i, c in enumerate(SEARCHES)])
def test_text_is_the_kept_steps_as_generated(models, cfg):
    from specs_llm.grading import extract_answer

    config = SearchConfig(max_steps=3, max_step_tokens=16, sampling_temperature=1.0, seed=3, **cfg)
    results = run_search(QUESTIONS, models, config)
    for r in results:
        assert r.error is None, r.error
        assert r.text == "".join(s.text + s.end for s in r.steps)
        assert all(s.end == "\n\n" for s in r.steps[:-1])  # only the last step may end otherwise
        chosen = [b for b in r.finished if list(b.records) == r.steps]  # smc: copies of one particle
        assert chosen and all(b.text == r.text for b in chosen)
        assert r.answer == extract_answer(r.text)
        assert [s["end"] for s in r.to_dict()["steps"]] == [s.end for s in r.steps]
        if cfg["strategy"] == "bon":  # one whole response, generated without a stop string
            (step,) = r.steps
            assert step.end == "" and r.text == step.text
    if cfg["strategy"] == "bon":  # the case of issue 18 did occur: blank pieces, kept in the text
        assert any(r.text != _blank_pieces_dropped(r.text) for r in results)


def test_specs_scores_are_the_documented_formula(models):
    # reward weight 10, no length normalisation: score = (logp_t - logp_d) + 10 r
    config = SearchConfig(n=4, max_steps=2, max_step_tokens=12, first_step="draft", threshold=None, seed=2,
                          sampling_temperature=1.0)
    (res,) = run_search(QUESTIONS[:1], models, config)
    for s in res.steps:
        if s.source == "draft":
            assert s.score == pytest.approx(s.logp_target - s.logp_draft + 10 * s.reward, abs=1e-9)


def test_draft_with_a_different_tokenizer_scores_at_text_level(tiny_models, hf_target, hf_prm, tmp_path):
    from specs_llm.backends.hf import HFLanguageModel
    from specs_llm.testing import build_tiny_model

    other = HFLanguageModel(build_tiny_model(tmp_path, "draft_merges"))
    assert len(other.tokenizer) != len(hf_target.tokenizer)
    config = SearchConfig(n=4, max_steps=2, max_step_tokens=12, first_step="draft", threshold=None, seed=0,
                          sampling_temperature=1.0)
    (res,) = run_search(QUESTIONS[:1], Models(other, hf_target, hf_prm), config)
    assert res.error is None and any(s.source == "draft" for s in res.steps)


def test_cli_generate_json(tiny_models, capsys):
    from specs_llm.cli import main

    rc = main([
        "generate", "--backend", "hf", "--draft", tiny_models["draft"], "--target", tiny_models["target"],
        "--prm", tiny_models["prm"], "--question", "What is 2+2?", "--n", "4", "--max-steps", "2",
        "--max-step-tokens", "12", "--first-step", "draft", "--json",
    ])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert {"text", "answer", "steps", "timing"} <= set(out)
    for s in out["steps"]:
        assert {"text", "source", "score", "reward", "deferred"} <= set(s)
        assert s["source"] in ("draft", "target")
    assert {"draft", "target", "prm"} <= set(out["run_timing"]["by_model"])
    assert "draft_generation" in out["run_timing"]["by_phase"]


def test_cli_generate_json_bon_text_is_the_response_as_generated(tiny_models, capsys):
    from specs_llm.cli import main

    seen_blank_pieces = False
    for seed in range(10):  # until the case of issue 18 (blank pieces in the response) has come up
        rc = main([
            "generate", "--backend", "hf", "--target", tiny_models["target"], "--prm", tiny_models["prm"],
            "--question", "What is 2+2?", "--strategy", "bon", "--n", "4", "--max-step-tokens", "16",
            "--seed", str(seed), "--json",
        ])
        out = json.loads(capsys.readouterr().out)
        assert rc == 0 and out["error"] is None
        (step,) = out["steps"]
        assert step["end"] == "" and out["text"] == step["text"]
        seen_blank_pieces = out["text"] != _blank_pieces_dropped(out["text"])
        if seen_blank_pieces:
            break
    assert seen_blank_pieces


def test_cli_generate_trace_and_errors(tiny_models, capsys):
    from specs_llm.cli import main

    rc = main(["generate", "--target", tiny_models["target"], "--prm", tiny_models["prm"], "--question", "Hi?",
               "--strategy", "beam", "--n", "2", "--max-steps", "1", "--max-step-tokens", "8"])
    out = capsys.readouterr().out
    assert rc == 0 and "step  source" in out and "latency" in out
    with pytest.raises(SystemExit, match="--draft is required"):
        main(["generate", "--target", tiny_models["target"], "--prm", tiny_models["prm"], "--question", "Hi?"])
    rc = main(["generate", "--target", tiny_models["target"], "--prm", tiny_models["prm"], "--question", "Hi?",
               "--strategy", "beam", "--n", "3", "--k", "2"])
    assert rc == 2 and "n must be a multiple of k" in capsys.readouterr().err


def test_cli_generate_smc_prints_ess_and_resampling(tiny_models, capsys):
    from specs_llm.cli import main

    rc = main(["generate", "--target", tiny_models["target"], "--prm", tiny_models["prm"], "--question", "Hi?",
               "--strategy", "smc", "--generator", "target", "--ratio-weight", "0", "--n", "3",
               "--resampling", "residual", "--max-steps", "3", "--max-step-tokens", "8"])
    out = capsys.readouterr().out
    assert rc == 0 and "ESS" in out and "resampled" in out and "log Zhat" in out
    assert "resampling event(s); 3 particles at the end" in out
    with pytest.raises(SystemExit, match="--draft is required for strategy 'smc'"):
        main(["generate", "--target", tiny_models["target"], "--prm", tiny_models["prm"], "--question", "Hi?",
              "--strategy", "smc", "--generator", "draft"])


def test_empty_question_is_rejected(models):
    with pytest.raises(ValueError, match="question 0 is empty"):
        run_search([""], models, SearchConfig())
