"""Tests of specs_theory.metrics and specs_theory.bounds: Theorems B and C
(I7, I8), Corollary C1 and its coverage forms, Props D and E, the threshold
limit (THEORY.md 3.5) and the reference behaviour of section 8."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import specs_theory  # noqa: F401  (float64)
from strategies import sir_cases  # tests/strategies.py
from specs_theory.bounds import (
    coverage,
    prop_d_bound,
    prop_e_constant,
    prop_e_delta,
    sequence_bound,
    sequence_chi2,
    sequence_prop_d,
    sequence_prop_e_constant,
    theorem_b_bound,
    theorem_c_bound,
    threshold_bound,
    threshold_kl_slope,
    threshold_limit_policy,
    threshold_reverse_kl_limit,
)
from specs_theory.exact import (
    optimal_policy,
    q_values,
    sequence_sir_law,
    sir_law,
    sir_logprobs,
    specs_policy,
)
from specs_theory.mdp import random_mdp, sequence_logp
from specs_theory.metrics import chain_kl_small, chain_rule_kl, chi2, kl, sequence_kl, tv

NS = [2**k for k in range(13)]  # 1 .. 4096


def _slack(bound):
    """Relative slack 1e-9 (I8) plus a rounding floor."""
    return bound * (1 + 1e-9) + 1e-14


def _pi_w_log(log_q, log_w):
    lw = log_q + log_w
    return lw - jax.scipy.special.logsumexp(lw)


# --------------------------------------------------------------------------
# metrics


def test_divergences_basic():
    p = np.array([np.log(0.5), np.log(0.5), -np.inf])
    q = np.log([0.25, 0.25, 0.5])
    assert float(kl(p, q)) == pytest.approx(np.log(2), abs=1e-15)  # 0 log 0 = 0
    assert float(kl(q, p)) == np.inf  # q puts mass where p has none
    assert float(kl(p, p)) == 0.0
    assert float(tv(p, q)) == pytest.approx(0.5, abs=1e-15)
    assert float(chi2(p, q)) == pytest.approx(0.25 / 0.25 * 2 - 1, abs=1e-15)
    assert float(chi2(q, p)) == np.inf
    rng = np.random.default_rng(0)
    a, b = (np.log(rng.dirichlet(np.ones(6), size=4)) for _ in range(2))
    np.testing.assert_allclose(chi2(a, b), np.sum(np.exp(2 * a - b), -1) - 1, atol=1e-13)
    assert np.all(tv(a, b) <= np.sqrt(kl(a, b) / 2))  # Pinsker
    assert np.all(kl(a, b) <= np.log1p(chi2(a, b)))


def test_chain_rule_kl_per_depth():
    m = random_mdp(jax.random.key(0), K=3, H=3, beta=0.5)
    terms = chain_rule_kl(m.target_logp, m.draft_logp)
    assert terms.shape == (3,) and np.all(terms > 0)
    assert float(terms[0]) == pytest.approx(float(kl(m.target_logp[0][0], m.draft_logp[0][0])))
    assert float(jnp.sum(terms)) == pytest.approx(
        float(sequence_kl(m.target_logp, m.draft_logp)), abs=1e-12
    )


# --------------------------------------------------------------------------
# per-state Theorems B and C, Props D and E


@given(sir_cases())
def test_theorem_b_pointwise(case):
    """I7: SIR_n(y) >= pi_w(y) / (1 + (w(y)/Z - 1)/n), slack 1e-12."""
    log_q, log_w, n = case
    assert np.all(sir_law(log_q, log_w, n) >= theorem_b_bound(log_q, log_w, n) - 1e-12)


@given(sir_cases())
def test_theorem_c_per_state(case):
    """I8: KL(pi_w || SIR_n) <= pointwise <= log(1 + chi2/n) <= chi2/n."""
    log_q, log_w, n = case
    exact = float(kl(_pi_w_log(log_q, log_w), sir_logprobs(log_q, log_w, n)))
    b = theorem_c_bound(log_q, log_w, n)
    assert exact <= _slack(float(b.pointwise))
    assert float(b.pointwise) <= _slack(float(b.log_chi2))
    assert float(b.log_chi2) <= _slack(float(b.linear))


@given(sir_cases(zeros=False))
def test_prop_d_per_state(case):
    """Prop D (w_min > 0): forward and reverse KL under their O(1/n^2) bounds."""
    log_q, log_w, n = case
    pw, qn = _pi_w_log(log_q, log_w), sir_logprobs(log_q, log_w, n)
    fwd, rev = prop_d_bound(log_q, log_w, n)
    assert float(kl(pw, qn)) <= _slack(float(fwd))
    assert float(kl(qn, pw)) <= _slack(float(rev))


def test_prop_d_needs_positive_weights():
    fwd, rev = prop_d_bound(np.log([0.5, 0.5]), np.array([0.0, -np.inf]), 4)
    assert float(fwd) == np.inf and float(rev) == np.inf


def test_reverse_kl_not_bounded_by_chi2():
    """THEORY 3.2 counterexample: q = (.9, .1), w ~ (delta, 1), n = 4: the
    forward KL stays under Theorem C while the reverse KL blows up."""
    log_q = np.log([0.9, 0.1])
    expect = {1e-2: 1.05, 1e-4: 3.96, 1e-8: 10.0, 1e-16: 22.1}
    for delta, reverse in expect.items():
        log_w = np.log([delta, 1.0])
        pw, qn = _pi_w_log(log_q, log_w), sir_logprobs(log_q, log_w, 4)
        forward = float(kl(pw, qn))
        assert forward <= float(theorem_c_bound(log_q, log_w, 4).log_chi2)
        assert float(kl(qn, pw)) == pytest.approx(reverse, rel=0.01)
    assert forward == pytest.approx(1.07, abs=0.01)
    assert float(theorem_c_bound(log_q, log_w, 4).log_chi2) == pytest.approx(1.18, abs=0.01)


def test_prop_e_first_order():
    """n (rho - 1) -> delta at rate 1/n, and n^2 KL -> 1/2 Var_{pi_w}(w)."""
    rng = np.random.default_rng(5)
    log_q = np.log(rng.dirichlet(np.ones(4)))
    log_w = rng.normal(0, 1, 4)
    pw = _pi_w_log(log_q, log_w)
    delta = np.asarray(prop_e_delta(log_q, log_w))
    assert float(np.exp(pw) @ delta) == pytest.approx(0.0, abs=1e-14)
    c = float(prop_e_constant(log_q, log_w))
    errs = []
    for n in (100, 1000, 10_000):
        qn = sir_logprobs(log_q, log_w, n)
        rho_m1 = np.expm1(np.asarray(qn - pw))
        errs.append(np.max(np.abs(n * rho_m1 - delta)))
        if n == 10_000:
            assert n**2 * float(kl(pw, qn)) / c == pytest.approx(1.0, abs=2e-3)
            assert n**2 * float(kl(qn, pw)) / c == pytest.approx(1.0, abs=2e-3)
    assert 5 < errs[0] / errs[1] < 20 and 5 < errs[1] / errs[2] < 20


# --------------------------------------------------------------------------
# sequence level: Corollary C1, Prop D, Prop E on random instances


INSTANCES = {
    "main": dict(seed=1, K=5, H=3, beta=0.5),
    "hard": dict(seed=5, K=5, H=3, beta=0.25, draft_noise=1.5),  # c = 188
    "sparse": dict(seed=1, K=5, H=3, beta=0.1, reward_kind="sparse"),
}


def _instance(name):
    kw = dict(INSTANCES[name])
    return random_mdp(jax.random.key(kw.pop("seed")), **kw)


@pytest.fixture(scope="module")
def main_sweep():
    m = _instance("main")
    star = optimal_policy(m)
    pols = {n: specs_policy(m, n).logp for n in NS}
    return m, star, pols


def test_corollary_c1_and_forms(main_sweep):
    """C1: the exact KL is under every form, the forms are ordered; Pinsker and
    the reward gap follow; Prop D holds in both directions at every n."""
    m, star, pols = main_sweep
    seq_star = sequence_logp(star)
    cov = coverage(m)
    for n in NS:
        seq_n = sequence_logp(pols[n])
        fwd, rev = float(kl(seq_star, seq_n)), float(kl(seq_n, seq_star))
        b = sequence_bound(m, n)
        chain = [float(x) for x in (b.pointwise, b.chain, b.chibar2, b.coverage, b.reward_range)]
        assert fwd <= _slack(chain[0])
        assert all(lo <= _slack(hi) for lo, hi in zip(chain, chain[1:]))
        assert chain[2] == pytest.approx(3 * np.log1p(float(cov.chibar2) / n))
        t = float(tv(seq_star, seq_n))
        assert t <= np.sqrt(fwd / 2) + 1e-15
        r = np.asarray(m.reward)
        assert abs(float(np.exp(seq_star) @ r - np.exp(seq_n) @ r)) <= m.reward_range * t + 1e-15
        d_fwd, d_rev = sequence_prop_d(m, n, pols[n])
        assert fwd <= _slack(float(d_fwd)) and rev <= _slack(float(d_rev))
        assert float(d_rev) <= _slack(float(sequence_prop_d(m, n)[1]))


def test_theorem_c_bound_slope_is_minus_one(main_sweep):
    """Once n >= 10 max chi2_h(s) the bound decays like 1/n, the KL like 1/n^2."""
    m, star, pols = main_sweep
    max_chi2 = max(float(x.max()) for x in coverage(m).chi2_states)
    n0 = min(n for n in NS if n >= 10 * max_chi2)
    assert n0 <= 1024
    b0, b1 = float(sequence_bound(m, n0).chain), float(sequence_bound(m, 4096).chain)
    assert -1.05 <= np.log(b1 / b0) / np.log(4096 / n0) <= -0.95
    seq_star = sequence_logp(star)
    k0, k1 = (float(kl(seq_star, sequence_logp(pols[n]))) for n in (n0, 4096))
    assert np.log(k1 / k0) / np.log(4096 / n0) < -1.8  # NOT 1/n


@pytest.mark.parametrize("name", list(INSTANCES))
def test_prop_e_asymptotics(name, main_sweep):
    """THEORY 5: local slope over [2048, 4096] in [-2.1, -1.9] and
    n^2 KL / c in [0.9, 1.1] at n = 4096 (instances with c <= 200)."""
    m = main_sweep[0] if name == "main" else _instance(name)
    c = float(sequence_prop_e_constant(m))
    assert c <= 200
    seq_star = sequence_logp(optimal_policy(m))
    k = {n: float(kl(seq_star, sequence_logp(specs_policy(m, n).logp))) for n in (2048, 4096)}
    slope = np.log(k[4096] / k[2048]) / np.log(2)
    assert -2.1 <= slope <= -1.9
    assert 0.9 <= 4096**2 * k[4096] / c <= 1.1


def test_pre_asymptotic_regime_is_slower(main_sweep):
    """The local slope starts near -1 (n ~ 1) and reaches -2 only later."""
    m, star, pols = main_sweep
    seq_star = sequence_logp(star)
    k = [float(kl(seq_star, sequence_logp(pols[n]))) for n in NS]
    local = np.diff(np.log(k)) / np.log(2)
    assert local[0] > -1.3
    assert np.all(np.diff(k) < 0)  # decreasing on this grid (observed, THEORY 3.4)


def test_chain_kl_small_and_prop_e_far_out(main_sweep):
    """chain_kl_small = the sequence KL where both are accurate; far out (n up
    to 2^40, where the plain KL has lost its digits) it still follows c/n^2,
    and every state's law keeps mass 1 (Corollary A1)."""
    m, star, pols = main_sweep
    for n in (1, 16, 4096):
        assert float(chain_kl_small(star, pols[n])) == pytest.approx(float(sequence_kl(star, pols[n])), rel=1e-9)
    c = float(sequence_prop_e_constant(m))
    for n in (2**20, 2**30, 2**40):
        pol = specs_policy(m, n).logp
        assert n**2 * float(chain_kl_small(star, pol)) / c == pytest.approx(1.0, abs=1e-3)
        assert max(float(jnp.max(jnp.abs(jnp.exp(p).sum(-1) - 1))) for p in pol) <= 1e-12


# --------------------------------------------------------------------------
# coverage and the sequence view (THEORY 3.6)


def test_coverage_relations():
    m = _instance("main")
    cov = coverage(m)
    star = optimal_policy(m)
    for h in range(m.H):
        direct = chi2(star[h], m.draft_logp[h])
        np.testing.assert_allclose(cov.chi2_states[h], direct, rtol=1e-12)
        assert np.all(np.asarray(cov.chi2_states[h]) <= float(cov.C) - 1 + 1e-12)
        assert np.all(np.asarray(star[h] - m.target_logp[h]) <= m.reward_range / m.beta + 1e-12)
    assert float(cov.C) <= float(cov.C_td) * np.exp(m.reward_range / m.beta)
    assert float(cov.chibar2) == pytest.approx(float(np.mean(cov.chi2_levels)))
    # sequence-level chi2: the recursion equals the direct value
    seq_star, seq_d = sequence_logp(star), sequence_logp(m.draft_logp)
    chi2_seq = float(sequence_chi2(m))
    assert chi2_seq == pytest.approx(float(chi2(seq_star, seq_d)), rel=1e-11)
    kappa = min(1 + float(x.min()) for x in cov.chi2_states)  # 1 + chi2_h(s) >= kappa
    assert 1 + chi2_seq >= kappa**m.H
    for n in (1, 16, 256):
        law = jnp.log(sequence_sir_law(m, n))
        assert float(kl(seq_star, law)) <= _slack(float(np.log1p(chi2_seq / n)))


# --------------------------------------------------------------------------
# threshold: limit policy, bound, forward-KL slope, reverse-KL limit (3.5)


@pytest.fixture(scope="module")
def threshold_case():
    m = _instance("main")
    q_all = np.concatenate([np.ravel(x) for x in q_values(m)])
    taus = [float(np.quantile(q_all, f)) for f in (0.3, 0.5, 0.7)]
    return m, taus


def test_threshold_limit_policy_edges(threshold_case):
    m, _ = threshold_case
    star = optimal_policy(m)
    g_all = np.concatenate([np.ravel(x) for x in q_values(m)])
    for mode in ("soft", "greedy"):
        low = threshold_limit_policy(m, g_all.min() - 1, target_mode=mode)
        for a, b in zip(low, star):
            np.testing.assert_allclose(a, b, atol=1e-14)
    high = threshold_limit_policy(m, g_all.max(), target_mode="soft")
    for a, b in zip(high, star):
        np.testing.assert_allclose(a, b, atol=1e-14)
    greedy = threshold_limit_policy(m, g_all.max(), target_mode="greedy")
    Q = q_values(m)
    for h in range(m.H):
        top = np.asarray(Q[h]) == np.asarray(Q[h]).max(-1, keepdims=True)
        assert np.all((np.exp(greedy[h]) > 0) == top)


@pytest.mark.parametrize("mode", ["soft", "greedy"])
def test_threshold_policy_converges_to_limit(threshold_case, mode):
    m, taus = threshold_case
    for tau in taus:
        limit = sequence_logp(threshold_limit_policy(m, tau, target_mode=mode))
        p_n = sequence_logp(specs_policy(m, 10**6, threshold=tau, target_mode=mode).logp)
        assert float(tv(limit, p_n)) < 1e-5


def test_threshold_bound_and_slopes(threshold_case):
    """Soft mode: KL(pi*_tau || p_tau,n) <= bound; KL(pi* || p_tau,n) grows
    linearly with the predicted slope; the reverse KL tends to KL(pi*_tau || pi*)."""
    m, taus = threshold_case
    seq_star = sequence_logp(optimal_policy(m))
    for tau in taus:
        limit = sequence_logp(threshold_limit_policy(m, tau))
        fwd = {}
        for n in (1, 4, 32, 64, 256, 1024, 2048):
            seq_n = sequence_logp(specs_policy(m, n, threshold=tau).logp)
            assert float(kl(limit, seq_n)) <= _slack(float(threshold_bound(m, tau, n)))
            fwd[n] = float(kl(seq_star, seq_n))
        slope = float(threshold_kl_slope(m, tau))
        assert slope > 0.01
        assert (fwd[64] - fwd[32]) / 32 == pytest.approx(slope, abs=2e-3)
        assert (fwd[2048] - fwd[1024]) / 1024 == pytest.approx(slope, rel=1e-4)
        # greedy target mode: non-argmax failing blocks decay too, a steeper slope
        greedy = [
            specs_policy(m, n, threshold=tau, target_mode="greedy").logp for n in (1024, 2048)
        ]
        greedy = [float(kl(seq_star, sequence_logp(p))) for p in greedy]
        slope_g = float(threshold_kl_slope(m, tau, target_mode="greedy"))
        assert slope_g > slope
        assert (greedy[1] - greedy[0]) / 1024 == pytest.approx(slope_g, rel=1e-4)
        rev_limit = float(threshold_reverse_kl_limit(m, tau))
        assert rev_limit == pytest.approx(float(kl(limit, seq_star)), abs=1e-12)
        assert float(kl(seq_n, seq_star)) == pytest.approx(rev_limit, rel=1e-2)
