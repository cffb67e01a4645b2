"""Latency accounting: every backend call timed and counted.

A `Ledger` records, for each call, the model (draft / target / prm), the
phase (draft_generation, target_scoring, prm_scoring, target_generation,
selection), the wall seconds, the tokens processed, and the problems that
took part. Per-problem latency is the sum of the wall seconds of the calls a
problem waited on (a problem in a batched call waits for the whole call);
tokens are attributed exactly. The search loop's own overhead is the run's
wall time minus the time spent inside recorded calls.

Units: seconds (wall clock, `time.perf_counter`), tokens (integers).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["MODELS", "PHASES", "Ledger", "Call"]

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

    @contextmanager
    def record(self, model: str, phase: str, step: int, problems):
        """Time a call made on behalf of ``problems`` (an iterable of indices).

        Yields the `Call`; the caller fills ``call.tokens`` (per problem).
        """
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        call = Call(model, phase, step, tokens={int(p): 0 for p in problems})
        t0 = time.perf_counter()
        try:
            yield call
        finally:
            call.seconds = time.perf_counter() - t0
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
        """Totals: seconds, calls and tokens by model and by phase; overhead."""
        by_model = defaultdict(lambda: {"seconds": 0.0, "calls": 0, "tokens": 0})
        by_phase = defaultdict(lambda: {"seconds": 0.0, "calls": 0, "tokens": 0})
        measured = 0.0
        for c in self.calls:
            for key, table in ((c.model, by_model), (c.phase, by_phase)):
                table[key]["seconds"] += self._charged(c)
                table[key]["calls"] += 1
                table[key]["tokens"] += sum(c.tokens.values())
            measured += c.seconds
        return {
            "seconds": sum(self._charged(c) for c in self.calls),
            "wall_seconds": self.wall_seconds,
            "loop_overhead_seconds": max(self.wall_seconds - measured, 0.0),
            "by_model": {m: dict(by_model[m]) for m in MODELS if m in by_model},
            "by_phase": {p: dict(by_phase[p]) for p in PHASES if p in by_phase},
        }

    def problem_summary(self, problem: int) -> dict:
        """Latency of one problem: seconds of the calls it waited on, its tokens."""
        by_model = defaultdict(lambda: {"seconds": 0.0, "calls": 0, "tokens": 0})
        by_phase = defaultdict(lambda: {"seconds": 0.0, "calls": 0, "tokens": 0})
        total = 0.0
        for c in self.calls:
            if problem not in c.tokens:
                continue
            secs = self._charged(c)
            if self.cost_model is not None:
                # charge the problem for its own tokens only
                secs = float(self.cost_model(c.model, c.phase, c.tokens[problem]))
            total += secs
            for key, table in ((c.model, by_model), (c.phase, by_phase)):
                table[key]["seconds"] += secs
                table[key]["calls"] += 1
                table[key]["tokens"] += c.tokens[problem]
        return {
            "seconds": total,
            "by_model": {m: dict(by_model[m]) for m in MODELS if m in by_model},
            "by_phase": {p: dict(by_phase[p]) for p in PHASES if p in by_phase},
        }
