"""A vLLM endpoint plugin: scoring that reads the prefix cache, over HTTP.

Stock vLLM servers skip the prefix cache for every request with prompt
log-probs (echo scoring) and for ``token_classify`` (the PRM), and their
endpoints cannot ask otherwise; so a remote target re-prefills the question
and earlier steps for every candidate. This plugin, installed with the
package and registered under vLLM's ``vllm.endpoint_plugins`` entry point
(name ``specs``), adds two routes to a server started with
``VLLM_PLUGINS=specs``:

- ``POST /specs/v1/score`` (a generate model): ``{"prompts": [[ids], ...],
  "read_cache": true}`` -> ``{"data": [{"cached": c, "offset": c + 1,
  "logprobs": [...]}, ...]}``, the log-probs of tokens ``offset, offset +
  1, ...`` of each prompt (null where the row does not hold the token);
- ``POST /specs/v1/token_classify`` (a pooling model, ``--runner pooling``):
  ``{"inputs": [[ids], ...], "read_cache": true}`` -> ``{"data": [{"cached":
  c, "offset": c, "rows": [[...], ...]}, ...]}``, the raw head outputs of
  tokens ``offset, offset + 1, ...``.

What the in-process backend reads from ``vllm.LLM`` (`specs_llm.backends.vllm`,
module doc), the same numbers: the client (`openai_server`) applies the same
rules (`prefix`). ``read_cache: false`` computes every position. Each prompt
is one engine request (requests of one call run concurrently in the engine).
Answers are JSON with NaN and -Infinity written as such (Python's ``json``
reads them), so a value is never clamped. Routes use only the engine
client's public ``generate``/``encode`` and ``SamplingParams``/``PoolingParams``.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import vllm
from fastapi import FastAPI, Request
from fastapi.responses import Response

from .base import BackendError
from .prefix import SCORE_ROUTE, TOKEN_CLASSIFY_ROUTE, head_rows_answer, prompt_logprob_answer

__all__ = ["PLUGIN_NAME", "SpecsEndpoints"]

PLUGIN_NAME = "specs"


def _json(obj, status: int = 200) -> Response:
    return Response(json.dumps(obj), status_code=status, media_type="application/json")


def _error(message: str, status: int = 400) -> Response:
    return _json({"error": {"message": message}}, status)


async def _last(stream):
    out = None
    async for out in stream:
        pass
    return out


def _sequences(body, key: str) -> list[list[int]]:
    seqs = body.get(key) if isinstance(body, dict) else None
    if not isinstance(seqs, list) or not all(
        isinstance(s, list) and s and all(isinstance(t, int) for t in s) for s in seqs
    ):
        raise ValueError(f"{key!r} must be a list of non-empty lists of token ids")
    return seqs


class SpecsEndpoints:
    """The ``specs`` endpoint plugin (vLLM's `EndpointPlugin` protocol)."""

    name = PLUGIN_NAME
    required_tasks = ("generate", "token_classify")

    def __init__(self):
        self.engine = None

    def attach_router(self, app: FastAPI) -> None:
        app.add_api_route(SCORE_ROUTE, self.score, methods=["POST"])
        app.add_api_route(TOKEN_CLASSIFY_ROUTE, self.token_classify, methods=["POST"])

    async def init_state(self, engine_client, state, args) -> None:
        self.engine = engine_client

    async def _body(self, request: Request, key: str):
        if self.engine is None:
            raise ValueError("this server has no engine")
        body = await request.json()
        return _sequences(body, key), bool(body.get("read_cache", True))

    async def score(self, request: Request) -> Response:
        try:
            seqs, read_cache = await self._body(request, "prompts")
        except ValueError as err:
            return _error(str(err))
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                                     skip_reading_prefix_cache=not read_cache)
        tag = uuid.uuid4().hex
        outs = await asyncio.gather(*(
            _last(self.engine.generate({"prompt_token_ids": s}, params.clone(), f"specs-score-{tag}-{i}"))
            for i, s in enumerate(seqs)
        ))
        try:
            data = [prompt_logprob_answer(s, out.prompt_logprobs, int(out.num_cached_tokens or 0) if read_cache else 0)
                    for s, out in zip(seqs, outs)]
        except BackendError as err:
            return _error(str(err), 500)
        return _json({"data": [{"cached": c, "offset": o, "logprobs": v} for c, o, v in data]})

    async def token_classify(self, request: Request) -> Response:
        try:
            seqs, read_cache = await self._body(request, "inputs")
        except ValueError as err:
            return _error(str(err))
        tag = uuid.uuid4().hex
        outs = await asyncio.gather(*(
            _last(self.engine.encode(
                {"prompt_token_ids": s},
                vllm.PoolingParams(task="token_classify", use_activation=False,
                                   skip_reading_prefix_cache=not read_cache),
                f"specs-classify-{tag}-{i}"))
            for i, s in enumerate(seqs)
        ))
        try:
            data = [head_rows_answer(s, out.outputs.data, int(out.num_cached_tokens or 0) if read_cache else 0)
                    for s, out in zip(seqs, outs)]
        except BackendError as err:
            return _error(str(err), 500)
        return _json({"data": [{"cached": c, "offset": o, "rows": r} for c, o, r in data]})
