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

import math
import warnings
from functools import partial
from itertools import combinations
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from scipy import integrate
from scipy import special as sps

from specs_theory.mdp import BlockMDP, mdp_jit, prefix_logp, sequence_logp

__all__ = [
    "soft_values",
    "log_ratio",
    "normalise_weights",
    "q_values",
    "advantages",
    "optimal_policy",
    "hard_values",
    "hard_prm_policy",
    "sir_law",
    "sir_logprobs",
    "sir_law_enumerate",
    "compositions",
    "sir_law_quad",
    "best_of_n_law",
    "best_of_n_logprobs",
    "SpecsPolicy",
    "specs_policy",
    "beam_policy",
    "best_of_n_policy",
    "sequence_sir_law",
    "sequence_logprobs",
    "sequence_probs",
    "expected_deferrals",
]


@mdp_jit
def soft_values(mdp: BlockMDP) -> tuple[jax.Array, ...]:
    """V* at every depth: H+1 arrays, the h-th of shape (K^h,)  (V*[H] = r)."""
    K, beta = mdp.K, mdp.beta
    V = [jnp.asarray(mdp.reward)]
    for h in reversed(range(mdp.H)):
        Q = V[0].reshape(K**h, K)
        V.insert(0, beta * logsumexp(mdp.target_logp[h] + Q / beta, axis=-1))
    return tuple(V)


@mdp_jit
def q_values(mdp: BlockMDP, values=None) -> tuple[jax.Array, ...]:
    """Q*(s,y) = V*(s o y): H arrays of shape (K^h, K)."""
    V = soft_values(mdp) if values is None else values
    return tuple(V[h + 1].reshape(mdp.K**h, mdp.K) for h in range(mdp.H))


@mdp_jit
def advantages(mdp: BlockMDP, values=None) -> tuple[jax.Array, ...]:
    """A*(s,y) = Q*(s,y) - V*(s) (the idealised PRM): H arrays (K^h, K)."""
    V = soft_values(mdp) if values is None else values
    Q = q_values(mdp, V)
    return tuple(Q[h] - V[h][:, None] for h in range(mdp.H))


@mdp_jit
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


@mdp_jit
def hard_values(mdp: BlockMDP) -> tuple[jax.Array, ...]:
    """Hard (rollout) values of the target: V^{pi_t}(s) = E_{pi_t}[r | s].

    H+1 arrays (K^h,); Q^{pi_t}(s,y) = V^{pi_t}(s o y) is the "hard PRM" of
    THEORY.md 3.7 (a Monte-Carlo rollout value, not the soft Q*).
    """
    K = mdp.K
    V = [jnp.asarray(mdp.reward)]
    for h in reversed(range(mdp.H)):
        Q = V[0].reshape(K**h, K)
        V.insert(0, jnp.sum(jnp.exp(mdp.target_logp[h]) * Q, axis=-1))
    return tuple(V)


@mdp_jit
def hard_prm_policy(mdp: BlockMDP) -> tuple[jax.Array, ...]:
    """The n -> inf limit of per-block SIR when the PRM is the hard value:
    log_softmax(log pi_t + Q^{pi_t}/beta) per state (THEORY.md 3.7).

    Its sequence law differs from pi*_seq in general (KL > 0).
    """
    V = hard_values(mdp)
    return tuple(
        jax.nn.log_softmax(
            mdp.target_logp[h] + V[h + 1].reshape(mdp.K**h, mdp.K) / mdp.beta, axis=-1
        )
        for h in range(mdp.H)
    )


# --------------------------------------------------------------------------
# Theorem A: the exact law of self-normalised importance resampling


def normalise_weights(log_q, log_w):
    """lq = log q normalised; lw = log(w / E_q[w]) (-inf where w = 0 or q = 0;
    all -inf when every weight on supp q is zero)."""
    lq = log_q - logsumexp(log_q, axis=-1, keepdims=True)
    lw = jnp.where(lq == -jnp.inf, -jnp.inf, log_w)
    log_z = logsumexp(lq + lw, axis=-1, keepdims=True)
    lw = jnp.where((lw == -jnp.inf) | (log_z == -jnp.inf), -jnp.inf, lw - log_z)
    return lq, lw


_LOG_EPS = math.log(1e-17)


@partial(jax.jit, static_argnames=("shape",))
def _sir_setup(log_q, log_w, n, shape):
    """Normalise and bound the sigma = log t grid of each row (THEORY.md 6)."""
    K = shape[-1]
    log_q = jnp.broadcast_to(log_q, shape).reshape(-1, K)
    log_w = jnp.broadcast_to(log_w, shape).reshape(-1, K)
    lq, lw = normalise_weights(log_q, log_w)
    log_n = jnp.log(n)
    pos = lw > -jnp.inf
    any_pos = jnp.any(pos, axis=-1)
    has_zero = jnp.any((lq > -jnp.inf) & ~pos, axis=-1)
    lw_max = jnp.max(lw, axis=-1)
    lw_min = jnp.min(jnp.where(pos, lw, jnp.inf), axis=-1)
    top = jnp.logaddexp(lw_max, log_n)
    lx_min = jnp.where(any_pos, lw_min, 0.0) + jnp.where(has_zero, 0.0, log_n)
    lo = _LOG_EPS - top
    hi = jnp.log(45.0 + jnp.maximum(0.0, top - lx_min)) - lx_min
    hi = jnp.where(any_pos, hi, lo + 1.0)
    return lq, lw, lo, hi


def _sir_row(lq, lw, lo, hi, log_n, nm1, num_nodes):
    """log SIR_n for one row by the trapezoid rule in sigma = log t (A-iv)."""
    sigma = jnp.linspace(lo, hi, num_nodes)  # (G,)
    step = (hi - lo) / (num_nodes - 1)
    tw = jnp.exp(sigma[:, None] + lw[None, :])  # (G, K): t w(y), 0 where w = 0
    # log phi(t) = log E_q[e^{-t w}]: log1p(-E_q[1 - e^{-tw}]) while that mean
    # is small (no cancellation at small t, P8), logsumexp otherwise (P3).
    m = jnp.sum(jnp.exp(lq)[None, :] * -jnp.expm1(-tw), axis=-1)
    log_phi = jnp.where(
        m < 0.5,
        jnp.log1p(-jnp.minimum(m, 0.5)),
        logsumexp(lq[None, :] - tw, axis=-1),
    )
    tail = jnp.where(nm1 == 0, 0.0, nm1 * log_phi)  # (G,)
    log_f = sigma[:, None] - tw + tail[:, None]  # (G, K)
    log_i = jnp.log(step) + logsumexp(log_f, axis=0)
    out = log_n + lq + lw + log_i
    return jnp.where((lw == -jnp.inf) | (lq == -jnp.inf), -jnp.inf, out)


@partial(jax.jit, static_argnames=("num_nodes", "batch", "shape"))
def _sir_kernel(lq, lw, lo, hi, n, num_nodes, batch, shape):
    log_n = jnp.log(n)
    nm1 = n - 1.0
    row = partial(_sir_row, log_n=log_n, nm1=nm1, num_nodes=num_nodes)
    out = jax.lax.map(lambda a: row(*a), (lq, lw, lo, hi), batch_size=batch)
    return out.reshape(shape)


def _check_n(n):
    if not isinstance(n, jax.core.Tracer):
        if int(n) != n or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return jnp.asarray(n, dtype=jnp.float64)


def sir_logprobs(log_q, log_w, n, *, step: float = 0.1, num_nodes: int | None = None):
    """log SIR_n[q, w](y): the log of `sir_law` (-inf where w(y) = 0 or q(y) = 0).

    See `sir_law` for the arguments.
    """
    log_q = jnp.asarray(log_q, dtype=jnp.float64)
    log_w = jnp.asarray(log_w, dtype=jnp.float64)
    shape = jnp.broadcast_shapes(log_q.shape, log_w.shape)
    if len(shape) == 0 or shape[-1] < 1:
        raise ValueError(f"log_q and log_w need a last axis of symbols (..., K), got {shape}")
    K = shape[-1]
    n = _check_n(n)
    lq, lw, lo, hi = _sir_setup(log_q, log_w, n, shape)
    if num_nodes is None:
        if isinstance(hi, jax.core.Tracer):
            raise ValueError(
                "sir_law under jit needs a static num_nodes (the default grid size is "
                "read from the data: it spans the whole log-weight range, P5)"
            )
        # P5: the grid spans each row's whole log-weight range at spacing <= step;
        # one node count for the batch, rounded up to limit recompilation.
        span = float(np.max(np.asarray(hi - lo)))
        num_nodes = 256 * math.ceil((span / step + 2) / 256)
    elif num_nodes < 3:
        raise ValueError(f"num_nodes must be >= 3, got {num_nodes}")
    batch = max(1, min(lq.shape[0], (1 << 20) // (num_nodes * K)))
    return _sir_kernel(lq, lw, lo, hi, n, num_nodes, batch, shape)


def sir_law(log_q, log_w, n, *, step: float = 0.1, num_nodes: int | None = None):
    """Exact law of the select branch of SIR (Theorem A), probabilities.

    Draw Y_1..Y_n iid from q, W_i = w(Y_i); if S = sum W_i > 0, output Y_I with
    P(I = i) = W_i / S.  SIR_n[q,w](y) = P(S > 0, Y_I = y), evaluated as
        n q(y) w(y) * integral_R exp(sigma - e^sigma w(y) + (n-1) log phi(e^sigma)) dsigma,
        phi(t) = E_q[exp(-t w)],
    with w normalised to E_q[w] = 1 (scale invariance) and the trapezoid rule
    on a per-row grid that spans the whole log-weight range (THEORY.md 6, P5).
    The grid spacing is at most ``step`` (error ~ exp(-pi^2/step)).

    Args:
      log_q: (..., K) log-probabilities of the proposal (normalised here).
      log_w: (..., K) log-weights, -inf for a zero weight (broadcast with log_q).
      n: number of draws, integer >= 1 (may be traced when num_nodes is given).
      step: maximal grid spacing in sigma.
      num_nodes: fixed number of grid nodes (makes the call jit-compatible; the
        spacing then adapts to each row's range and may exceed ``step``).

    Returns:
      (..., K) probabilities summing to 1 - q({w = 0})^n (Corollary A1).
    """
    return jnp.exp(sir_logprobs(log_q, log_w, n, step=step, num_nodes=num_nodes))


def compositions(n: int, K: int) -> np.ndarray:
    """All count vectors c in N^K with sum n, shape (C(n+K-1, K-1), K)."""
    bars = np.array(list(combinations(range(n + K - 1), K - 1)), dtype=np.int64)
    bars = bars.reshape(-1, K - 1)
    m = bars.shape[0]
    ext = np.concatenate(
        [np.full((m, 1), -1), bars, np.full((m, 1), n + K - 1)], axis=1
    )
    return np.diff(ext, axis=1) - 1


def sir_law_enumerate(log_q, log_w, n: int, *, max_terms: int = 5_000_000):
    """Reference SIR_n by the finite multinomial sum (A-v), in log space:

        SIR_n(y) = sum_{|c| = n, c.w > 0} Mult(c; n, q) c_y w(y) / (c.w).

    Small cases only: C(n+K-1, K-1) terms per row (refuses more than
    ``max_terms``).  Leading batch axes allowed; returns (..., K) probabilities.
    """
    log_q = np.asarray(log_q, dtype=np.float64)
    log_w = np.asarray(log_w, dtype=np.float64)
    log_q, log_w = np.broadcast_arrays(log_q, log_w)
    K = log_q.shape[-1]
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    terms = math.comb(n + K - 1, K - 1)
    if terms > max_terms:
        raise ValueError(f"enumeration needs {terms} terms > max_terms={max_terms}")
    c = compositions(n, K)
    with np.errstate(divide="ignore"):
        log_c = np.log(c.astype(np.float64))
    log_coef = sps.gammaln(n + 1) - sps.gammaln(c + 1.0).sum(axis=1)
    out = np.empty(log_q.shape)
    for idx in np.ndindex(log_q.shape[:-1]):
        lq = log_q[idx] - sps.logsumexp(log_q[idx])
        lw = np.where(lq == -np.inf, -np.inf, log_w[idx])
        lw = lw - sps.logsumexp(lq + lw) if np.any(lw > -np.inf) else lw
        log_mult = log_coef + np.where(c > 0, c * lq, 0.0).sum(axis=1)  # (M,)
        log_cw = sps.logsumexp(log_c + lw, axis=1)  # (M,) log(c.w)
        ok = log_cw > -np.inf
        if not ok.any():
            out[idx] = 0.0
            continue
        term = (log_mult + np.where(ok, -log_cw, 0.0))[ok, None] + log_c[ok] + lw
        out[idx] = np.exp(sps.logsumexp(term, axis=0))
    return jnp.asarray(out)


def sir_law_quad(log_q, log_w, n: int, *, epsrel: float = 1e-13):
    """Reference SIR_n by adaptive quadrature of the rescaled form (A-iii):

        SIR_n(y) = q(y) w(y) * integral_0^inf exp(-u w(y)/n) phi(u/n)^(n-1) du,

    with E_q[w] = 1 and phi in log space (P3).  [0, inf) is split at
    geometrically spaced points covering the integrand's decay scales
    1/max w .. n/min w, so scipy's quad sees one scale per piece (P2).
    Slow (about a millisecond per piece); leading batch axes allowed.
    """
    log_q = np.asarray(log_q, dtype=np.float64)
    log_w = np.asarray(log_w, dtype=np.float64)
    log_q, log_w = np.broadcast_arrays(log_q, log_w)
    n = int(n)
    out = np.zeros(log_q.shape)
    for idx in np.ndindex(log_q.shape[:-1]):
        lq = log_q[idx] - sps.logsumexp(log_q[idx])
        lw = np.where(lq == -np.inf, -np.inf, log_w[idx])
        pos = lw > -np.inf
        if not pos.any():
            continue
        lw = lw - sps.logsumexp(lq + lw)
        w = np.exp(lw)
        q = np.exp(lq)

        def log_phi(u):
            return sps.logsumexp(lq - (u / n) * w)

        a = 1e-3 / w[pos].max()
        b = 60.0 * n / w[pos].min()
        pts = np.concatenate([[0.0], np.geomspace(a, b, max(2, int(np.log(b / a)) + 2))])
        for y in np.flatnonzero(pos):

            def f(u, y=y):
                return math.exp(-u * w[y] / n + (n - 1) * log_phi(u))

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", integrate.IntegrationWarning)
                total = sum(
                    integrate.quad(f, lo_, hi_, epsabs=0.0, epsrel=epsrel, limit=200)[0]
                    for lo_, hi_ in zip(pts[:-1], pts[1:])
                )
                total += integrate.quad(f, pts[-1], np.inf, epsabs=0.0, epsrel=epsrel)[0]
            out[idx + (y,)] = q[y] * w[y] * total
    return jnp.asarray(out)


# --------------------------------------------------------------------------
# greedy best-of-n with uniform tie-breaking (THEORY.md 2.3)


def best_of_n_logprobs(log_q, g, n, *, atol: float = 0.0):
    """log BoN_n[q, g](y); see `best_of_n_law`."""
    log_q = jnp.asarray(log_q, dtype=jnp.float64)
    g = jnp.asarray(g, dtype=jnp.float64)
    log_q, g = jnp.broadcast_arrays(log_q, g)
    return _bon_kernel(log_q, g, _check_n(n), jnp.asarray(atol, dtype=jnp.float64))


@jax.jit
def _bon_kernel(log_q, g, n, atol):
    lq = log_q - logsumexp(log_q, axis=-1, keepdims=True)
    diff = g[..., None, :] - g[..., :, None]  # [..., y, y'] = g(y') - g(y)
    # A symbol always ties with itself. Said explicitly: inlined into a larger
    # jit, XLA CPU evaluated |g(y) - g(y)| <= atol as False inside the fused
    # reductions (rows of NaN), although the same diff materialised was 0.
    self_ = jnp.eye(g.shape[-1], dtype=bool)
    lq_row = jnp.broadcast_to(lq[..., None, :], diff.shape)
    log_e = logsumexp(jnp.where(self_ | (jnp.abs(diff) <= atol), lq_row, -jnp.inf), axis=-1)
    log_l = logsumexp(jnp.where(~self_ & (diff < -atol), lq_row, -jnp.inf), axis=-1)
    log_g = logsumexp(jnp.where(~self_ & (diff > atol), lq_row, -jnp.inf), axis=-1)
    # log(L + E) = log(1 - G), G = q({g > v}): exactly 0 for the top class, so
    # n log(L + E) stays exact at huge n. When G rounds to 1 (a bottom class
    # of tiny mass) log1p(-G) is -inf and the next line's -inf - -inf a NaN;
    # there L + E is summed directly instead.
    log_le = jnp.where(log_g > -jnp.log(2.0), jnp.logaddexp(log_l, log_e), jnp.log1p(-jnp.exp(log_g)))
    # log[(L+E)^n - L^n] = n log(L+E) + log(1 - (L/(L+E))^n)
    log_top = n * log_le + jnp.log(-jnp.expm1(n * (log_l - log_le)))
    return jnp.where(lq == -jnp.inf, -jnp.inf, lq - log_e + log_top)


def best_of_n_law(log_q, g, n, *, atol: float = 0.0):
    """Law of the best of n iid draws from q by score g, ties uniform:

        BoN_n[q,g](y) = q(y)/E(v) * [(L(v) + E(v))^n - L(v)^n],  v = g(y),
        L(v) = q({g < v}),  E(v) = q({g = v}),

    where "=" means |g(y') - v| <= atol (keep atol below half the smallest
    gap between distinct scores, or the law need not sum to 1).

    Args: log_q (..., K) log-probabilities (normalised here); g (..., K)
    finite scores; n >= 1.  Returns (..., K) probabilities (sum 1).
    """
    return jnp.exp(best_of_n_logprobs(log_q, g, n, atol=atol))


# --------------------------------------------------------------------------
# exact finite-n policies on a BlockMDP


class SpecsPolicy(NamedTuple):
    """Exact SPECS policy (k = 1, idealised PRM).

    logp: H arrays (K^h, K), log p_{tau,n}(y | s).
    defer_prob: H arrays (K^h,), rho_def(s) = P(all n drafts fail at s).
    """

    logp: tuple
    defer_prob: tuple


def _stack(arrays):
    return jnp.concatenate([jnp.asarray(a) for a in arrays], axis=0)


def _split(mdp, stacked):
    sizes = np.cumsum(mdp.num_states[:-1])[:-1]
    return tuple(jnp.split(stacked, sizes, axis=0))


def log_ratio(a, b):
    """a - b for log-probabilities, -inf wherever either is -inf (no NaN)."""
    bad = (a == -jnp.inf) | (b == -jnp.inf)
    return jnp.where(bad, -jnp.inf, a - jnp.where(bad, 0.0, b))


def specs_policy(
    mdp: BlockMDP,
    n: int,
    *,
    threshold=None,
    target_mode: str = "soft",
    score: str = "q",
    step: float = 0.1,
) -> SpecsPolicy:
    """Exact law of one SPECS step at every state (k = 1), THEORY.md 2.2:

        p_{tau,n}(y|s) = SIR_n[pi_d, w_tau](y) + rho_def(s) T_n(y),
        w(y) = pi*(y|s)/pi_d(y|s),   w_tau = w 1{g(s,y) > tau},
        rho_def(s) = (1 - a(s))^n,   a(s) = pi_d({g > tau} and {w > 0} | s),
        T_n = SIR_n[pi_t, pi*/pi_t] (``target_mode="soft"``, target pi*) or
              BoN_n[pi_t, g]          (``"greedy"``, ties uniform).

    The score g is Q*(s,y) in [0, R] (``score="q"``) or A*(s,y) (``"a"``).
    ``threshold=None`` means no threshold: every draft may pass, so under A1
    it never defers (rho_def = 0).  Zero probabilities (no A1) are allowed: a
    draft with zero weight (pi_t = 0) never passes, and "defer" means no draft
    in P_tau and {w > 0}, with or without a threshold.  Evaluated for all
    states of all depths in one batched Theorem A call (two with deferral).
    """
    if target_mode not in ("soft", "greedy"):
        raise ValueError(f"target_mode must be 'soft' or 'greedy', got {target_mode!r}")
    if score not in ("q", "a"):
        raise ValueError(f"score must be 'q' or 'a', got {score!r}")
    n_arr = _check_n(n)
    tau = -jnp.inf if threshold is None else threshold
    ld, lt, log_w_draft, log_w_target, g, log_rho = _specs_setup(mdp, tau, n_arr, score)
    draft = sir_logprobs(ld, log_w_draft, n, step=step)
    if bool(jnp.any(log_rho > -jnp.inf)):
        if target_mode == "soft":
            target = sir_logprobs(lt, log_w_target, n, step=step)
        else:
            target = best_of_n_logprobs(lt, g, n)
    else:
        target = jnp.full_like(draft, -jnp.inf)
    return _specs_finish(mdp, draft, log_rho, target)


@mdp_jit(static_argnames=("score",))
def _specs_setup(mdp, tau, n, score):
    """Stacked (all depths) inputs of the draft and target SIR calls."""
    V = soft_values(mdp)
    ld = _stack(mdp.draft_logp)
    lt = _stack(mdp.target_logp)
    lstar = _stack(optimal_policy(mdp, V))
    g = _stack(q_values(mdp, V) if score == "q" else advantages(mdp, V))
    log_w = log_ratio(lstar, ld)
    # a draft passes when its score is above tau and its weight is > 0 (without
    # A1 a zero-weight draft can never be selected; "no threshold" (tau = -inf)
    # keeps the second condition, so under A1 it never defers).
    passing = (log_w > -jnp.inf) & (g > tau)
    log_fail = logsumexp(jnp.where(passing, -jnp.inf, ld), axis=-1)  # log(1 - a(s))
    log_fail = jnp.where(jnp.any(passing, axis=-1), log_fail, 0.0)  # rho = 1 exactly
    log_rho = jnp.where(log_fail == -jnp.inf, -jnp.inf, n * log_fail)
    log_w_draft = jnp.where(passing, log_w, -jnp.inf)
    return ld, lt, log_w_draft, log_ratio(lstar, lt), g, log_rho


@mdp_jit
def _specs_finish(mdp, draft, log_rho, target):
    log_rho_col = log_rho[:, None]
    deferred = jnp.where(log_rho_col == -jnp.inf, -jnp.inf, log_rho_col + target)
    logp = jnp.logaddexp(draft, deferred)
    return SpecsPolicy(_split(mdp, logp), _split(mdp, jnp.exp(log_rho)))


def beam_policy(mdp: BlockMDP, n: int, *, generator: str = "target", atol: float = 0.0):
    """Beam search, width 1, n expansions per block: BoN_n[pi_gen(.|s), Q*(s,.)]
    at every state (ties uniform).  Returns a policy (H log-prob arrays)."""
    _generator(mdp, generator)
    return _beam_policy(mdp, _check_n(n), generator, atol)


@mdp_jit(static_argnames=("generator",))
def _beam_policy(mdp, n, generator, atol):
    gen = _generator(mdp, generator)
    Q = q_values(mdp)
    return tuple(best_of_n_logprobs(gen[h], Q[h], n, atol=atol) for h in range(mdp.H))


def best_of_n_policy(mdp: BlockMDP, n: int, *, generator: str = "target", atol: float = 0.0):
    """Best-of-n over whole responses: BoN_n[pi_gen,seq, r], ties uniform.

    Returns (K^H,) LOG-probabilities of the response law."""
    _generator(mdp, generator)
    return _best_of_n_policy(mdp, _check_n(n), generator, atol)


@mdp_jit(static_argnames=("generator",))
def _best_of_n_policy(mdp, n, generator, atol):
    gen = sequence_logp(_generator(mdp, generator))
    return best_of_n_logprobs(gen, mdp.reward, n, atol=atol)


def _generator(mdp, generator):
    if generator == "target":
        return mdp.target_logp
    if generator == "draft":
        return mdp.draft_logp
    raise ValueError(f"generator must be 'target' or 'draft', got {generator!r}")


def sequence_sir_law(mdp: BlockMDP, n: int, *, step: float = 0.1):
    """SPECS with one block = the whole response (THEORY.md 3.6):
    SIR_n[pi_d,seq, pi*_seq / pi_d,seq], (K^H,) PROBABILITIES."""
    return sir_law(*_sequence_weights(mdp), n, step=step)


@mdp_jit
def _sequence_weights(mdp):
    ld = sequence_logp(mdp.draft_logp)
    lstar = jax.nn.log_softmax(sequence_logp(mdp.target_logp) + mdp.reward / mdp.beta)
    return ld, log_ratio(lstar, ld)


def sequence_logprobs(mdp: BlockMDP, policy) -> jax.Array:
    """log P_pi(y_1..y_H) for a policy (H log-prob arrays) -> (K^H,)."""
    return sequence_logp(policy)


def sequence_probs(mdp: BlockMDP, policy) -> jax.Array:
    """P_pi(y_1..y_H) for a policy -> (K^H,) probabilities."""
    return jnp.exp(sequence_logp(policy))


@mdp_jit
def expected_deferrals(mdp: BlockMDP, policy: SpecsPolicy) -> jax.Array:
    """E[# deferred blocks] = sum_h E_{s_h ~ p} rho_def(s_h) (scalar)."""
    reach = prefix_logp(policy.logp)
    return sum(jnp.sum(jnp.exp(reach[h]) * policy.defer_prob[h]) for h in range(mdp.H))
