"""Monte Carlo samplers (specs_theory.simulate) against the exact laws.

I14: every sampler's empirical law matches its exact law (exact.py) by a
pooled Pearson goodness-of-fit test (p > 1e-4, cells with expected count < 5
pooled; never raw per-cell z-scores), with fixed keys and M = 200k draws.
I15: SMC with N = 1 is pi_d,seq, with H = 1 it is SIR_N, E[Zhat] = 1 for
every resampling scheme. Plus deferral frequencies against rho_def, k > 1
beams, jit/vmap/batching consistency and seeded reproducibility.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import specs_theory  # noqa: F401  (float64)
from specs_theory import exact, resample
from specs_theory import simulate as S
from specs_theory.gof import pooled_gof_pvalue
from specs_theory.mdp import prefix_logp, random_mdp, sequence_logp

M = 200_000  # Monte Carlo draws per law check
P_MIN = 1e-4  # I14: pooled GOF p-value floor
M_SMC = 100_000  # SMC runs (N = 8 particles each)
SMALL = 20  # runs for the non-statistical checks (one compiled shape, shared)


@pytest.fixture(scope="module")
def mdp():
    """K = 3, H = 3, uniform rewards: 27 sequences."""
    return random_mdp(jax.random.key(0), K=3, H=3, beta=0.5, draft_noise=1.0)


@pytest.fixture(scope="module")
def sparse_mdp():
    """K = 4, H = 2, rewards in {0, 1}: exact ties in Q* and r."""
    return random_mdp(jax.random.key(1), K=4, H=2, beta=0.25, reward_kind="sparse", sparse_p=0.3)


def _probs(logp):
    p = np.exp(np.asarray(logp, dtype=np.float64))
    assert abs(p.sum() - 1.0) < 1e-9
    return p / p.sum()


def _gof(samples, logp):
    """Pooled GOF p-value of sequence samples against a law given by log-probs."""
    p = _probs(logp)
    counts = np.bincount(np.asarray(samples), minlength=p.size)
    assert counts.sum() == np.asarray(samples).size
    return pooled_gof_pvalue(counts, p)


def _assert_law(samples, logp):
    pval = _gof(samples, logp)
    print(f"pooled GOF p-value {pval:.3g}")  # shown with pytest -s
    assert pval > P_MIN, f"pooled GOF p-value {pval:.3g}"
    return pval


# --------------------------------------------------------------------------
# I14: SPECS


def test_specs_ideal_matches_exact(mdp):
    n = 4
    samples, info = S.simulate_specs(jax.random.key(10), mdp, n, M)
    assert samples.shape == (M,)
    _assert_law(samples, sequence_logp(exact.specs_policy(mdp, n).logp))
    assert not np.asarray(info.deferred).any()
    assert info.deferred.shape == (M, mdp.H)
    np.testing.assert_array_equal(info.beams[:, 0], samples)
    np.testing.assert_array_equal(info.reward, mdp.reward[samples])


THRESHOLD_CASES = [
    # (threshold, target_mode, score)
    (0.5, "soft", "q"),
    (0.5, "greedy", "q"),
    (0.0, "soft", "a"),
]


@pytest.mark.parametrize("threshold,target_mode,score", THRESHOLD_CASES)
def test_specs_threshold_matches_exact_law_and_deferrals(mdp, threshold, target_mode, score):
    n = 4
    samples, info = S.simulate_specs(
        jax.random.key(20), mdp, n, M, threshold=threshold, target_mode=target_mode, score=score
    )
    policy = exact.specs_policy(mdp, n, threshold=threshold, target_mode=target_mode, score=score)
    _assert_law(samples, sequence_logp(policy.logp))

    # Deferral at depth h: joint law of (state s_h, deferred) is
    # P(s_h) * (1 - rho_def(s_h), rho_def(s_h)).
    deferred = np.asarray(info.deferred)
    reach = prefix_logp(policy.logp)
    samples = np.asarray(samples)
    for h in range(mdp.H):
        state = samples // mdp.K ** (mdp.H - h)
        rho = np.asarray(policy.defer_prob[h])
        p_state = np.exp(np.asarray(reach[h]))
        cells = 2 * state + deferred[:, h]
        probs = np.stack([p_state * (1 - rho), p_state * rho], axis=1).ravel()
        counts = np.bincount(cells, minlength=probs.size)
        pval = pooled_gof_pvalue(counts, probs / probs.sum())
        print(f"deferrals at depth {h}: pooled GOF p-value {pval:.3g}")
        assert pval > P_MIN, f"deferrals at depth {h}: pooled GOF p-value {pval:.3g}"
    # Expected number of deferred blocks, within 5 standard errors.
    per_run = deferred.sum(axis=1)
    expected = float(exact.expected_deferrals(mdp, policy))
    assert 0.05 < expected / mdp.H < 0.95  # the case exercises both branches
    assert abs(per_run.mean() - expected) <= 5 * per_run.std() / np.sqrt(M)


def test_specs_greedy_deferral_with_reward_ties(sparse_mdp):
    # Q* of the last block is r in {0, 1}: exact ties for the greedy target.
    n = 3
    kw = dict(threshold=0.5, target_mode="greedy", score="q")
    samples, info = S.simulate_specs(jax.random.key(21), sparse_mdp, n, M, **kw)
    policy = exact.specs_policy(sparse_mdp, n, **kw)
    _assert_law(samples, sequence_logp(policy.logp))
    assert np.asarray(info.deferred).any()


@settings(max_examples=8)
@given(frac=st.floats(0.0, 1.0))
def test_specs_threshold_extremes(mdp, frac):
    """tau >= max Q* defers every block; tau < min Q* never defers (I10)."""
    R = mdp.reward_range
    key = jax.random.key(22)
    _, info = S.simulate_specs(key, mdp, 4, SMALL, threshold=R * (1 + frac))
    assert np.asarray(info.deferred).all()
    _, info = S.simulate_specs(key, mdp, 4, SMALL, threshold=-R * frac - 1e-9)
    assert not np.asarray(info.deferred).any()


# --------------------------------------------------------------------------
# I14: beam search and best-of-n


@pytest.mark.parametrize("generator", ["target", "draft"])
def test_beam_search_matches_exact(sparse_mdp, generator):
    n = 3
    samples, info = S.simulate_beam_search(jax.random.key(30), sparse_mdp, n, M, generator=generator)
    _assert_law(samples, sequence_logp(exact.beam_policy(sparse_mdp, n, generator=generator)))
    np.testing.assert_array_equal(info.beams[:, 0], samples)


@pytest.mark.parametrize("generator", ["target", "draft"])
def test_best_of_n_matches_exact(sparse_mdp, generator):
    n = 3
    samples, info = S.simulate_best_of_n(jax.random.key(31), sparse_mdp, n, M, generator=generator)
    _assert_law(samples, exact.best_of_n_policy(sparse_mdp, n, generator=generator))
    assert np.all(np.asarray(info.reward) >= np.asarray(info.mean_reward) - 1e-12)


def test_specs_always_defer_greedy_is_target_beam_search(sparse_mdp):
    """tau above every score, greedy target mode: SPECS = beam search with the
    target generator (the paper's threshold -> 1 limit), in law."""
    n = 3
    samples, info = S.simulate_specs(
        jax.random.key(32), sparse_mdp, n, M, threshold=2.0, target_mode="greedy"
    )
    assert np.asarray(info.deferred).all()
    _assert_law(samples, sequence_logp(exact.beam_policy(sparse_mdp, n, generator="target")))


# --------------------------------------------------------------------------
# I15: SMC


def test_smc_one_particle_is_draft_law(mdp):
    samples, info = S.simulate_smc(jax.random.key(40), mdp, 1, M)
    _assert_law(samples, sequence_logp(mdp.draft_logp))
    np.testing.assert_allclose(info.ess, 1.0, rtol=1e-12)


def test_smc_one_block_is_sir():
    mdp1 = random_mdp(jax.random.key(2), K=5, H=1, beta=0.5, draft_noise=1.5)
    N = 4
    samples, info = S.simulate_smc(jax.random.key(41), mdp1, N, M)
    log_q = mdp1.draft_logp[0][0]
    log_w = exact.optimal_policy(mdp1)[0][0] - log_q
    _assert_law(samples, jnp.log(exact.sir_law(log_q, log_w, N)))
    assert not np.asarray(info.resampled).any()  # never after the last block


@pytest.mark.parametrize("resampling", sorted(resample.RESAMPLERS))
def test_smc_zhat_unbiased_every_scheme(mdp, resampling):
    num_runs = M_SMC
    samples, info = S.simulate_smc(jax.random.key(42), mdp, 8, num_runs, resampling=resampling)
    z = np.exp(np.asarray(info.log_Z))
    assert abs(z.mean() - 1.0) <= 4 * z.std() / np.sqrt(num_runs)
    resampled = np.asarray(info.resampled)
    assert resampled[:, :-1].all() and not resampled[:, -1].any()
    ess = np.asarray(info.ess)
    assert np.all((ess >= 1 - 1e-9) & (ess <= 8 + 1e-9))
    assert np.all((samples >= 0) & (samples < mdp.K**mdp.H))


def test_smc_adaptive_resampling(mdp):
    """ESS-triggered resampling keeps E[Zhat] = 1; ess_threshold = 0 never
    resamples, which makes the output SIR_N over whole sequences."""
    N = 8
    num_runs = M_SMC
    _, info = S.simulate_smc(jax.random.key(43), mdp, N, num_runs, ess_threshold=0.5)
    z = np.exp(np.asarray(info.log_Z))
    assert abs(z.mean() - 1.0) <= 4 * z.std() / np.sqrt(num_runs)
    resampled = np.asarray(info.resampled)
    ess = np.asarray(info.ess)
    np.testing.assert_array_equal(resampled[:, :-1], ess[:, :-1] < 0.5 * N)
    assert 0 < resampled[:, :-1].mean() < 1

    samples, info = S.simulate_smc(jax.random.key(44), mdp, N, num_runs, ess_threshold=0.0)
    assert not np.asarray(info.resampled).any()
    _assert_law(samples, jnp.log(exact.sequence_sir_law(mdp, N)))


# --------------------------------------------------------------------------
# k > 1 beams


@pytest.mark.parametrize("replace", [False, True])
def test_specs_multi_beam_returns_valid_beams(mdp, replace):
    k, n, num_runs = 3, 9, 2000
    samples, info = S.simulate_specs(
        jax.random.key(50), mdp, n, num_runs, k=k, threshold=0.55, replace=replace
    )
    beams, samples = np.asarray(info.beams), np.asarray(samples)
    assert beams.shape == (num_runs, k)
    assert np.all((beams >= 0) & (beams < mdp.K**mdp.H))
    assert np.all(np.any(beams == samples[:, None], axis=1))  # the answer is a beam
    reward = np.asarray(mdp.reward)
    np.testing.assert_array_equal(reward[samples], reward[beams].max(axis=1))
    np.testing.assert_array_equal(info.reward, reward[samples])
    deferred = np.asarray(info.deferred)
    assert 0 < deferred.mean() < 1
    filled = np.asarray(info.num_filled)
    assert np.all((filled >= 0) & (filled < k))
    assert not filled[deferred].any()  # the target phase always fills k slots
    if replace:
        assert not filled.any()
    else:
        assert filled.any()  # some blocks had fewer than k eligible drafts


def test_beam_search_multi_beam_sorted(mdp):
    k, n = 3, 9
    samples, info = S.simulate_beam_search(jax.random.key(51), mdp, n, 2000, k=k)
    reward = np.asarray(mdp.reward)[np.asarray(info.beams)]
    assert np.all(np.diff(reward, axis=1) <= 0)  # best first
    np.testing.assert_array_equal(samples, info.beams[:, 0])
    assert np.all((info.beams >= 0) & (info.beams < mdp.K**mdp.H))


# --------------------------------------------------------------------------
# jit / vmap / batching consistency, reproducibility, validation


def test_batch_size_does_not_change_results(mdp):
    key = jax.random.key(60)
    a = S.simulate_specs(key, mdp, 4, SMALL, threshold=0.5)
    b = S.simulate_specs(key, mdp, 4, SMALL, threshold=0.5, batch_size=8)  # lax.map, padded
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("num_needed", [0, 1, 3, 4, 5, 32])
def test_where_needed_matches_full_evaluation(num_needed):
    """The deferral branch is computed on the needed runs alone when at most
    B // 8 need it (here 4 of 32), else on all: the needed rows are equal
    either way, whichever rows need it."""
    x = jax.random.normal(jax.random.key(64), (32, 5))
    fn = lambda row, scale: (jnp.cumsum(row) * scale, jnp.argmax(row))  # noqa: E731
    scale = jnp.arange(32.0)
    full = jax.vmap(fn)(x, scale)
    needed = np.zeros(32, bool)
    needed[np.random.default_rng(num_needed).permutation(32)[:num_needed]] = True
    out = jax.jit(S._where_needed, static_argnums=1)(jnp.asarray(needed), fn, (x, scale))
    for got, want in zip(out, full):
        np.testing.assert_array_equal(np.asarray(got)[needed], np.asarray(want)[needed])


def test_vmap_and_jit_consistency(mdp):
    keys = jax.random.split(jax.random.key(61), 3)
    run = lambda key, m: S.simulate_specs(key, m, 4, SMALL, threshold=0.5)  # noqa: E731
    looped = [run(key, mdp) for key in keys]
    vmapped = jax.vmap(run, in_axes=(0, None))(keys, mdp)
    jitted = jax.jit(run)(keys[1], mdp)  # the MDP traced, not constant
    for i, out in enumerate(looped):
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[i], y), vmapped, out)
    jax.tree.map(np.testing.assert_array_equal, jitted, looped[1])


def test_seeded_reproducibility(mdp, sparse_mdp):
    # Same shapes as the tests above, so nothing new is compiled.
    for fn, args, kwargs in [
        (S.simulate_specs, (mdp, 4, SMALL), dict(threshold=0.5)),
        (S.simulate_beam_search, (mdp, 9, 2000), dict(k=3)),
        (S.simulate_best_of_n, (sparse_mdp, 3, M), {}),
        (S.simulate_smc, (mdp, 8, M_SMC), {}),
    ]:
        a = fn(jax.random.key(62), *args, **kwargs)
        b = fn(jax.random.key(62), *args, **kwargs)
        c = fn(jax.random.key(63), *args, **kwargs)
        jax.tree.map(np.testing.assert_array_equal, a, b)
        assert not np.array_equal(a[0], c[0]), fn.__name__


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda m: S.simulate_specs(jax.random.key(0), m, 0, 10), "n must"),
        (lambda m: S.simulate_specs(jax.random.key(0), m, 4, 10, k=5), "k = 5"),
        (lambda m: S.simulate_specs(jax.random.key(0), m, 4, 10, target_mode="hard"), "target_mode"),
        (lambda m: S.simulate_specs(jax.random.key(0), m, 4, 10, score="v"), "score"),
        (lambda m: S.simulate_specs(jax.random.key(0), m, 4, 10, temperature=-1.0), "temperature"),
        (lambda m: S.simulate_specs(jax.random.key(0), m, 4, 10.0), "num_runs"),
        (lambda m: S.simulate_beam_search(jax.random.key(0), m, 4, 10, generator="x"), "generator"),
        (lambda m: S.simulate_best_of_n(jax.random.key(0), m, 4, 10, generator="x"), "generator"),
        (lambda m: S.simulate_smc(jax.random.key(0), m, 4, 10, resampling="x"), "resampling"),
        (lambda m: S.simulate_smc(jax.random.key(0), m, 4, 10, ess_threshold=-1), "ess_threshold"),
    ],
)
def test_bad_arguments_raise(mdp, call, match):
    with pytest.raises(ValueError, match=match):
        call(mdp)
