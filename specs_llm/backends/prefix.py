"""Scoring through a prefix cache, kept exact.

A causal model's output at position t of a token sequence (the log-prob of
token t under an LM, the row of a PRM head at token t) is a function of
``ids[:t + 1]`` alone. An engine that reads its prefix cache computes only
the positions from some *offset* on (vLLM: ``num_cached_tokens + 1`` for
prompt log-probs, ``num_cached_tokens`` for ``token_classify``); below it the
values are missing or stale and are never read. `prefix_cached_values` gets
every wanted position exactly:

1. each distinct sequence of the call is sent once, reading the cache;
2. a wanted position below its offset is taken from a sequence that computed
   the same prefix, in this call or an earlier one (`PrefixMemo`, keyed by a
   digest of ``ids[:t + 1]``): siblings that share a cache block, duplicates,
   the earlier steps of a PRM input (scored when they were candidates);
3. what is still missing is computed again without the cache (a full pass
   over those sequences only).

Pure Python: the vLLM and server backends supply the engine call.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from .base import BackendError

__all__ = ["CacheStats", "PrefixMemo", "prefix_digests", "prefix_cached_values", "prompt_logprob_answer",
           "head_rows_answer", "SCORE_ROUTE", "TOKEN_CLASSIFY_ROUTE"]

# The routes of the `specs` vLLM endpoint plugin (`vllm_plugin`), whose answers are `Run` triples.
SCORE_ROUTE = "/specs/v1/score"
TOKEN_CLASSIFY_ROUTE = "/specs/v1/token_classify"

# run(sequences, read_cache) -> for each sequence (cached, offset, values):
# tokens the engine read from its cache, and values[j], the output at position
# offset + j (None where the engine gave none)
Run = Callable[[list[list[int]], bool], list[tuple[int, int, list]]]


@dataclass
class CacheStats:
    """Counts of a backend's cached calls (accumulated over its life)."""

    sequences: int = 0  # sequences asked for
    sent: int = 0  # distinct sequences sent reading the cache
    from_memo: int = 0  # wanted positions below an offset, taken from the memo
    rescored: int = 0  # sequences computed again without the cache
    tokens: int = 0  # tokens of the distinct sequences sent
    cached_tokens: int = 0  # of those, tokens the engine read from its cache

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def add(self, other: "CacheStats") -> None:
        """Add ``other``'s counts (thread-safe: search cohorts score at once)."""
        with _STATS_LOCK:
            for name, value in other.__dict__.items():
                setattr(self, name, getattr(self, name) + value)


_STATS_LOCK = threading.Lock()


class PrefixMemo:
    """Values by token-prefix digest, least recently used dropped past
    ``capacity``; safe to share between threads (search cohorts)."""

    def __init__(self, capacity: int = 1 << 17):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._data: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self.capacity:
                self._data.popitem(last=False)


def prefix_digests(ids: Sequence[int], positions: Sequence[int]) -> list[bytes]:
    """A 16-byte digest of ``ids[:t + 1]`` for each t in ``positions`` (ascending)."""
    h = hashlib.blake2b(digest_size=16)
    out, done = [], 0
    for t in positions:
        if not done <= t < len(ids):
            raise ValueError(f"positions must be ascending and inside the sequence, got {t}")
        h.update(array("q", ids[done : t + 1]).tobytes())
        done = t + 1
        out.append(h.copy().digest())
    return out


def prefix_cached_values(seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], run: Run,
                         memo: PrefixMemo, stats: CacheStats | None = None, *, what: str = "model") -> list[list]:
    """``values[i][j]``: the model's output at position ``positions[i][j]`` of ``seqs[i]``.

    ``run(sequences, read_cache)`` is the engine call (see the module doc);
    ``read_cache=False`` must return every wanted position, else
    `BackendError` names ``what``.
    """
    counts = CacheStats(sequences=len(seqs))
    try:
        return _prefix_cached_values(seqs, positions, run, memo, counts, what)
    finally:
        if stats is not None:
            stats.add(counts)


def _prefix_cached_values(seqs, positions, run: Run, memo: PrefixMemo, stats: CacheStats, what: str) -> list[list]:
    unique: dict[tuple[int, ...], int] = {}
    for s in seqs:
        unique.setdefault(tuple(s), len(unique))
    useqs = [list(s) for s in unique]
    wanted: list[list[int]] = [[] for _ in useqs]
    for s, pos in zip(seqs, positions):
        u = unique[tuple(s)]
        wanted[u] = sorted(set(wanted[u]) | set(pos))
    keys = [prefix_digests(s, w) for s, w in zip(useqs, wanted)]
    got: list[dict[int, object]] = [{} for _ in useqs]

    def take(indices: list[int], answers) -> None:
        for u, (_, offset, values) in zip(indices, answers):
            for t, key in zip(wanted[u], keys[u]):
                v = values[t - offset] if offset <= t < offset + len(values) else None
                if v is not None:
                    got[u][t] = v
                    memo.put(key, v)

    todo = [u for u in range(len(useqs)) if wanted[u]]
    if todo:
        answers = run([useqs[u] for u in todo], True)
        stats.sent += len(todo)
        stats.tokens += sum(len(useqs[u]) for u in todo)
        stats.cached_tokens += sum(cached for cached, _, _ in answers)
        take(todo, answers)
    missing = []
    for u in todo:
        for t, key in zip(wanted[u], keys[u]):
            if t in got[u]:
                continue
            v = memo.get(key)
            if v is None:
                missing.append(u)
                break
            got[u][t] = v
            stats.from_memo += 1
    if missing:
        stats.rescored += len(missing)
        take(missing, run([useqs[u] for u in missing], False))
        for u in missing:
            if any(t not in got[u] for t in wanted[u]):
                raise BackendError(f"{what}: scoring without the prefix cache left positions without outputs")
    return [[got[unique[tuple(s)]][t] for t in pos] for s, pos in zip(seqs, positions)]


def prompt_logprob_answer(seq: Sequence[int], prompt_logprobs, cached: int) -> tuple[int, int, list]:
    """The `Run` triple of a vLLM request with ``prompt_logprobs=0`` that read
    ``cached`` tokens from the cache: token t's log-prob is computed at
    position t - 1, so the engine gave tokens t >= cached + 1. A value is
    None where the row does not hold token t. ``prompt_logprobs``: vLLM's
    list of {token id: Logprob} (None first)."""
    if prompt_logprobs is None or len(prompt_logprobs) != len(seq):
        raise BackendError("vLLM returned no prompt log-probs for a scored sequence")
    values = []
    for t in range(cached + 1, len(seq)):
        entry = prompt_logprobs[t].get(seq[t]) if prompt_logprobs[t] is not None else None
        values.append(None if entry is None else entry.logprob)
    return cached, cached + 1, values


def head_rows_answer(seq: Sequence[int], data, cached: int) -> tuple[int, int, list]:
    """The `Run` triple of a vLLM ``token_classify`` request that read
    ``cached`` tokens from the cache: its output ``data`` (a tensor, (T,) or
    (T, labels)) holds the rows of tokens ``cached, cached + 1, ...``."""
    rows = (data[:, None] if data.ndim == 1 else data).double().cpu().tolist()
    if len(rows) != len(seq) - cached:
        raise BackendError(f"vLLM returned {len(rows)} token outputs for {len(seq)} tokens ({cached} cached)")
    return cached, cached, rows
