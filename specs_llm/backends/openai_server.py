"""Remote backends: draft, target and PRM behind OpenAI-compatible vLLM servers.

One server per model (one GPU or host each, ``vllm serve MODEL``; see
docs/servers.md). The client keeps the tokenizer, so prompts, token counts,
stop handling and step cutting are exactly those of the in-process backends
(`common`): every prompt is sent as *token ids*, never as text.

Endpoints used (checked against vLLM 0.32 on CPU):

- ``GET /v1/models``: the served model id and ``max_model_len``.
- ``POST /v1/completions`` for generation: one request per state with
  ``prompt`` = the state's token ids, ``n``, ``temperature``, ``top_p``,
  ``max_tokens``, ``stop``, ``seed`` = the state's seed (`common.state_seeds`), ``logprobs=1``,
  ``return_token_ids`` and ``return_tokens_as_token_ids`` (exact ids), and
  every other sampling knob pinned to its neutral value (``top_k=0``,
  ``min_p=0``, ``repetition_penalty=1``, no penalties), so that the server's
  defaults from the model's ``generation_config.json`` never apply. A
  request takes one seed for all its prompts, so states go in separate
  requests (sent concurrently); sample j of a state seeded ``s`` then has
  seed ``s + j``, as in-process vLLM does.
- ``POST /v1/completions`` for scoring ("echo"): all prompt + step id lists
  of a call in one request (chunks of ``max_batch_size``), ``echo=true``,
  ``max_tokens=0``, ``logprobs=1``; the prompt's per-token log-probs come
  back in ``logprobs.token_logprobs`` (the first is null), and those of the
  step's tokens are kept. Prompt and step are tokenised separately.
- ``POST /specs/v1/score`` and ``POST /specs/v1/token_classify`` instead of
  the two below, where the server runs the ``specs`` endpoint plugin
  (``VLLM_PLUGINS=specs``; `vllm_plugin`): scoring that reads the prefix
  cache, with exactly the in-process vLLM backend's rules (`prefix`: only
  rows the engine computed are read, the rest come from siblings, earlier
  calls or a rescoring without the cache). Against a stock server (the
  routes answer 404) the client warns once and scores every sequence whole
  (``prefix_cache=False`` asks for that).
- ``POST /pooling`` for the PRM (``--runner pooling``): ``input`` = the PRM
  token ids (`common.prm_input`), ``task="token_classify"``,
  ``use_activation=false``; one row of raw head outputs per token comes
  back, and `common.rewards_from_logits` turns the rows at the reward
  positions into rewards (sigmoid / softmax on the client, as the HF
  backend does).

Finish reasons map as in the in-process vLLM backend: ``"length"`` ->
"length"; ``"stop"`` with a stop *string* as ``stop_reason`` -> "stop";
``"stop"`` with no ``stop_reason`` (EOS) or a stop token id -> "eos";
anything else (``"abort"``, ``"error"``) is a `BackendError`.

Failures. Connection errors (refused, reset, connect timeouts) and HTTP
429/500/502/503/504 are retried ``max_retries`` times with exponential
backoff (``backoff * 2**attempt`` seconds, at most ``max_backoff``); then a
`BackendError` names the role, the server URL, the model and the last error,
e.g. ``"draft server http://127.0.0.1:8001 (model m) is down after 4 tries:
ConnectionError: ..."``. No answer within ``timeout`` seconds, and other
HTTP errors (a bad request, an unknown model), raise at once.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable, Sequence

import requests

from .base import BackendError, State, Step
from .common import (
    ChatPromptMixin,
    PRMInputMixin,
    PRM_CONVENTIONS,
    check_prompt_length,
    check_sampling,
    encode,
    make_step,
    rewards_from_logits,
    state_seeds,
    step_tag_id,
)
from .prefix import SCORE_ROUTE, TOKEN_CLASSIFY_ROUTE, CacheStats, PrefixMemo, prefix_cached_values

__all__ = ["OpenAIServerLanguageModel", "OpenAIServerRewardModel", "wait_until_ready"]

# Sampling settings sent with every generation request: neutral values, so the
# server's defaults (from the model's generation_config.json) never apply.
_NEUTRAL_SAMPLING = {
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "min_tokens": 0,
    "ignore_eos": False,
    "include_stop_str_in_output": False,
    "skip_special_tokens": True,
}
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class _NoPlugin(Exception):
    """A plugin route answered 404: the server does not run the ``specs`` plugin."""


class _Server:
    """HTTP to one server: per-thread sessions, timeouts, bounded retries with backoff."""

    def __init__(
        self,
        base_url: str,
        *,
        describe: Callable[[], str],
        timeout: float,
        connect_timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        api_key: str | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not (timeout > 0 and connect_timeout > 0 and backoff >= 0 and max_backoff >= 0):
            raise ValueError("timeout and connect_timeout must be > 0, backoff and max_backoff >= 0")
        url = base_url.rstrip("/")
        self.url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.describe = describe
        self.timeout = (float(connect_timeout), float(timeout))
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self._headers)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()
        self._local = threading.local()

    def request(self, method: str, path: str, payload: dict | None = None, *, plugin: bool = False) -> dict:
        """The decoded JSON answer of ``method path``; `BackendError` after the
        retries; with ``plugin``, `_NoPlugin` when the route is not there (404)."""
        tries = self.max_retries + 1
        last, down = "", True
        for attempt in range(tries):
            if attempt:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            try:
                resp = self._session().request(method, self.url + path, json=payload, timeout=self.timeout)
            except requests.ReadTimeout:
                # connected, but no answer in time: a stuck or overloaded server; asking again would wait as long
                raise BackendError(f"{self.describe()} did not answer {method} {path} within {self.timeout[1]:g} s")
            except (requests.ConnectionError, requests.Timeout) as exc:
                last, down = f"{type(exc).__name__}: {_short(exc)}", True
                continue
            if plugin and resp.status_code == 404:
                raise _NoPlugin(path)
            if resp.status_code in _RETRY_STATUS:
                last, down = f"HTTP {resp.status_code} from {path}: {_error_text(resp)}", False
                continue
            if not resp.ok:
                raise BackendError(
                    f"{self.describe()} rejected {method} {path} (HTTP {resp.status_code}): {_error_text(resp)}"
                )
            try:
                return resp.json()
            except ValueError:
                raise BackendError(f"{self.describe()} sent a non-JSON answer to {path}: {resp.text[:200]!r}")
        state = "is down" if down else "kept failing"
        raise BackendError(f"{self.describe()} {state} after {tries} tries: {last}")


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


def _error_text(resp: requests.Response) -> str:
    try:
        body = resp.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:500]
    except ValueError:
        return resp.text[:500]


def wait_until_ready(base_url: str, *, timeout: float = 300.0, poll: float = 1.0) -> None:
    """Block until ``GET base_url/health`` answers 200; `BackendError` after ``timeout`` seconds."""
    url = base_url.rstrip("/")
    url = (url[: -len("/v1")] if url.endswith("/v1") else url) + "/health"
    deadline = time.monotonic() + timeout
    last = "no answer"
    with requests.Session() as s:
        while True:
            try:
                r = s.get(url, timeout=min(10.0, max(poll, 1.0)))
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{type(exc).__name__}"
            if time.monotonic() >= deadline:
                raise BackendError(f"server {base_url} not ready after {timeout:.0f} s ({last})")
            time.sleep(poll)


class _RemoteModel:
    """What the LM and PRM clients share: the server, the model id, the tokenizer, a thread pool."""

    def __init__(
        self,
        base_url,
        *,
        model: str | None = None,
        tokenizer=None,
        tokenizer_path: str | os.PathLike | None = None,
        name: str | None = None,
        role: str | None = None,
        max_length: int | None = None,
        max_batch_size: int = 256,
        max_concurrency: int = 32,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        api_key: str | None = None,
        prefix_cache: bool = True,
    ):
        self.role = role
        self.prefix_cache = bool(prefix_cache)  # use the specs plugin's routes while the server has them
        self.memo, self.cache_stats = PrefixMemo(), CacheStats()
        self.model = model
        self.name = name or "model"
        self.server = _Server(
            base_url,
            describe=self._describe,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            api_key=api_key if api_key is not None else os.environ.get("VLLM_API_KEY"),
        )
        self.base_url = self.server.url
        if max_batch_size < 1 or max_concurrency < 1:
            raise ValueError("max_batch_size and max_concurrency must be >= 1")
        self.max_batch_size = int(max_batch_size)
        self.max_concurrency = int(max_concurrency)
        self._max_length = int(max_length) if max_length is not None else None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        if self.model is None:
            self.model = self._only_model()
        self.name = name or os.path.basename(os.path.normpath(self.model))
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path) if tokenizer_path else self.model)
        self.tokenizer = tokenizer

    def _describe(self) -> str:
        who = self.role or self.name
        model = f" (model {self.model})" if self.model and self.model != who else ""
        return f"{who} server {self.server.url}{model}"

    def _only_model(self) -> str:
        models = [m.get("id") for m in self.server.request("GET", "/v1/models").get("data", [])]
        if len(models) != 1:
            raise BackendError(f"{self._describe()} serves {models}; pass model= to choose one")
        return models[0]

    @property
    def max_length(self) -> int | None:
        """The served model's ``max_model_len`` (asked once from ``/v1/models``), or the ``max_length`` given."""
        if self._max_length is None:
            for m in self.server.request("GET", "/v1/models").get("data", []):
                if m.get("id") == self.model and isinstance(m.get("max_model_len"), int):
                    self._max_length = m["max_model_len"]
            if self._max_length is None:
                self._max_length = 0  # unknown: no client-side check
        return self._max_length or None

    def _map(self, fn, items: list) -> list:
        """``[fn(x) for x in items]``, concurrently; the first failure cancels the rest and is raised."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=f"specs-{self.name}")
        futures = [self._pool.submit(fn, x) for x in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            for f in pending:
                f.cancel()
            wait(pending)
            raise failed[0].exception()
        return [f.result() for f in futures]

    def close(self) -> None:
        """Close the HTTP sessions and the thread pool (the object stays usable: both reopen on demand)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self.server.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _plugin_values(self, route: str, key: str, seqs: list[list[int]], wanted: list[list[int]],
                       value: str) -> list[list] | None:
        """`prefix.prefix_cached_values` through the plugin ``route`` (the
        answers' ``value`` field); None, after one warning, when the server has
        no plugin (or ``prefix_cache`` is off): then the caller scores whole."""
        if not self.prefix_cache:
            return None

        def run(batch: list[list[int]], read_cache: bool) -> list[tuple[int, int, list]]:
            def one(chunk):
                body = {"model": self.model, key: chunk, "read_cache": read_cache}
                data = self.server.request("POST", route, body, plugin=True).get("data", [])
                if len(data) != len(chunk):
                    raise BackendError(f"{self._describe()}: sent {len(chunk)} sequences to {route},"
                                       f" got {len(data)} answers")
                return [(int(d["cached"]), int(d["offset"]), d[value]) for d in data]

            chunks = [batch[i : i + self.max_batch_size] for i in range(0, len(batch), self.max_batch_size)]
            return [a for answers in self._map(one, chunks) for a in answers]

        try:
            return prefix_cached_values(seqs, wanted, run, self.memo, self.cache_stats, what=self._describe())
        except _NoPlugin:
            self.prefix_cache = False
            warnings.warn(f"{self._describe()} has no {route} (start it with VLLM_PLUGINS=specs and specs"
                          " installed, docs/servers.md): scoring every sequence whole, without the prefix cache",
                          RuntimeWarning, stacklevel=3)
            return None

    def _batched(self, one, todo: list[int], result: list) -> list:
        """``result[k]`` for every k in ``todo``, from ``one(chunk)`` run on
        chunks of ``max_batch_size`` indices, concurrently."""
        chunks = [todo[i : i + self.max_batch_size] for i in range(0, len(todo), self.max_batch_size)]
        for chunk, values in zip(chunks, self._map(one, chunks)):
            for k, v in zip(chunk, values):
                result[k] = v
        return result


def _finish_reason(choice: dict, describe: str) -> str:
    """vLLM's (finish_reason, stop_reason) -> one of "stop", "eos", "length"."""
    reason, stop_reason = choice.get("finish_reason"), choice.get("stop_reason")
    if reason == "length":
        return "length"
    if reason == "stop":
        return "stop" if isinstance(stop_reason, str) else "eos"  # None: EOS; int: a stop token id
    raise BackendError(f"{describe}: a sample finished with {reason!r} (stop_reason {stop_reason!r})")


def _token_ids(tokens: Sequence[str]) -> list[int] | None:
    """Ids from ``return_tokens_as_token_ids`` tokens ("token_id:17"); None if not in that form."""
    out = []
    for t in tokens:
        if not isinstance(t, str) or not t.startswith("token_id:"):
            return None
        out.append(int(t[len("token_id:") :]))
    return out


class OpenAIServerLanguageModel(ChatPromptMixin, _RemoteModel):
    """A draft or target LM behind an OpenAI-compatible vLLM server.

    Args:
      base_url: the server, e.g. ``"http://gpu1:8001"`` (a trailing ``/v1`` is accepted).
      model: the served model id (``--served-model-name`` or the path/repo
        given to ``vllm serve``); None: the only model ``/v1/models`` lists
        (asked at construction).
      tokenizer / tokenizer_path: the model's tokenizer (an HF tokenizer
        object or a local directory/repo id); default: ``model`` as a repo
        id or path. Prompts and steps are tokenised here, with `common`.
      name: the model's name in traces (default: basename of ``model``).
      role: "draft", "target", ... (names the server in errors; default: ``name``).
      step_delimiter: text after each step in the prompt.
      max_length: prompt + generation token limit (default: the server's
        ``max_model_len``, asked once from ``/v1/models``).
      max_batch_size: prompts per scoring request (default 256).
      max_concurrency: requests in flight at once (generation sends one per
        state; default 32).
      timeout: seconds to wait for an answer (read timeout); connect_timeout:
        seconds to connect.
      max_retries, backoff, max_backoff: retry policy (module doc).
      api_key: sent as ``Authorization: Bearer`` (servers started with
        ``--api-key``); default: the ``VLLM_API_KEY`` environment variable, if set.

    Generation, scoring and units are as `LanguageModel` says; the endpoints
    and parameters are in the module doc.
    """

    def __init__(self, base_url: str, *, step_delimiter: str = "\n\n", **server_options):
        self.step_delimiter = step_delimiter
        super().__init__(base_url, **server_options)

    def __repr__(self) -> str:
        return f"OpenAIServerLanguageModel({self.name!r}, {self.base_url!r})"

    def generate(
        self,
        states: Sequence[State],
        n: int,
        *,
        stop: Sequence[str],
        max_tokens: int,
        temperature: float,
        seed: int | Sequence[int],
        top_p: float = 1.0,
    ) -> list[list[Step]]:
        check_sampling(n, max_tokens, temperature, top_p)
        stop = [s for s in stop if s]
        prompts = [encode(self.tokenizer, self.prompt(s)) for s in states]
        limit = self.max_length if prompts else None
        seeds = state_seeds(seed, len(prompts))
        jobs = []
        for i, ids in enumerate(prompts):
            cap = max_tokens
            if limit is not None:
                check_prompt_length(self.name, len(ids), limit)
                cap = min(max_tokens, limit - len(ids))
            jobs.append((ids, cap, seeds[i]))

        def one(job) -> list[dict]:
            ids, cap, state_seed = job
            body = {
                "model": self.model,
                "prompt": ids,
                "n": n,
                "temperature": float(temperature),
                "top_p": float(top_p),
                "max_tokens": cap,
                "stop": stop,
                "seed": state_seed,
                "logprobs": 1,
                "return_token_ids": True,
                "return_tokens_as_token_ids": True,
                **_NEUTRAL_SAMPLING,
            }
            choices = self.server.request("POST", "/v1/completions", body).get("choices", [])
            if len(choices) != n:
                raise BackendError(f"{self._describe()}: asked for {n} samples, got {len(choices)}")
            return sorted(choices, key=lambda c: c.get("index", 0))

        # Steps are made here, in the calling thread, from the answers of all requests.
        return [[self._step(c) for c in choices] for choices in self._map(one, jobs)]

    def _step(self, choice: dict) -> Step:
        finish = _finish_reason(choice, self._describe())
        lp = choice.get("logprobs") or {}
        logprobs = lp.get("token_logprobs")
        ids = choice.get("token_ids")
        if ids is None:  # a server without return_token_ids: the ids are in the tokens
            ids = _token_ids(lp.get("tokens") or [])
        if ids is None or logprobs is None or len(ids) != len(logprobs):
            raise BackendError(
                f"{self._describe()}: a sample came without token ids or per-token log-probs"
                " (needs vLLM's return_token_ids / return_tokens_as_token_ids and logprobs)"
            )
        named = _token_ids(lp.get("tokens") or [])
        if named is not None and named != list(ids):
            raise BackendError(f"{self._describe()}: token ids and log-prob tokens disagree")
        if any(x is None for x in logprobs):
            raise BackendError(f"{self._describe()}: a generated token has no log-prob")
        end = choice.get("stop_reason") if finish == "stop" else ""
        return make_step(choice.get("text", ""), ids, logprobs, finish, end)

    def score(self, states: Sequence[State], steps: Sequence[str]) -> list[list[float]]:
        if len(states) != len(steps):
            raise ValueError(f"{self.name}: {len(states)} states but {len(steps)} steps")
        pairs = [(encode(self.tokenizer, self.prompt(s)), encode(self.tokenizer, c)) for s, c in zip(states, steps)]
        result: list[list[float]] = [[] for _ in pairs]
        todo = [k for k, (_, c) in enumerate(pairs) if c]
        if not todo:
            return result
        limit = self.max_length
        if limit is not None:
            for k in todo:
                p, c = pairs[k]
                # the server needs room for one (discarded) generated token
                check_prompt_length(self.name, len(p) + len(c), limit, "prompt + step")
        seqs = [pairs[k][0] + pairs[k][1] for k in todo]
        wanted = [list(range(len(pairs[k][0]), len(q))) for k, q in zip(todo, seqs)]
        values = self._plugin_values(SCORE_ROUTE, "prompts", seqs, wanted, "logprobs")
        if values is not None:
            for k, v in zip(todo, values):
                result[k] = [float(x) for x in v]
            return result

        def one(chunk: list[int]) -> list[list[float]]:
            body = {
                "model": self.model,
                "prompt": [pairs[k][0] + pairs[k][1] for k in chunk],
                "echo": True,
                "max_tokens": 0,
                "logprobs": 1,
                "return_tokens_as_token_ids": True,
                # neutral sampling: the log-probs are those of the raw model in any logprobs mode
                "temperature": 1.0,
                "top_p": 1.0,
                **_NEUTRAL_SAMPLING,
            }
            choices = self.server.request("POST", "/v1/completions", body).get("choices", [])
            if len(choices) != len(chunk):
                raise BackendError(f"{self._describe()}: scored {len(chunk)} prompts, got {len(choices)} answers")
            out = []
            for k, choice in zip(chunk, sorted(choices, key=lambda c: c.get("index", 0))):
                p, c = pairs[k]
                lp = choice.get("logprobs") or {}
                values = lp.get("token_logprobs")
                if values is None or len(values) != len(p) + len(c):
                    raise BackendError(
                        f"{self._describe()}: echo scoring returned"
                        f" {None if values is None else len(values)} log-probs for {len(p) + len(c)} tokens"
                    )
                named = _token_ids(lp.get("tokens") or [])
                if named is not None and named != p + c:
                    raise BackendError(f"{self._describe()}: the echoed tokens differ from the ids sent")
                tail = values[len(p) :]
                if any(x is None for x in tail):
                    raise BackendError(f"{self._describe()}: a step token has no log-prob")
                out.append([float(x) for x in tail])
            return out

        return self._batched(one, todo, result)


class OpenAIServerRewardModel(PRMInputMixin, _RemoteModel):
    """A process reward model behind a vLLM server started with ``--runner pooling``.

    The server must expose per-token outputs of a token-classification head
    (``/pooling`` with ``task="token_classify"``): a
    ``Qwen2ForTokenClassification`` checkpoint with 1 label ("value_head",
    e.g. Skywork-o1-Open-PRM converted as docs/servers.md shows) or 2 labels
    ("step_tag", e.g. Qwen2.5-Math-PRM). Raw outputs are requested
    (``use_activation=false``) and turned into rewards here.

    Args:
      base_url, model, tokenizer, tokenizer_path, name, role, max_length,
        max_batch_size, max_concurrency, timeout, connect_timeout,
        max_retries, backoff, max_backoff, api_key: as `OpenAIServerLanguageModel`
        (``max_batch_size``: PRM inputs per request, default 64;
        ``max_concurrency`` default 8).
      convention, step_delimiter, step_tag, system: as `HFRewardModel`
        (the PRM input is `common.prm_input`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        convention: str = "value_head",
        step_delimiter: str = "\n\n",
        step_tag: str = "<extra_0>",
        system: str | None = None,
        **server_options,
    ):
        if convention not in PRM_CONVENTIONS:
            raise ValueError(f"convention must be one of {PRM_CONVENTIONS}, got {convention!r}")
        self.convention = convention
        self.step_delimiter = step_delimiter
        self.system = system
        server_options.setdefault("max_batch_size", 64)
        server_options.setdefault("max_concurrency", 8)
        super().__init__(base_url, **server_options)
        self.step_tag_id = step_tag_id(self.tokenizer, step_tag, self.name) if convention == "step_tag" else None

    def __repr__(self) -> str:
        return f"OpenAIServerRewardModel({self.name!r}, {self.base_url!r}, convention={self.convention!r})"

    def rewards(self, states: Sequence[State]) -> list[list[float]]:
        inputs = [self.inputs(s) for s in states]
        result: list[list[float]] = [[] for _ in inputs]
        todo = [k for k, (_, pos) in enumerate(inputs) if pos]
        if not todo:
            return result
        labels = 1 if self.convention == "value_head" else 2
        rows = self._plugin_values(TOKEN_CLASSIFY_ROUTE, "inputs", [inputs[k][0] for k in todo],
                                   [inputs[k][1] for k in todo], "rows")
        if rows is not None:
            for k, r in zip(todo, rows):
                if len(r[0]) != labels:
                    raise BackendError(f"{self._describe()}: convention {self.convention!r} does not fit a head"
                                       f" with {len(r[0])} labels")
                result[k] = rewards_from_logits([[math.nan if x is None else float(x) for x in row] for row in r],
                                                self.convention)
            return result

        def one(chunk: list[int]) -> list[list[float]]:
            body = {
                "model": self.model,
                "input": [inputs[k][0] for k in chunk],
                "task": "token_classify",
                "use_activation": False,
                "add_special_tokens": False,
            }
            data = self.server.request("POST", "/pooling", body).get("data", [])
            if len(data) != len(chunk):
                raise BackendError(f"{self._describe()}: sent {len(chunk)} PRM inputs, got {len(data)} answers")
            out = []
            for k, item in zip(chunk, sorted(data, key=lambda d: d.get("index", 0))):
                ids, positions = inputs[k]
                rows = item.get("data")
                if not isinstance(rows, list) or len(rows) != len(ids) or not all(isinstance(r, list) for r in rows):
                    raise BackendError(
                        f"{self._describe()}: expected one row of head outputs per token ({len(ids)} rows);"
                        " serve a token-classification PRM with --runner pooling and no step_tag_id pooler filter"
                    )
                if len(rows[0]) != labels:
                    raise BackendError(
                        f"{self._describe()}: convention {self.convention!r} does not fit a head with"
                        f" {len(rows[0])} labels"
                    )
                picked = [[math.nan if x is None else float(x) for x in rows[p]] for p in positions]
                out.append(rewards_from_logits(picked, self.convention))
            return out

        return self._batched(one, todo, result)

