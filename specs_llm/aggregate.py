"""Choosing the answer among a problem's finished beams.

    score     the beam whose last kept step had the best selection score
    prm_last  the best PRM reward of the last step
    prm_min   the best minimum PRM reward over steps
    prm_prod  the best product of PRM rewards over steps
    vote      weighted majority vote: beams grouped by extracted answer
              (exact string match after stripping spaces), each weighted by
              its last-step PRM reward; the heaviest group wins, and its best
              beam (by last reward) is returned
    sample    one beam drawn with probability proportional to exp(its SMC
              log-weight): the output of sequential Monte Carlo; uniform
              for the other strategies, whose beams all have weight 1

NaN scores or rewards rank below every number; ties keep the earlier beam.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import jax
import numpy as np

from specs_theory.select import subsample

__all__ = ["choose_answer", "beam_value"]


def _num(x) -> float:
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def beam_value(beam, aggregation: str) -> float:
    """The number a beam is ranked by under ``aggregation`` (not "vote")."""
    rewards = [_num(r) for r in beam.step_rewards]
    if aggregation == "score":
        return _num(beam.records[-1].score) if beam.records else -math.inf
    if not rewards:
        return -math.inf
    if aggregation == "prm_last":
        return rewards[-1]
    if aggregation == "prm_min":
        return min(rewards)
    if aggregation == "prm_prod":
        return math.prod(rewards) if all(r > -math.inf for r in rewards) else -math.inf
    raise ValueError(f"unknown aggregation {aggregation!r}")


@jax.jit
def _draw_one(key, log_weights):
    """One index with probability proportional to exp(log_weights); -1 if all are zero."""
    return subsample(key, log_weights, 1, temperature=1.0, replace=True)[0]


def choose_answer(beams: Sequence, aggregation: str, *, key=None):
    """The chosen beam among ``beams`` (non-empty); "sample" draws with the
    PRNG ``key``."""
    if not beams:
        raise ValueError("no finished beam to choose from")
    if aggregation == "sample":
        if key is None:
            raise ValueError("aggregation 'sample' needs a PRNG key")
        log_weights = [b.log_weight for b in beams]
        j = int(_draw_one(key, np.asarray(log_weights, dtype=np.float64)))
        if j < 0:
            raise ValueError(f"every beam has weight zero: log-weights {log_weights}")
        return beams[j]
    if aggregation != "vote":
        return max(beams, key=lambda b: beam_value(b, aggregation))
    from .grading import extract_answer

    weight: dict[str, float] = defaultdict(float)
    members: dict[str, list] = defaultdict(list)
    for b in beams:
        ans = extract_answer(b.text)
        key = "".join(ans.split()) if ans is not None else "\0none"
        w = beam_value(b, "prm_last")
        weight[key] += max(w, 0.0) if w > -math.inf else 0.0
        members[key].append(b)
    answered = [k for k in weight if k != "\0none"] or list(weight)
    best = max(answered, key=lambda k: weight[k])
    return max(members[best], key=lambda b: beam_value(b, "prm_last"))
