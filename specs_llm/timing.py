"""Latency accounting: every backend call timed and counted.

A `Ledger` records, for each call, the model (draft / target / prm), the
phase (draft_generation, target_scoring, prm_scoring, target_generation,
selection), the wall seconds, the tokens processed, and the problems that
took part. Per-problem latency is the sum of the wall seconds of the calls a
problem waited on (a problem in a batched call waits for the whole call), of
calls that ran concurrently (one group) only the longest; tokens are
attributed exactly. The per-model and per-phase breakdowns sum every
call. The search loop's own overhead is the run's wall time minus the time
spent inside recorded calls.

Units: seconds (wall clock, `time.perf_counter`), tokens (integers).

A latency cost model (`CostModel`) can replace the clock: the synthetic MDP
experiments (`specs_llm.synthetic`) charge `CostModel.paper`, derived from
the paper's model sizes (draft Qwen2.5-Math-1.5B, target Qwen2.5-Math-7B,
PRM Skywork-o1-Open-PRM 7B):

- decoding is memory-bound: each generated token reads every weight once, so
  its time is proportional to the parameter count. With bf16 weights (2
  bytes per parameter) and ~1 TB/s effective memory bandwidth that is
  2 ms per billion parameters per token:
  target (7B) 14 ms/token, draft (1.5B) 3 ms/token;
- scoring is a prefill (all tokens of a candidate in one forward pass,
  compute-bound), taken as 1/10 of the decode time per token:
  target scoring 1.4 ms/token, PRM scoring (7B) 1.4 ms/token;
- selection (the loop's own work) costs 0.

Each call is charged ``seconds = cost_per_token[model, phase] * tokens`` for
the tokens a problem contributed (`Ledger`), so n candidates
cost n times one: the throughput-bound regime of a busy server. The opposite
extreme, a memory-bound GPU decoding all n candidates of a problem in
parallel for the price of one (``CostModel.paper(parallel_decode=True)``:
a generation call costs ``decode * tokens_per_block`` per problem), is
reported beside it in `synthetic_pareto` from the same runs.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["MODELS", "PHASES", "Ledger", "Call", "CostModel"]

MODELS = ("draft", "target", "prm", "loop")
PHASES = (
    "draft_generation",
    "target_scoring",
    "prm_scoring",
    "target_generation",
    "selection",
)


@dataclass
class Call:
    """One timed call. ``tokens`` maps problem index -> tokens it contributed."""

    model: str
    phase: str
    step: int
    seconds: float = 0.0
    tokens: dict[int, int] = field(default_factory=dict)
    excluded: float = 0.0  # seconds inside the call that are not latency (one-off JIT compilation)
    group: int = -1  # calls of one group ran concurrently: a problem waits for the longest


class Ledger:
    """Collects `Call`s and summarises them per model, phase, problem and step.

    ``cost_model``: optional ``(model, phase, tokens) -> seconds`` that replaces
    the measured wall time of each call (used by synthetic MDP experiments to
    charge a calibrated latency instead of the negligible real one). When set,
    measured wall seconds are still kept under ``wall_seconds``.
    """

    def __init__(self, cost_model=None):
        self.calls: list[Call] = []
        self.cost_model = cost_model
        self._start = time.perf_counter()
        self._stop: float | None = None
        self._groups = itertools.count()

    def new_group(self) -> int:
        """An id for calls that run concurrently (e.g. target and PRM scoring in
        two threads): per-problem latency counts the longest of them, not the sum."""
        return next(self._groups)

    @contextmanager
    def record(self, model: str, phase: str, step: int, problems, *, group: int | None = None):
        """Time a call made on behalf of ``problems`` (an iterable of indices).

        Yields the `Call`; the caller fills ``call.tokens`` (per problem).
        ``group``: see `new_group` (default: a group of its own).
        """
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        call = Call(model, phase, step, tokens={int(p): 0 for p in problems},
                    group=self.new_group() if group is None else group)
        t0 = time.perf_counter()
        try:
            yield call
        finally:
            call.seconds = time.perf_counter() - t0 - call.excluded
            self.calls.append(call)

    def finish(self) -> None:
        self._stop = time.perf_counter()

    # ------------------------------------------------------------------ views

    def _charged(self, call: Call) -> float:
        if self.cost_model is None:
            return call.seconds
        return float(self.cost_model(call.model, call.phase, sum(call.tokens.values())))

    @property
    def wall_seconds(self) -> float:
        end = self._stop if self._stop is not None else time.perf_counter()
        return end - self._start

    def summary(self) -> dict:
        """Totals: seconds, calls and tokens by model and by phase (every call
        summed); ``seconds``: the time in calls (concurrent calls counted once,
        by the longest); ``compile_seconds``: one-off JIT compilation, left out
        of latency; ``loop_overhead_seconds``: wall time in none of these."""
        by_model = defaultdict(lambda: {"seconds": 0.0, "calls": 0, "tokens": 0})
        by_phase = defaultdict(lambda: {"seconds": 0.0, "calls": 0, "tokens": 0})
        charged: dict[int, float] = {}
        measured: dict[int, float] = {}
        for c in self.calls:
            for key, table in ((c.model, by_model), (c.phase, by_phase)):
                table[key]["seconds"] += self._charged(c)
                table[key]["calls"] += 1
                table[key]["tokens"] += sum(c.tokens.values())
            charged[c.group] = max(charged.get(c.group, 0.0), self._charged(c))
            measured[c.group] = max(measured.get(c.group, 0.0), c.seconds + c.excluded)
        compile_seconds = sum(c.excluded for c in self.calls)
        return {
            "seconds": sum(charged.values()),
            "wall_seconds": self.wall_seconds,
            "compile_seconds": compile_seconds,
            "loop_overhead_seconds": max(self.wall_seconds - sum(measured.values()), 0.0),
            "by_model": {m: dict(by_model[m]) for m in MODELS if m in by_model},
            "by_phase": {p: dict(by_phase[p]) for p in PHASES if p in by_phase},
        }

    def problem_summary(self, problem: int) -> dict:
        """Latency of one problem: the seconds of the calls it waited on (of
        concurrent calls, the longest), and its share of calls and tokens."""
        by_model = defaultdict(lambda: {"seconds": 0.0, "calls": 0, "tokens": 0})
        by_phase = defaultdict(lambda: {"seconds": 0.0, "calls": 0, "tokens": 0})
        longest: dict[int, float] = {}
        for c in self.calls:
            if problem not in c.tokens:
                continue
            secs = self._charged(c)
            if self.cost_model is not None:
                # charge the problem for its own tokens only
                secs = float(self.cost_model(c.model, c.phase, c.tokens[problem]))
            longest[c.group] = max(longest.get(c.group, 0.0), secs)
            for key, table in ((c.model, by_model), (c.phase, by_phase)):
                table[key]["seconds"] += secs
                table[key]["calls"] += 1
                table[key]["tokens"] += c.tokens[problem]
        return {
            "seconds": sum(longest.values()),
            "by_model": {m: dict(by_model[m]) for m in MODELS if m in by_model},
            "by_phase": {p: dict(by_phase[p]) for p in PHASES if p in by_phase},
        }


# decode seconds per token per billion parameters (bf16 weights, ~1 TB/s effective bandwidth)
DECODE_S_PER_BILLION = 2e-3
PREFILL_RATIO = 0.1
PAPER_PARAMS_B = {"draft": 1.5, "target": 7.0, "prm": 7.0}


@dataclass(frozen=True)
class CostModel:
    """Seconds charged for a call: ``(model, phase, tokens) -> seconds``.

    decode_s_per_token: draft / target generation, seconds per generated token.
    prefill_s_per_token: target scoring / PRM scoring, seconds per scored token.
    parallel_decode: charge a generation call ``decode * tokens_per_block``
      per problem whatever the number of candidates (all decoded at once).
    """

    draft_decode: float
    target_decode: float
    target_prefill: float
    prm_prefill: float
    parallel_decode: bool = False
    tokens_per_block: int = 1

    @classmethod
    def paper(cls, *, parallel_decode: bool = False, tokens_per_block: int = 1) -> "CostModel":
        """The defaults derived in the module docstring (14 / 3 / 1.4 / 1.4 ms per token)."""
        d = DECODE_S_PER_BILLION
        return cls(
            draft_decode=d * PAPER_PARAMS_B["draft"],
            target_decode=d * PAPER_PARAMS_B["target"],
            target_prefill=PREFILL_RATIO * d * PAPER_PARAMS_B["target"],
            prm_prefill=PREFILL_RATIO * d * PAPER_PARAMS_B["prm"],
            parallel_decode=parallel_decode,
            tokens_per_block=tokens_per_block,
        )

    def __call__(self, model: str, phase: str, tokens: int) -> float:
        if phase in ("draft_generation", "target_generation"):
            rate = self.draft_decode if phase == "draft_generation" else self.target_decode
            if self.parallel_decode:
                return rate * self.tokens_per_block if tokens > 0 else 0.0
            return rate * tokens
        if phase == "target_scoring":
            return self.target_prefill * tokens
        if phase == "prm_scoring":
            return self.prm_prefill * tokens
        return 0.0

    def describe(self) -> dict:
        return {
            "seconds_per_token": {
                "draft_generation": self.draft_decode, "target_generation": self.target_decode,
                "target_scoring": self.target_prefill, "prm_scoring": self.prm_prefill, "selection": 0.0,
            },
            "parallel_decode": self.parallel_decode,
            "tokens_per_block": self.tokens_per_block,
            "derivation": (
                f"decode is memory-bound: {DECODE_S_PER_BILLION * 1e3:g} ms per billion parameters per token "
                f"(bf16 weights, ~1 TB/s); draft {PAPER_PARAMS_B['draft']}B, target {PAPER_PARAMS_B['target']}B, "
                f"PRM {PAPER_PARAMS_B['prm']}B (the paper's Qwen2.5-Math-1.5B/7B and Skywork-o1-Open-PRM 7B); "
                f"scoring (prefill) = {PREFILL_RATIO:g} x decode per token"
                + ("; candidates of one call decoded in parallel (one block's tokens charged)"
                   if self.parallel_decode else "; every generated token charged (n candidates cost n times one)")
            ),
        }
