"""Convergence bounds for SPECS (THEORY.md section 3).

Per-state functions take a proposal ``log_q`` (..., K) and log-weights
``log_w`` (..., K) (-inf for zero weights) and normalise to Z = E_q[w] = 1,
so w = pi_w / q.  Sequence functions take a `BlockMDP` under the idealised
PRM: q = pi_d(.|s), w = pi*(.|s)/pi_d(.|s), and weight states by the reach
probabilities of pi* (or of the policy named).  Everything is float64.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from specs_theory.exact import log_ratio, normalise_weights, advantages, optimal_policy, q_values
from specs_theory.mdp import BlockMDP, mdp_jit, prefix_logp

__all__ = [
    "theorem_b_bound",
    "TheoremC",
    "theorem_c_bound",
    "Coverage",
    "coverage",
    "sequence_chi2",
    "SequenceBound",
    "sequence_bound",
    "prop_d_bound",
    "sequence_prop_d",
    "prop_e_delta",
    "prop_e_constant",
    "sequence_prop_e_constant",
    "threshold_limit_policy",
    "threshold_bound",
    "threshold_kl_slope",
    "threshold_reverse_kl_limit",
]


def _weights(log_q, log_w):
    """(q, w, mask): normalised proposal, weights with E_q[w] = 1, and the
    mask of symbols with q > 0 and w > 0 (the support of pi_w)."""
    lq, lw = normalise_weights(jnp.asarray(log_q, jnp.float64), jnp.asarray(log_w, jnp.float64))
    return jnp.exp(lq), jnp.exp(lw), lw > -jnp.inf


def _log_one_plus(log_x, n):
    """log(1 + (x - 1)/n) = log(n - 1 + x) - log n, stable for huge x."""
    return jnp.logaddexp(jnp.log(n - 1.0), log_x) - jnp.log(n)


def _chi2_w(q, w):
    """chi2(pi_w || q) = E_q[(w - 1)^2] with E_q[w] = 1."""
    return jnp.sum(q * (w - 1.0) ** 2, axis=-1)


# --------------------------------------------------------------------------
# Theorem B and C (any n >= 1)


@jax.jit
def theorem_b_bound(log_q, log_w, n) -> jax.Array:
    """Pointwise lower bound on SIR_n (Theorem B), probabilities (..., K):

        SIR_n(y) >= pi_w(y) / (1 + (w(y)/Z - 1)/n) = q(y) w(y) n / (n - 1 + w(y)),

    and 0 where w(y) = 0.
    """
    q, w, pos = _weights(log_q, log_w)
    return jnp.where(pos, q * w * n / (n - 1.0 + w), 0.0)


class TheoremC(NamedTuple):
    """The three per-state forms of Theorem C, each >= KL(pi_w || SIR_n)."""

    pointwise: jax.Array  # sum_y pi_w log(1 + (w/Z - 1)/n)
    log_chi2: jax.Array  # log(1 + chi2(pi_w||q)/n)
    linear: jax.Array  # chi2(pi_w||q)/n


@jax.jit
def theorem_c_bound(log_q, log_w, n) -> TheoremC:
    """Per-state KL bounds of Theorem C; batch shape of log_q without K."""
    q, w, pos = _weights(log_q, log_w)
    pw = q * w
    pointwise = jnp.sum(jnp.where(pos, pw * jnp.log1p((w - 1.0) / n), 0.0), axis=-1)
    c2 = _chi2_w(q, w)
    return TheoremC(pointwise, jnp.log1p(c2 / n), c2 / n)


class Coverage(NamedTuple):
    """Coverage statistics of an MDP (Corollary C1).

    chi2_states: H arrays (K^h,), chi2_h(s) = chi2(pi*(.|s) || pi_d(.|s)).
    chi2_levels: (H,), E_{s ~ pi*} chi2_h(s).
    chibar2: mean of chi2_levels.
    C: max_{s,y} pi*/pi_d (block-level coverage).
    C_td: max_{s,y} pi_t/pi_d.
    """

    chi2_states: tuple
    chi2_levels: jax.Array
    chibar2: jax.Array
    C: jax.Array
    C_td: jax.Array


def _state_chi2(mdp, lstar):
    out = []
    for h in range(mdp.H):
        q, w, _ = _weights(mdp.draft_logp[h], log_ratio(lstar[h], mdp.draft_logp[h]))
        out.append(_chi2_w(q, w))
    return tuple(out)


def _expect(reach, per_state):
    """sum_h E_{s_h ~ reach} per_state[h](s) as an (H,) array (0 * inf = 0)."""
    return jnp.stack(
        [
            jnp.sum(jnp.where(jnp.exp(r) > 0, jnp.exp(r) * v, 0.0))
            for r, v in zip(reach, per_state)
        ]
    )


@mdp_jit
def coverage(mdp: BlockMDP) -> Coverage:
    """chi2_h(s), their pi*-averages, chibar2, C and C_td (THEORY.md 3.2)."""
    lstar = optimal_policy(mdp)
    states = _state_chi2(mdp, lstar)
    levels = _expect(prefix_logp(lstar), states)
    log_c = jnp.max(jnp.stack([jnp.max(log_ratio(a, b)) for a, b in zip(lstar, mdp.draft_logp)]))
    log_ctd = jnp.max(
        jnp.stack([jnp.max(log_ratio(a, b)) for a, b in zip(mdp.target_logp, mdp.draft_logp)])
    )
    return Coverage(states, levels, jnp.mean(levels), jnp.exp(log_c), jnp.exp(log_ctd))


@mdp_jit
def sequence_chi2(mdp: BlockMDP) -> jax.Array:
    """chi2(pi*_seq || pi_d,seq) by the recursion of THEORY.md 3.6:
    C_H = 1, C_h(s) = sum_y pi*(y|s)^2 / pi_d(y|s) C_{h+1}(s o y), chi2 = C_0 - 1.
    Carried in log space."""
    lstar = optimal_policy(mdp)
    log_c = jnp.zeros(mdp.K**mdp.H)
    for h in reversed(range(mdp.H)):
        term = 2 * lstar[h] + log_ratio(log_c.reshape(mdp.K**h, mdp.K), mdp.draft_logp[h])
        log_c = logsumexp(term, axis=-1)
    return jnp.expm1(log_c[0])


class SequenceBound(NamedTuple):
    """Corollary C1 bounds on KL(pi*_seq || pi_SPECS,n), tightest first."""

    pointwise: jax.Array  # sum_h E_{pi*} sum_y pi* log(1 + (w - 1)/n)
    chain: jax.Array  # sum_h E_{pi*} log(1 + chi2_h/n)
    chibar2: jax.Array  # H log(1 + chibar2/n)
    coverage: jax.Array  # H log(1 + (C - 1)/n)
    reward_range: jax.Array  # H log(1 + (C_td e^(R/beta) - 1)/n)


@mdp_jit
def sequence_bound(mdp: BlockMDP, n) -> SequenceBound:
    """All forms of Corollary C1 at n (scalars)."""
    lstar = optimal_policy(mdp)
    reach = prefix_logp(lstar)
    pointwise, chain = [], []
    for h in range(mdp.H):
        tc = theorem_c_bound(mdp.draft_logp[h], log_ratio(lstar[h], mdp.draft_logp[h]), n)
        pointwise.append(tc.pointwise)
        chain.append(tc.log_chi2)
    cov = coverage(mdp)
    H = mdp.H
    return SequenceBound(
        jnp.sum(_expect(reach, pointwise)),
        jnp.sum(_expect(reach, chain)),
        H * jnp.log1p(cov.chibar2 / n),
        H * _log_one_plus(jnp.log(cov.C), n),
        H * _log_one_plus(jnp.log(cov.C_td) + mdp.reward_range / mdp.beta, n),
    )


# --------------------------------------------------------------------------
# Prop D (two-sided, needs w_min > 0) and Prop E (first-order asymptotics)


@jax.jit
def prop_d_bound(log_q, log_w, n):
    """(forward, reverse) Prop D bounds per state:

        KL(pi_w || q_n) <= E_{pi_w}[e^2 / rho_lo],   KL(q_n || pi_w) <= E_{pi_w}[e^2],
        rho_lo = n/mu, rho_hi = n/mu + n(n-1) v / (mu^2 x_lo),  e = max(1 - rho_lo, rho_hi - 1),
        mu = w + n - 1,  x_lo = w + (n-1) w_min,  v = chi2(pi_w || q).

    +inf where a symbol of supp q has zero weight (w_min = 0).
    """
    q, w, pos = _weights(log_q, log_w)
    on_q = q > 0
    ok = jnp.all(pos | ~on_q, axis=-1, keepdims=True)
    w_min = jnp.min(jnp.where(on_q, w, jnp.inf), axis=-1, keepdims=True)
    v = _chi2_w(q, w)[..., None]
    mu = w + n - 1.0
    x_lo = w + (n - 1.0) * w_min
    rho_lo = n / mu
    rho_hi = rho_lo + n * (n - 1.0) * v / (mu**2 * x_lo)
    e2 = jnp.maximum(1.0 - rho_lo, rho_hi - 1.0) ** 2
    pw = jnp.where(on_q, q * w, 0.0)
    fwd = jnp.sum(pw * e2 / rho_lo, axis=-1)
    rev = jnp.sum(pw * e2, axis=-1)
    ok = ok[..., 0]
    return jnp.where(ok, fwd, jnp.inf), jnp.where(ok, rev, jnp.inf)


@mdp_jit
def sequence_prop_d(mdp: BlockMDP, n, specs_logp=None):
    """Sequence-level Prop D: (forward, reverse) bounds on KL(pi*_seq || pi_SPECS,n)
    and KL(pi_SPECS,n || pi*_seq).  Forward sums E_{s ~ pi*}; reverse sums
    E_{s ~ specs_logp} (the exact SPECS policy) if given, else H * max_s."""
    lstar = optimal_policy(mdp)
    fwd, rev = [], []
    for h in range(mdp.H):
        f, r = prop_d_bound(mdp.draft_logp[h], log_ratio(lstar[h], mdp.draft_logp[h]), n)
        fwd.append(f)
        rev.append(r)
    forward = jnp.sum(_expect(prefix_logp(lstar), fwd))
    if specs_logp is None:
        reverse = sum(jnp.max(r) for r in rev)
    else:
        reverse = jnp.sum(_expect(prefix_logp(specs_logp), rev))
    return forward, reverse


@jax.jit
def prop_e_delta(log_q, log_w) -> jax.Array:
    """delta(y) = 1 + chi2(pi_w||q) - w(y)/Z = lim n (rho(y) - 1), (..., K)."""
    q, w, _ = _weights(log_q, log_w)
    return 1.0 + _chi2_w(q, w)[..., None] - w


@jax.jit
def prop_e_constant(log_q, log_w) -> jax.Array:
    """lim n^2 KL(pi_w || SIR_n) = 1/2 Var_{pi_w}(w/Z) (needs w > 0 on supp q)."""
    q, w, _ = _weights(log_q, log_w)
    pw = q * w
    mean = jnp.sum(pw * w, axis=-1, keepdims=True)  # = 1 + chi2
    return 0.5 * jnp.sum(pw * (w - mean) ** 2, axis=-1)


@mdp_jit
def sequence_prop_e_constant(mdp: BlockMDP) -> jax.Array:
    """c = sum_h E_{s ~ pi*} 1/2 Var_{pi*(.|s)}(pi*/pi_d): n^2 KL(pi*_seq || pi_SPECS,n) -> c."""
    lstar = optimal_policy(mdp)
    per_state = [
        prop_e_constant(mdp.draft_logp[h], log_ratio(lstar[h], mdp.draft_logp[h]))
        for h in range(mdp.H)
    ]
    return jnp.sum(_expect(prefix_logp(lstar), per_state))


# --------------------------------------------------------------------------
# threshold: the limit policy pi*_tau and what the bound becomes (THEORY.md 3.5)


def _passing(mdp, threshold, score, lstar):
    """Per depth: (P_tau(s) and w > 0 mask, log(1 - a(s)))."""
    g = q_values(mdp) if score == "q" else advantages(mdp)
    out = []
    for h in range(mdp.H):
        lw = log_ratio(lstar[h], mdp.draft_logp[h])
        passing = (g[h] > threshold) & (lw > -jnp.inf)
        log_fail = logsumexp(jnp.where(passing, -jnp.inf, mdp.draft_logp[h]), axis=-1)
        out.append((passing, log_fail, g[h]))
    return out


def _check_mode(target_mode, score):
    if target_mode not in ("soft", "greedy"):
        raise ValueError(f"target_mode must be 'soft' or 'greedy', got {target_mode!r}")
    if score not in ("q", "a"):
        raise ValueError(f"score must be 'q' or 'a', got {score!r}")


@mdp_jit(static_argnames=("target_mode", "score"))
def threshold_limit_policy(mdp: BlockMDP, threshold, *, target_mode="soft", score="q"):
    """pi*_tau = lim_n p_{tau,n} (a policy, H log-prob arrays):
    pi*(.|s) restricted to P_tau(s) where a(s) > 0; where a(s) = 0 (always
    defer) pi*(.|s) in soft mode, pi_t restricted to argmax_y g(s,y) in greedy mode."""
    _check_mode(target_mode, score)
    lstar = optimal_policy(mdp)
    out = []
    for h, (passing, log_fail, g) in enumerate(_passing(mdp, threshold, score, lstar)):
        some = jnp.any(passing, axis=-1, keepdims=True)
        restricted = jax.nn.log_softmax(jnp.where(passing, lstar[h], -jnp.inf), axis=-1)
        if target_mode == "soft":
            defer = lstar[h]
        else:
            lt = mdp.target_logp[h]
            g = jnp.where(lt == -jnp.inf, -jnp.inf, g)
            top = g == jnp.max(g, axis=-1, keepdims=True)
            defer = jax.nn.log_softmax(jnp.where(top, lt, -jnp.inf), axis=-1)
        out.append(jnp.where(some, jnp.where(passing, restricted, -jnp.inf), defer))
    return tuple(out)


@mdp_jit(static_argnames=("score",))
def threshold_bound(mdp: BlockMDP, threshold, n, *, score="q") -> jax.Array:
    """Soft-mode bound (THEORY.md 3.5):
        KL(pi*_tau,seq || p_{tau,n,seq}) <= sum_h E_{s ~ pi*_tau} log(1 + chi2_tau(s)/n),
    chi2_tau = chi2(pi*_tau || pi_d) where a(s) > 0, chi2(pi* || pi_t) where a(s) = 0."""
    _check_mode("soft", score)
    lstar = optimal_policy(mdp)
    limit = threshold_limit_policy(mdp, threshold, target_mode="soft", score=score)
    per_state = []
    for h, (passing, _, _) in enumerate(_passing(mdp, threshold, score, lstar)):
        some = jnp.any(passing, axis=-1)
        qd, wd, _ = _weights(mdp.draft_logp[h], log_ratio(limit[h], mdp.draft_logp[h]))
        qt, wt, _ = _weights(mdp.target_logp[h], log_ratio(lstar[h], mdp.target_logp[h]))
        per_state.append(jnp.log1p(jnp.where(some, _chi2_w(qd, wd), _chi2_w(qt, wt)) / n))
    return jnp.sum(_expect(prefix_logp(limit), per_state))


@mdp_jit(static_argnames=("target_mode", "score"))
def threshold_kl_slope(mdp: BlockMDP, threshold, *, target_mode="soft", score="q") -> jax.Array:
    """Predicted slope d/dn KL(pi*_seq || p_{tau,n,seq}) as n -> inf.

    Soft target mode (THEORY.md 3.5): failing blocks keep only the mass
    (1 - a)^n T_n with T_n -> pi*, so
        slope = sum_h E_{s ~ pi*}[ pi*(P_tau^c | s) * (-log(1 - a(s))) ]  over 0 < a(s) < 1.
    Greedy target mode: T_n = BoN_n[pi_t, g] also decays on non-argmax blocks,
    BoN_n(y) ~ (1 - G(y))^n with G(y) = pi_t({g > g(y)} | s), so
        slope = sum_h E_{s ~ pi*}[ sum_{y not in P_tau} pi*(y|s) (-log(1 - a(s)) - log(1 - G(y))) ]
    over states with a(s) < 1 (always-defer states included).
    """
    _check_mode(target_mode, score)
    lstar = optimal_policy(mdp)
    per_state = []
    for h, (passing, log_fail, g) in enumerate(_passing(mdp, threshold, score, lstar)):
        some = jnp.any(passing, axis=-1)
        pstar = jnp.exp(lstar[h])
        if target_mode == "soft":
            inside = some & (log_fail > -jnp.inf)  # 0 < a < 1
            miss = jnp.sum(jnp.where(passing, 0.0, pstar), axis=-1)  # pi*(P^c|s)
            per_state.append(jnp.where(inside, miss * -log_fail, 0.0))
        else:
            lt = mdp.target_logp[h]
            above = g[..., None, :] > g[..., :, None]  # [s, y, y']: g(y') > g(y)
            log_g = logsumexp(jnp.where(above, lt[..., None, :], -jnp.inf), axis=-1)
            rate = jnp.where(some, -log_fail, 0.0)[:, None] - jnp.log1p(-jnp.exp(log_g))
            per_state.append(jnp.sum(jnp.where(passing, 0.0, pstar * rate), axis=-1))
    return jnp.sum(_expect(prefix_logp(lstar), per_state))


@mdp_jit(static_argnames=("score",))
def threshold_reverse_kl_limit(mdp: BlockMDP, threshold, *, score="q") -> jax.Array:
    """lim_n KL(p_{tau,n,seq} || pi*_seq) = KL(pi*_tau,seq || pi*_seq)
    = sum_h E_{s ~ pi*_tau}[ -log pi*(P_tau(s) | s) ] 1{a(s) > 0}  (soft mode)."""
    _check_mode("soft", score)
    lstar = optimal_policy(mdp)
    limit = threshold_limit_policy(mdp, threshold, target_mode="soft", score=score)
    per_state = []
    for h, (passing, _, _) in enumerate(_passing(mdp, threshold, score, lstar)):
        some = jnp.any(passing, axis=-1)
        log_mass = logsumexp(jnp.where(passing, lstar[h], -jnp.inf), axis=-1)
        per_state.append(jnp.where(some, -log_mass, 0.0))
    return jnp.sum(_expect(prefix_logp(limit), per_state))
