"""Exact (sampling-free) policies on a `BlockMDP`.

Optimal soft quantities (THEORY.md 1.2), computed backwards in log space:
    V*(s_H) = r(s_H)
    V*(s)   = beta * log sum_y pi_t(y|s) exp(V*(s o y) / beta)
    Q*(s,y) = V*(s o y),   A*(s,y) = Q*(s,y) - V*(s)
    pi*(y|s) = pi_t(y|s) exp(A*(s,y) / beta)

Every function is vectorised over the states of a depth; the only Python loop
is over depth.  Policies are tuples of H arrays of log-probabilities, the h-th
of shape (K^h, K).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from specs_theory.mdp import BlockMDP

__all__ = [
    "soft_values",
    "q_values",
    "advantages",
    "optimal_policy",
]


def soft_values(mdp: BlockMDP) -> tuple[jax.Array, ...]:
    """V* at every depth: H+1 arrays, the h-th of shape (K^h,)  (V*[H] = r)."""
    K, beta = mdp.K, mdp.beta
    V = [jnp.asarray(mdp.reward)]
    for h in reversed(range(mdp.H)):
        Q = V[0].reshape(K**h, K)
        V.insert(0, beta * logsumexp(mdp.target_logp[h] + Q / beta, axis=-1))
    return tuple(V)


def q_values(mdp: BlockMDP, values=None) -> tuple[jax.Array, ...]:
    """Q*(s,y) = V*(s o y): H arrays of shape (K^h, K)."""
    V = soft_values(mdp) if values is None else values
    return tuple(V[h + 1].reshape(mdp.K**h, mdp.K) for h in range(mdp.H))


def advantages(mdp: BlockMDP, values=None) -> tuple[jax.Array, ...]:
    """A*(s,y) = Q*(s,y) - V*(s) (the idealised PRM): H arrays (K^h, K)."""
    V = soft_values(mdp) if values is None else values
    Q = q_values(mdp, V)
    return tuple(Q[h] - V[h][:, None] for h in range(mdp.H))


def optimal_policy(mdp: BlockMDP, values=None) -> tuple[jax.Array, ...]:
    """log pi*(y|s) = log pi_t(y|s) + A*(s,y)/beta: H arrays (K^h, K).

    Computed as log_softmax(log pi_t + Q*/beta), which equals the formula
    (the normaliser is V*(s)/beta) and sums to 1 to rounding at any beta.
    """
    V = soft_values(mdp) if values is None else values
    Q = q_values(mdp, V)
    return tuple(
        jax.nn.log_softmax(mdp.target_logp[h] + Q[h] / mdp.beta, axis=-1) for h in range(mdp.H)
    )
