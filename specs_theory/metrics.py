"""Divergences and the KL-regularised objective, from log-probabilities.

Conventions (THEORY.md, top): 0 log 0 = 0; KL(p||q) = +inf when p puts mass
where q has none.  Every function reduces over the last axis (or over whole
responses) and keeps leading batch axes; float64 throughout.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from specs_theory.exact import soft_values
from specs_theory.mdp import BlockMDP, mdp_jit, prefix_logp, sequence_logp

__all__ = [
    "kl",
    "tv",
    "chi2",
    "objective",
    "objective_gap",
    "chain_rule_kl",
    "sequence_kl",
    "chain_kl_small",
]


@partial(jax.jit, static_argnames=("axis",))
def kl(p_log, q_log, axis: int = -1) -> jax.Array:
    """KL(p||q) = sum_y p(y) (log p(y) - log q(y)), from log-probabilities.

    Terms with p(y) = 0 are 0 (even where q(y) = 0); a term with p(y) > 0 and
    q(y) = 0 is +inf.
    """
    p_log, q_log = jnp.broadcast_arrays(jnp.asarray(p_log), jnp.asarray(q_log))
    zero_p = p_log == -jnp.inf
    gap = jnp.where(zero_p, 0.0, p_log - jnp.where(zero_p, 0.0, q_log))
    return jnp.sum(jnp.where(zero_p, 0.0, jnp.exp(p_log) * gap), axis=axis)


@partial(jax.jit, static_argnames=("axis",))
def tv(p_log, q_log, axis: int = -1) -> jax.Array:
    """TV(p, q) = 1/2 sum_y |p(y) - q(y)|, from log-probabilities."""
    return 0.5 * jnp.sum(jnp.abs(jnp.exp(p_log) - jnp.exp(q_log)), axis=axis)


@partial(jax.jit, static_argnames=("axis",))
def chi2(p_log, q_log, axis: int = -1) -> jax.Array:
    """chi2(p||q) = sum_y (p(y) - q(y))^2 / q(y)  (= sum p^2/q - 1 for laws).

    Written as a sum of non-negative terms (no cancellation for small chi2);
    +inf when p(y) > 0 = q(y).  Terms with p(y) = q(y) = 0 are 0.
    """
    p_log, q_log = jnp.broadcast_arrays(jnp.asarray(p_log), jnp.asarray(q_log))
    both_zero = (p_log == -jnp.inf) & (q_log == -jnp.inf)
    # (p - q)^2 / q = q * expm1(log p - log q)^2
    d = jnp.where(both_zero, 0.0, p_log - jnp.where(both_zero, 0.0, q_log))
    q_zero = q_log == -jnp.inf
    term = jnp.where(q_zero, jnp.inf, jnp.exp(q_log) * jnp.expm1(d) ** 2)
    return jnp.sum(jnp.where(both_zero, 0.0, term), axis=axis)


@mdp_jit
def objective(mdp: BlockMDP, seq_logp) -> jax.Array:
    """J(pi) = E_pi[r] - beta KL(pi || pi_t,seq) for a response law given as
    (K^H,) log-probabilities (Prop 2; J(pi*) = V*(s_0))."""
    seq_logp = jnp.asarray(seq_logp)
    target = sequence_logp(mdp.target_logp)
    mass = jnp.where(seq_logp == -jnp.inf, 0.0, jnp.exp(seq_logp))
    return jnp.sum(mass * mdp.reward) - mdp.beta * kl(seq_logp, target)


@mdp_jit
def objective_gap(mdp: BlockMDP, seq_logp) -> jax.Array:
    """J(pi*) - J(pi) = V*(s_0) - J(pi) (= beta KL(pi || pi*) by Prop 2)."""
    return soft_values(mdp)[0][0] - objective(mdp, seq_logp)


@jax.jit
def chain_rule_kl(p_policy, q_policy) -> jax.Array:
    """Per-depth terms of the KL chain rule for two Markov block policies:

        KL_h = E_{s_{h-1} ~ p} KL(p(.|s_{h-1}) || q(.|s_{h-1})),   h = 1..H,

    returned as an (H,) array whose sum is KL(p_seq || q_seq) (I13).
    Unreachable states (p-probability 0) contribute 0.
    """
    reach = prefix_logp(p_policy)
    terms = []
    for h, (lp, lq) in enumerate(zip(p_policy, q_policy)):
        per_state = kl(lp, lq)
        w = jnp.exp(reach[h])
        terms.append(jnp.sum(jnp.where(w > 0, w * per_state, 0.0)))
    return jnp.stack(terms)


@jax.jit
def sequence_kl(p_policy, q_policy) -> jax.Array:
    """KL(p_seq || q_seq) of two Markov block policies, from their response laws."""
    return kl(sequence_logp(p_policy), sequence_logp(q_policy))


def _exp_minus_one_minus(x):
    """e^x - 1 - x >= 0 without cancellation (series for |x| < 1e-3)."""
    series = x * x * (0.5 + x * (1.0 / 6.0 + x / 24.0))
    return jnp.where(jnp.abs(x) < 1e-3, series, jnp.expm1(x) - x)


@jax.jit
def chain_kl_small(p_policy, q_policy) -> jax.Array:
    """KL(p_seq || q_seq) by the chain rule with each state's term written as

        sum_y p(y|s) (r - 1 - log r),   r = q(y|s)/p(y|s),

    a sum of non-negative terms of order (log r)^2: no first-order
    cancellation, so it keeps its relative accuracy when KL ~ c/n^2 is
    1e-20 (`sequence_kl` sums terms of order log r and loses it once
    KL < ~1e-13).  Equal to the KL when every q(.|s) sums to 1; otherwise it
    is the generalised KL (adds sum_y (q - p) per state; it is >= 0 but
    only second order in a mass error, so check the mass separately).  p
    must charge only symbols q charges (else +inf).  Scalar.
    """
    reach = prefix_logp(p_policy)
    total = 0.0
    for h, (lp, lq) in enumerate(zip(p_policy, q_policy)):
        zero_p = lp == -jnp.inf
        zero_q = lq == -jnp.inf
        log_r = jnp.where(zero_p | zero_q, 0.0, lq - jnp.where(zero_p, 0.0, lp))
        term = jnp.where(zero_p, jnp.exp(lq), jnp.where(zero_q, jnp.inf, jnp.exp(lp) * _exp_minus_one_minus(log_r)))
        per_state = jnp.sum(term, axis=-1)
        w = jnp.exp(reach[h])
        total = total + jnp.sum(jnp.where(w > 0, w * per_state, 0.0))
    return total
