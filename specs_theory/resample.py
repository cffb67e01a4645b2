"""Resampling schemes for sequential Monte Carlo.

Every scheme has the same signature ``(key, log_weights, num_samples) ->
ancestors``: ``log_weights`` is a (N,) array of unnormalised log-weights
(``-inf`` for a zero weight), ``num_samples`` a static Python int, and the
result a (num_samples,) int32 array of ancestor indices. A zero-weight
particle is never chosen, also when a float32 cumulative sum ends below 1.
All schemes are unbiased: E[#copies of i] = num_samples * w_i / sum(w).

    multinomial  iid draws from Cat(w)
    stratified   one uniform per stratum [j/M, (j+1)/M)
    systematic   one uniform shared by all strata
    residual     floor(M w_i) deterministic copies, the rest multinomial
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

__all__ = [
    "categorical_draws",
    "unnormalised",
    "multinomial",
    "stratified",
    "systematic",
    "residual",
    "RESAMPLERS",
    "get_resampler",
]


def unnormalised(log_weights):
    """exp(log_weights - max): weights up to a constant, NaN treated as 0
    (all NaN when every weight is zero)."""
    lw = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    return jnp.exp(lw - jnp.max(lw))


def _normalised(log_weights):
    w = unnormalised(log_weights)
    return w / jnp.sum(w)


def _check_num_samples(num_samples):
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a Python int >= 1, got {num_samples!r}")


def _inverse_cdf(u, w):
    """Indices i with C[i-1] <= u C < C[i], C = cumsum(w), for u in [0, 1).

    ``w`` need not be normalised. A zero-weight particle repeats its
    predecessor's cumulative sum, so the first index whose cumulative sum
    exceeds the query is never a zero-weight one; the query is kept strictly
    below the total, so rounding never runs off the end either.
    """
    cdf = jnp.cumsum(w)
    total = cdf[-1]
    query = jnp.minimum(u * total, jnp.nextafter(total, jnp.zeros_like(total)))
    return _count_at_most(cdf, query)


# Up to this many particles the two-level count below beats jnp.searchsorted
# on CPU (4x at N = M = 64, 1.9x at 1024, measured); beyond it the gathered
# (M, sqrt N) blocks outgrow the caches and the binary search wins.
_TWO_LEVEL_MAX = 1024


def _count_at_most(cdf, query):
    """#{j : cdf[j] <= q} for each query q (``searchsorted(side="right")``)
    of a nondecreasing (N,) ``cdf``, as int32.

    For N <= _TWO_LEVEL_MAX: cut the cdf into blocks of b = ceil(sqrt N),
    count the blocks whose last entry is <= q, then the entries <= q in the
    next block; 2 sqrt N vectorised compares per query instead of log2 N
    dependent gathers.
    """
    n = cdf.shape[0]
    if n > _TWO_LEVEL_MAX:
        return jnp.searchsorted(cdf, query, side="right").astype(jnp.int32)
    b = math.isqrt(n - 1) + 1 if n > 1 else 1
    num_blocks = -(-n // b)
    blocks = jnp.pad(cdf, (0, num_blocks * b - n), constant_values=jnp.inf).reshape(num_blocks, b)
    before = jnp.sum(blocks[:-1, -1] <= query[..., None], axis=-1)  # whole blocks <= q
    within = jnp.sum(blocks[before] <= query[..., None], axis=-1)
    return (before * b + within).astype(jnp.int32)


def categorical_draws(key, log_weights, num_samples):
    """``num_samples`` iid indices from Cat(softmax(log_weights)) by inverse CDF.

    M uniforms and O(N + M sqrt N) work (O((N + M) log N) for N > 1024)
    instead of the N x M Gumbels of ``jax.random.categorical(shape=(M,))``;
    zero weights are never drawn.
    """
    w = unnormalised(log_weights)
    u = jax.random.uniform(key, (num_samples,), dtype=w.dtype)
    return _inverse_cdf(u, w)


@partial(jax.jit, static_argnames=("num_samples",))
def _multinomial(key, log_weights, num_samples):
    return categorical_draws(key, log_weights, num_samples)


@partial(jax.jit, static_argnames=("num_samples",))
def _stratified(key, log_weights, num_samples):
    w = _normalised(log_weights)
    u = (jnp.arange(num_samples) + jax.random.uniform(key, (num_samples,), dtype=w.dtype)) / num_samples
    return _inverse_cdf(u, w)


@partial(jax.jit, static_argnames=("num_samples",))
def _systematic(key, log_weights, num_samples):
    # One uniform U shared by the strata: the points (j + U)/M. (Counting
    # them per particle in closed form, ceil(M C_i - U) - ceil(M C_{i-1} - U),
    # then jnp.repeat, was 25% slower on CPU than this two-level count.)
    w = unnormalised(log_weights)
    U = jax.random.uniform(key, (), dtype=w.dtype)
    return _inverse_cdf((jnp.arange(num_samples) + U) / num_samples, w)


@partial(jax.jit, static_argnames=("num_samples",))
def _residual(key, log_weights, num_samples):
    w = _normalised(log_weights)
    n = w.shape[0]
    scaled = num_samples * w
    # Tolerate rounding: N * w = 0.99999999 still earns its deterministic copy.
    tol = 8 * num_samples * jnp.finfo(w.dtype).eps
    copies = jnp.floor(scaled + tol).astype(jnp.int32)
    fixed = jnp.repeat(jnp.arange(n, dtype=jnp.int32), copies, total_repeat_length=num_samples)
    num_fixed = jnp.minimum(jnp.sum(copies), num_samples)
    residual_w = jnp.where(w > 0, jnp.maximum(scaled - copies, 0.0), 0.0)
    # If every residual is zero there is nothing left to draw; any positive-
    # weight particle is a safe placeholder for the unused slots.
    residual_lw = jnp.where(jnp.any(residual_w > 0), jnp.log(residual_w), jnp.log(w))
    drawn = categorical_draws(key, residual_lw, num_samples)
    return jnp.where(jnp.arange(num_samples) < num_fixed, fixed, drawn)


def _public(impl, name):
    def scheme(key, log_weights, num_samples):
        _check_num_samples(num_samples)
        log_weights = jnp.asarray(log_weights)
        if log_weights.ndim != 1:
            raise ValueError(f"log_weights must be 1-D (particles,), got shape {log_weights.shape}")
        if not jnp.issubdtype(log_weights.dtype, jnp.floating):
            log_weights = log_weights.astype(jnp.result_type(float))
        return impl(key, log_weights, num_samples)

    scheme.__name__ = scheme.__qualname__ = name
    scheme.__doc__ = f"{name.capitalize()} resampling: (key, log_weights (N,), num_samples) -> (num_samples,) int32 ancestors."
    return scheme


multinomial = _public(_multinomial, "multinomial")
stratified = _public(_stratified, "stratified")
systematic = _public(_systematic, "systematic")
residual = _public(_residual, "residual")

RESAMPLERS = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def get_resampler(name: str):
    """The resampling function registered under ``name``."""
    try:
        return RESAMPLERS[name]
    except KeyError:
        raise ValueError(
            f"unknown resampling scheme {name!r}; choose one of {sorted(RESAMPLERS)}"
        ) from None
