"""The SPECS decision core: every selection, deferral and switch-back decision.

This module is the only place SPECS makes decisions. The JAX simulator
(`specs_theory.simulate`) and the LLM search loop (`specs_llm.search`) both
call these functions with arrays of log-probabilities and rewards.

All functions are pure JAX, float64-safe, NaN-safe, take the PRNG key first
and work on one problem at a time: ``scores`` has shape ``(n,)`` (the ``n``
candidates of one step). A batch of problems is handled with ``jax.vmap``;
``k`` and ``replace`` are static (they fix output shapes), everything else may
be traced.

Conventions
-----------
* A candidate is *eligible* when its score is not NaN, is ``> -inf``, and the
  gate value (the scores themselves, unless ``gate`` is given) is strictly
  above ``threshold``. A NaN anywhere makes a candidate ineligible; it is never
  selected and never produces a NaN downstream.
* Selection weights are ``exp(score / temperature)``, computed in log space
  with the row maximum subtracted, so large scores never overflow.
* Index arrays use ``-1`` for "no candidate" (fewer eligible candidates than
  requested slots when sampling without replacement).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from specs_theory.resample import categorical_draws, get_resampler, unnormalised

__all__ = [
    "candidate_scores",
    "eligible",
    "subsample",
    "top_k",
    "should_defer",
    "should_switch_back",
    "select_step",
    "select_target",
    "StepSelection",
    "smc_update",
    "SMCUpdate",
]


# --------------------------------------------------------------------------
# validation helpers (run at trace time: shapes are static, values maybe not)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be a Python int (it fixes the output shape), got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def _check_temperature(temperature):
    if _is_concrete(temperature):
        t = float(temperature)
        if not t >= 0.0:  # also rejects NaN
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    return temperature


def _check_1d(name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (candidates,), got shape {x.shape}; "
            "for a batch of problems use jax.vmap over the leading axis"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one candidate, got shape {x.shape}")
    return x


def _float(x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


# --------------------------------------------------------------------------
# scores


def candidate_scores(
    logp_target,
    logp_draft,
    reward,
    *,
    ratio_weight=1.0,
    reward_weight=1.0,
    num_tokens=None,
) -> jax.Array:
    """SPECS candidate score.

    ``s = ratio_weight * (logp_target - logp_draft) / num_tokens + reward_weight * reward``

    ``logp_*`` are the log-probabilities of each candidate step (nats, summed
    over its tokens) under the target and the draft; ``num_tokens`` (optional)
    turns the log-ratio into a per-token average (the authors'
    ``length_normalize``). All arrays must have the same shape. A NaN in any
    input gives ``-inf`` (the candidate is rejected). A zero weight switches
    its term off even where that term is infinite (``0 * inf`` is not NaN).
    """
    arrays = {"logp_target": logp_target, "logp_draft": logp_draft, "reward": reward}
    if num_tokens is not None:
        arrays["num_tokens"] = num_tokens
    arrays = {name: _float(a) for name, a in arrays.items()}
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        detail = ", ".join(f"{name}{shape}" for name, shape in shapes.items())
        raise ValueError(f"candidate_scores: inputs must have the same shape, got {detail}")

    lt, ld, r = arrays["logp_target"], arrays["logp_draft"], arrays["reward"]
    ratio = lt - ld
    if num_tokens is not None:
        ratio = ratio / arrays["num_tokens"]
    bad = jnp.isnan(lt) | jnp.isnan(ld) | jnp.isnan(r) | jnp.isnan(ratio)
    ratio_term = jnp.where(ratio_weight == 0, 0.0, ratio_weight * jnp.where(bad, 0.0, ratio))
    reward_term = jnp.where(reward_weight == 0, 0.0, reward_weight * jnp.where(bad, 0.0, r))
    score = ratio_term + reward_term
    # inf - inf between the two terms is a NaN as well: reject it.
    return jnp.where(bad | jnp.isnan(score), -jnp.inf, score)


def eligible(scores, threshold=None, *, gate=None) -> jax.Array:
    """Boolean mask of candidates that may be kept.

    A candidate is eligible when its score is neither NaN nor ``-inf`` and its
    gate value (``gate`` if given, else the score) is strictly above
    ``threshold`` (no threshold: every finite-or-``+inf`` score passes).
    ``gate`` serves the theory's convention of thresholding the process
    reward Q*(s, y) while weighting by the full score (THEORY.md 2.2).
    """
    scores = _check_1d("scores", scores)
    ok = ~jnp.isnan(scores) & (scores > -jnp.inf)
    if gate is not None:
        gate = _check_1d("gate", gate)
        if gate.shape != scores.shape:
            raise ValueError(f"gate must have the shape of scores {scores.shape}, got {gate.shape}")
    else:
        gate = scores
    if threshold is not None:
        ok = ok & (gate > threshold)  # NaN > t is False
    return ok


# --------------------------------------------------------------------------
# selection


@partial(jax.jit, static_argnames=("k",))
def _greedy(key, scores, ok, k):
    # Sort by (eligible, score, uniform tie-breaker), all descending.
    u = jax.random.uniform(key, scores.shape)
    s = jnp.where(ok, scores, -jnp.inf)
    order = jnp.lexsort((-u, -s, ~ok))[:k]
    return jnp.where(ok[order], order, -1)


@partial(jax.jit, static_argnames=("k",))
def _gumbel_top_k(key, logits, ok, k):
    if k == 1:  # the first pick of successive sampling is one categorical draw
        return _categorical(key, logits, ok, 1)
    g = jax.random.gumbel(key, logits.shape, dtype=logits.dtype)
    perturbed = jnp.where(ok, logits + g, -jnp.inf)
    # Rank eligible candidates first so an underflowed-but-eligible one still
    # fills a slot before any ineligible one.
    order = jnp.lexsort((-perturbed, ~ok))[:k]
    return jnp.where(ok[order], order, -1)


@partial(jax.jit, static_argnames=("k",))
def _categorical(key, logits, ok, k):
    # inverse CDF: k uniforms, not the n * k Gumbels of jax.random.categorical
    idx = categorical_draws(key, jnp.where(ok, logits, -jnp.inf), k)
    return jnp.where(jnp.any(ok), idx, -1)


def _logits(scores, ok, temperature):
    """log of exp(score / T) up to a constant, with +inf scores handled as the
    T -> 0 limit (uniform among them) and T = 0 as uniform among the maxima."""
    s = jnp.where(ok, scores, -jnp.inf)
    smax = jnp.max(s)
    has_posinf = jnp.any(ok & (scores == jnp.inf))
    greedy = temperature == 0
    safe_t = jnp.where(greedy, 1.0, temperature)
    shift = jnp.where(jnp.isfinite(smax), smax, 0.0)
    soft = (s - shift) / safe_t
    # Eligible scores must keep a finite logit even if the division underflows.
    soft = jnp.where(ok, jnp.maximum(soft, -1e300), -jnp.inf)
    top = jnp.where(ok & (s == smax), 0.0, -jnp.inf)
    return jnp.where(greedy | has_posinf, top, soft)


def subsample(key, scores, k, *, temperature=1.0, threshold=None, replace=False, gate=None):
    """Keep ``k`` of the candidates, proportionally to ``exp(score / temperature)``.

    Without replacement this is successive sampling (Gumbel-top-k): the first
    index has law ``softmax(score / T)`` over eligible candidates, the next is
    drawn from the rest, and so on; slots beyond the number of eligible
    candidates are ``-1``. With replacement the ``k`` indices are iid draws
    from ``softmax(score / T)`` over eligible candidates (all ``-1`` when none
    is eligible). ``temperature == 0`` is greedy: without replacement the top
    ``k`` by score, with replacement ``k`` independent uniform picks among
    the maxima; ties are broken uniformly at random either way.

    Args:
      key: PRNG key.
      scores: (n,) float scores (nats).
      k: number of kept candidates (static Python int >= 1).
      temperature: >= 0.
      threshold: candidates whose gate value is ``<= threshold`` are
        ineligible (None: no threshold).
      replace: sample with replacement (static).
      gate: optional (n,) values compared with ``threshold`` instead of the
        scores.

    Returns:
      (k,) int32 indices into ``scores``, ``-1`` for an empty slot.
    """
    k = _check_k(k)
    _check_temperature(temperature)
    scores = _float(_check_1d("scores", scores))
    ok = eligible(scores, threshold, gate=gate)
    if replace:
        return _categorical(key, _logits(scores, ok, temperature), ok, k)
    k_greedy, k_soft = jax.random.split(key)
    if _is_concrete(temperature):  # one branch only
        if float(temperature) == 0:
            return _greedy(k_greedy, scores, ok, k)
        return _gumbel_top_k(k_soft, _logits(scores, ok, temperature), ok, k)
    greedy = _greedy(k_greedy, scores, ok, k)
    sampled = _gumbel_top_k(k_soft, _logits(scores, ok, temperature), ok, k)
    return jnp.where(jnp.asarray(temperature) == 0, greedy, sampled)


def top_k(key, scores, k):
    """Greedy top-``k`` by score, ties broken uniformly at random.

    NaN and ``-inf`` scores are never kept; missing slots are ``-1``.
    Returns (k,) int32 indices, best first.
    """
    k = _check_k(k)
    scores = _float(_check_1d("scores", scores))
    return _greedy(key, scores, eligible(scores), k)


def should_defer(scores, threshold=None, *, gate=None) -> jax.Array:
    """True exactly when no candidate is eligible (no score strictly above
    ``threshold``; NaN counts as failing): the step goes to the target."""
    return ~jnp.any(eligible(scores, threshold, gate=gate))


def should_switch_back(rewards, threshold) -> jax.Array:
    """True when the best reward is strictly above ``threshold`` (NaN rewards
    are ignored): after a deferred step, return to draft mode."""
    rewards = _float(_check_1d("rewards", rewards))
    return jnp.any(rewards > threshold)


# --------------------------------------------------------------------------
# one SPECS step, composed from the pieces above


class StepSelection(NamedTuple):
    """Outcome of the draft phase of one SPECS step.

    indices: (k,) kept draft candidates (-1 for empty slots; all -1 if deferred).
    deferred: scalar bool, True when no draft was eligible.
    """

    indices: jax.Array
    deferred: jax.Array


def select_step(key, scores, k, *, temperature=1.0, threshold=None, replace=False, gate=None):
    """Soft verification of the drafts of one step: defer if nothing is
    eligible, else ``subsample``. Returns a `StepSelection`."""
    deferred = should_defer(scores, threshold, gate=gate)
    idx = subsample(
        key, scores, k, temperature=temperature, threshold=threshold, replace=replace, gate=gate
    )
    return StepSelection(jnp.where(deferred, -1, idx), deferred)


def select_target(key, rewards, k, *, mode="greedy", temperature=1.0, reward_weight=1.0, replace=False):
    """Choose ``k`` of the target model's candidates after a deferral.

    ``mode="greedy"`` (the authors' code): top-``k`` by reward, ties uniform.
    ``mode="soft"`` (the idealised form): sample proportionally to
    ``exp(reward_weight * reward / temperature)``; with ``reward_weight =
    1/beta``, ``temperature = 1`` and the reward equal to A*(s, y) this is the
    SIR whose target is pi*(.|s). NaN rewards are never selected.
    """
    if mode == "greedy":
        return top_k(key, rewards, k)
    if mode == "soft":
        rewards = _float(_check_1d("rewards", rewards))
        scores = jnp.where(reward_weight == 0, 0.0, reward_weight * rewards)
        scores = jnp.where(jnp.isnan(rewards), jnp.nan, scores)
        return subsample(key, scores, k, temperature=temperature, replace=replace)
    raise ValueError(f"mode must be 'greedy' or 'soft', got {mode!r}")


# --------------------------------------------------------------------------
# one step of sequential Monte Carlo (THEORY.md 4)


class SMCUpdate(NamedTuple):
    """Outcome of one SMC reweighting (and possibly resampling) step.

    ancestors: (N,) int32, the particle each slot continues from (the identity
      when not resampled).
    log_weights: (N,) log-weights carried into the next step (zeros after
      resampling).
    log_norm: logsumexp of ``log_weights`` (log N after resampling).
    log_Z_increment: log of this step's factor of Zhat, sum_i Wbar_i G_i with
      Wbar the normalised weights carried into the step.
    ess: (sum w)^2 / sum w^2 of the reweighted particles, before resampling.
    resampled: scalar bool.
    """

    ancestors: jax.Array
    log_weights: jax.Array
    log_norm: jax.Array
    log_Z_increment: jax.Array
    ess: jax.Array
    resampled: jax.Array


def smc_update(key, log_weights, log_norm, log_increments, *, ess_threshold=1.0, last=False,
               resampling="multinomial") -> SMCUpdate:
    """Reweight N particles by their incremental weights G, then resample.

    ``log_weights`` (N,) are the log-weights carried since the last
    resampling and ``log_norm`` their logsumexp; ``log_increments`` (N,) are
    log G (``-inf``: weight zero; 0 for a particle that no longer moves).
    The particles are resampled with ``resample.get_resampler(resampling)``
    unless ``last``: always when ``ess_threshold >= 1``, else when ESS/N <
    ``ess_threshold`` (0: never). Zhat is the product over steps of
    ``exp(log_Z_increment)``; it is unbiased for Z. ``resampling`` is static.
    """
    log_weights = _float(_check_1d("log_weights", log_weights))
    log_increments = _float(_check_1d("log_increments", log_increments))
    if log_increments.shape != log_weights.shape:
        raise ValueError(f"log_increments {log_increments.shape} and log_weights {log_weights.shape} differ in shape")
    resampler = get_resampler(resampling)
    n = log_weights.shape[0]
    log_w = log_weights + jnp.where(jnp.isnan(log_increments), -jnp.inf, log_increments)
    # The logsumexp and the ESS from one exponentiation of the shifted
    # log-weights (the resampler's own, which XLA then computes once).
    top = jnp.max(log_w)
    w = unnormalised(log_w)
    total = jnp.sum(w)
    lse = jnp.where(jnp.isfinite(top), top + jnp.log(total), -jnp.inf)
    ess = total * total / jnp.sum(w * w)
    ess = jnp.where(jnp.isfinite(top), ess, 0.0)
    do = ~jnp.asarray(last) & jnp.isfinite(top) & ((ess_threshold >= 1.0) | (ess < ess_threshold * n))
    ancestors = jnp.where(do, resampler(key, log_w, n), jnp.arange(n, dtype=jnp.int32))
    return SMCUpdate(
        ancestors=ancestors,
        log_weights=jnp.where(do, jnp.zeros_like(log_w), log_w),
        log_norm=jnp.where(do, jnp.log(float(n)), lse),
        log_Z_increment=lse - log_norm,
        ess=ess,
        resampled=do,
    )
