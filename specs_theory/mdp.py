"""Synthetic block-level MDPs (THEORY.md section 1.1).

A state at depth h is a prefix s_h = (y_1, ..., y_h) of blocks y_j in
{0, ..., K-1}; transitions are deterministic (s_h = s_{h-1} o y_h) and the
only reward is terminal, r: Y^H -> [0, R].

Integer encoding (used by every array in ``specs_theory``):
    idx(s_h) = sum_{j=1..h} y_j K^(h-j),     idx(s o y) = idx(s) * K + y,
so depth h has K^h states and an array of shape (K^h, K) indexed
``[idx(s), y]`` reshapes (row-major) to the (K^(h+1),) array of the children.

A *policy* is a tuple of H arrays of log-probabilities, the h-th of shape
(K^h, K) holding log pi(y | s_h).  Everything is float64 in log space.
"""

from __future__ import annotations

from functools import partial, wraps
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BlockMDP",
    "mdp_jit",
    "random_mdp",
    "sequence_view",
    "children",
    "prefix_logp",
    "sequence_logp",
]

_ROW_SUM_TOL = 1e-9


@jax.tree_util.register_pytree_node_class
class BlockMDP:
    """A block MDP with target/draft block policies and a terminal reward.

    Fields:
      K: block alphabet size (static).
      H: horizon in blocks (static).
      beta: KL-regularisation strength > 0 (static).
      reward_range: R, rewards lie in [0, R] (static).
      target_logp, draft_logp: tuples of H float64 arrays, the h-th of shape
        (K^h, K), log pi_t(y | s_h) and log pi_d(y | s_h).
      reward: (K^H,) float64 terminal rewards r(y_1..y_H).

    A JAX pytree: the arrays are leaves, (K, H, beta, reward_range) are
    static auxiliary data.  Build validated instances with `from_probs` or
    `random_mdp`; the constructor itself does not validate (it must accept
    tracers when the pytree is unflattened inside ``jit``).
    """

    __slots__ = ("K", "H", "beta", "reward_range", "target_logp", "draft_logp", "reward")

    def __init__(self, K, H, beta, reward_range, target_logp, draft_logp, reward):
        self.K = int(K)
        self.H = int(H)
        self.beta = float(beta)
        self.reward_range = float(reward_range)
        self.target_logp = tuple(target_logp)
        self.draft_logp = tuple(draft_logp)
        self.reward = reward

    # -- pytree protocol
    def tree_flatten(self):
        return (self.target_logp, self.draft_logp, self.reward), (
            self.K,
            self.H,
            self.beta,
            self.reward_range,
        )

    @classmethod
    def tree_unflatten(cls, aux, children):
        K, H, beta, R = aux
        target_logp, draft_logp, reward = children
        return cls(K, H, beta, R, target_logp, draft_logp, reward)

    def __repr__(self):
        return (
            f"BlockMDP(K={self.K}, H={self.H}, beta={self.beta}, "
            f"reward_range={self.reward_range})"
        )

    def replace(self, **changes) -> "BlockMDP":
        """A copy with some fields replaced (no validation)."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return BlockMDP(**fields)

    @property
    def num_states(self) -> tuple[int, ...]:
        """(K^0, ..., K^H): number of states at each depth."""
        return tuple(self.K**h for h in range(self.H + 1))

    @classmethod
    def from_probs(
        cls,
        target_probs: Sequence,
        draft_probs: Sequence,
        reward,
        beta: float,
        *,
        reward_range: float | None = None,
    ) -> "BlockMDP":
        """Validated `BlockMDP` from probability tables.

        Args:
          target_probs, draft_probs: length-H sequences; entry h has shape
            (K^h, K), rows are pi(. | s_h) (sum to 1 within 1e-9, all > 0: A1).
          reward: (K^H,) finite rewards in [0, R].
          beta: > 0, finite.
          reward_range: R; default max(reward), or 1 if every reward is 0.

        Raises:
          ValueError naming the argument, depth and row at fault.
        """
        beta_f = float(beta)
        if not (np.isfinite(beta_f) and beta_f > 0):
            raise ValueError(f"beta must be finite and > 0, got {beta!r}")
        if len(target_probs) == 0:
            raise ValueError("target_probs must hold H >= 1 arrays, got an empty sequence")
        H = len(target_probs)
        if len(draft_probs) != H:
            raise ValueError(
                f"draft_probs must hold H = {H} arrays (as target_probs), got {len(draft_probs)}"
            )
        first = np.asarray(target_probs[0], dtype=np.float64)
        if first.ndim != 2 or first.shape[0] != 1 or first.shape[1] < 1:
            raise ValueError(f"target_probs[0] must have shape (1, K), got {first.shape}")
        K = first.shape[1]
        tables = {}
        for name, seq in (("target_probs", target_probs), ("draft_probs", draft_probs)):
            logs = []
            for h, p in enumerate(seq):
                p = np.asarray(p, dtype=np.float64)
                if p.shape != (K**h, K):
                    raise ValueError(
                        f"{name}[{h}] must have shape (K**{h}, K) = {(K**h, K)}, got {p.shape}"
                    )
                bad = ~np.all(np.isfinite(p) & (p > 0), axis=1)
                if bad.any():
                    row = int(np.argmax(bad))
                    raise ValueError(
                        f"{name}[{h}] row {row} has an entry that is not finite and > 0 "
                        f"(full support, assumption A1): {p[row]}"
                    )
                err = np.abs(p.sum(axis=1) - 1.0)
                if (err > _ROW_SUM_TOL).any():
                    row = int(np.argmax(err))
                    raise ValueError(
                        f"{name}[{h}] row {row} sums to {p[row].sum()!r}, not 1 "
                        f"(tolerance {_ROW_SUM_TOL})"
                    )
                logs.append(jnp.asarray(np.log(p)))
            tables[name] = tuple(logs)
        r = np.asarray(reward, dtype=np.float64)
        if r.shape != (K**H,):
            raise ValueError(f"reward must have shape (K**H,) = {(K**H,)}, got {r.shape}")
        if not np.all(np.isfinite(r)):
            bad = int(np.argmax(~np.isfinite(r)))
            raise ValueError(f"reward must be finite; entry {bad} is not")
        if reward_range is None:
            R = float(r.max()) if r.max() > 0 else 1.0
        else:
            R = float(reward_range)
            if not (np.isfinite(R) and R > 0):
                raise ValueError(f"reward_range must be finite and > 0, got {reward_range!r}")
        out = (r < 0) | (r > R)
        if out.any():
            i = int(np.argmax(out))
            raise ValueError(
                f"reward must lie in [0, reward_range={R}]; reward[{i}] = {float(r[i])!r}"
            )
        return cls(K, H, beta_f, R, tables["target_probs"], tables["draft_probs"], jnp.asarray(r))


@jax.tree_util.register_pytree_node_class
class _TracedMDP:
    """Internal stand-in for a `BlockMDP` inside `mdp_jit`-compiled code: the
    same attributes, but beta and reward_range are traced leaves, so that one
    compilation serves every beta (only K and H are static)."""

    __slots__ = BlockMDP.__slots__

    def __init__(self, K, H, beta, reward_range, target_logp, draft_logp, reward):
        self.K, self.H = int(K), int(H)
        self.beta, self.reward_range = beta, reward_range
        self.target_logp, self.draft_logp = tuple(target_logp), tuple(draft_logp)
        self.reward = reward

    num_states = BlockMDP.num_states

    def tree_flatten(self):
        leaves = (self.target_logp, self.draft_logp, self.reward, self.beta, self.reward_range)
        return leaves, (self.K, self.H)

    @classmethod
    def tree_unflatten(cls, aux, children):
        target_logp, draft_logp, reward, beta, R = children
        return cls(aux[0], aux[1], beta, R, target_logp, draft_logp, reward)


def _traced(mdp):
    if isinstance(mdp, _TracedMDP):
        return mdp
    beta = jnp.asarray(mdp.beta, jnp.float64)
    R = jnp.asarray(mdp.reward_range, jnp.float64)
    return _TracedMDP(mdp.K, mdp.H, beta, R, mdp.target_logp, mdp.draft_logp, mdp.reward)


def mdp_jit(fn=None, *, static_argnames=()):
    """``jax.jit`` for functions whose first argument is a `BlockMDP`, compiled
    once per (K, H) and argument shapes: beta and reward_range are passed as
    traced scalars (inside, ``mdp.beta`` is an array, never a Python float)."""
    if fn is None:
        return partial(mdp_jit, static_argnames=static_argnames)
    inner = jax.jit(fn, static_argnames=static_argnames)

    @wraps(fn)
    def wrapper(mdp, *args, **kwargs):
        return inner(_traced(mdp), *args, **kwargs)

    return wrapper


def children(idx, K: int) -> jax.Array:
    """Indices of the K children of state(s) ``idx``: idx * K + y, shape (..., K)."""
    return jnp.asarray(idx)[..., None] * K + jnp.arange(K)


@jax.jit
def prefix_logp(policy_logp: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    """Log-probability of reaching every state under a Markov block policy.

    Returns H+1 arrays, the h-th of shape (K^h,):
    log P_pi(s_h) = sum_{j<h} log pi(y_{j+1} | s_j);  the 0-th is [0.].
    """
    out = [jnp.zeros((1,), dtype=jnp.asarray(policy_logp[0]).dtype)]
    for lp in policy_logp:
        out.append((out[-1][:, None] + lp).reshape(-1))
    return tuple(out)


def sequence_logp(mdp_or_policy, policy_logp: Sequence[jax.Array] | None = None) -> jax.Array:
    """log P_pi(y_1..y_H) = sum_h log pi(y_h | s_{h-1}), shape (K^H,).

    Call as ``sequence_logp(mdp, policy)`` or ``sequence_logp(policy)``.
    """
    policy = mdp_or_policy if policy_logp is None else policy_logp
    return prefix_logp(policy)[-1]


def sequence_view(mdp: BlockMDP) -> BlockMDP:
    """The same problem as one block over the alphabet Y^H (THEORY.md 3.6).

    K' = K^H, H' = 1; the block policies are the sequence laws
    log pi_seq(y) = sum_h log pi(y_h | s_{h-1}), and the reward is unchanged.
    """
    return BlockMDP(
        mdp.K**mdp.H,
        1,
        mdp.beta,
        mdp.reward_range,
        (sequence_logp(mdp.target_logp)[None, :],),
        (sequence_logp(mdp.draft_logp)[None, :],),
        mdp.reward,
    )


def _log_dirichlet1(key, shape) -> jax.Array:
    """log of rows ~ Dirichlet(1, ..., 1) along the last axis (never -inf):
    normalised Exp(1) = Gamma(1) draws, and log Exp(1) = -Gumbel."""
    return jax.nn.log_softmax(-jax.random.gumbel(key, shape, dtype=jnp.float64), axis=-1)


def random_mdp(
    key,
    *,
    K: int,
    H: int,
    beta: float,
    reward_range: float = 1.0,
    draft_noise: float = 1.0,
    reward_kind: str = "uniform",
    sparse_p: float = 0.2,
) -> BlockMDP:
    """A random instance (THEORY.md 1.1).

    pi_t(. | s) ~ Dirichlet(1) per state;  log pi_d = log_softmax(log pi_t +
    draft_noise * N(0, 1));  reward ~ U[0, R] iid (``"uniform"``) or
    R * Bernoulli(sparse_p) (``"sparse"``, with at least one sequence at R).
    """
    if K < 1 or H < 1:
        raise ValueError(f"K and H must be >= 1, got K={K}, H={H}")
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0, got {beta!r}")
    if not (np.isfinite(reward_range) and reward_range > 0):
        raise ValueError(f"reward_range must be finite and > 0, got {reward_range!r}")
    if reward_kind not in ("uniform", "sparse"):
        raise ValueError(f"reward_kind must be 'uniform' or 'sparse', got {reward_kind!r}")
    target, draft, reward = _random_arrays(
        key, K, H, float(reward_range), float(draft_noise), reward_kind, float(sparse_p)
    )
    return BlockMDP(K, H, float(beta), float(reward_range), target, draft, reward)


@partial(jax.jit, static_argnums=(1, 2, 5))
def _random_arrays(key, K, H, reward_range, draft_noise, reward_kind, sparse_p):
    k_t, k_d, k_r, k_i = jax.random.split(key, 4)
    # one draw for all states of all depths (fewer random ops to compile)
    S = sum(K**h for h in range(H))
    lt_all = _log_dirichlet1(k_t, (S, K))
    ld_all = jax.nn.log_softmax(
        lt_all + draft_noise * jax.random.normal(k_d, (S, K), dtype=jnp.float64), axis=-1
    )
    cuts = np.cumsum([K**h for h in range(H)])[:-1]
    target = jnp.split(lt_all, cuts)
    draft = jnp.split(ld_all, cuts)
    R = reward_range
    if reward_kind == "uniform":
        reward = jax.random.uniform(k_r, (K**H,), dtype=jnp.float64, maxval=R)
    else:
        hit = jax.random.bernoulli(k_r, sparse_p, (K**H,))
        forced = jax.random.randint(k_i, (), 0, K**H)
        hit = jnp.where(jnp.any(hit), hit, jnp.arange(K**H) == forced)
        reward = jnp.where(hit, R, 0.0).astype(jnp.float64)
    return tuple(target), tuple(draft), reward
