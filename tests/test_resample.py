"""Tests of the SMC resampling schemes, specs_theory.resample."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import specs_theory  # noqa: F401
from specs_theory import resample as R
from specs_theory.gof import pooled_gof_pvalue

SCHEMES = sorted(R.RESAMPLERS)


@pytest.mark.parametrize("name", SCHEMES)
def test_counts_sum_to_n_and_zero_weights_never_chosen(name):
    fn = R.get_resampler(name)
    lw = jnp.log(jnp.array([0.1, 0.0, 0.3, 0.0, 0.6]))
    for seed in range(20):
        idx = np.asarray(fn(jax.random.key(seed), lw, 7))
        assert idx.shape == (7,) and idx.dtype == np.int32
        assert np.bincount(idx, minlength=5).sum() == 7
        assert not np.isin(idx, [1, 3]).any()


@pytest.mark.parametrize("n", [1, 2, 3, 7, 63, 64, 65, 1024, 1025, 3000])
def test_two_level_count_equals_searchsorted(n):
    """The inverse-CDF count (two-level up to 1024 particles, binary search
    above) is searchsorted(side="right"), also on ties, zero weights and
    queries equal to a cumulative sum."""
    rng = np.random.default_rng(n)
    for _ in range(5):
        cdf = np.cumsum(rng.random(n) * (rng.random(n) < 0.7))
        query = np.concatenate([rng.random(50) * cdf[-1], cdf[:5], [0.0]])
        got = R._count_at_most(jnp.asarray(cdf), jnp.asarray(query))
        np.testing.assert_array_equal(got, np.searchsorted(cdf, query, side="right"))


@pytest.mark.parametrize("name", ["systematic", "stratified"])
def test_low_variance_counts_within_one_of_expectation(name):
    fn = R.get_resampler(name)
    w = np.array([0.05, 0.25, 0.1, 0.4, 0.2])
    for num in (5, 8, 13):
        for seed in range(30):
            counts = np.bincount(np.asarray(fn(jax.random.key(seed), jnp.log(w), num)), minlength=5)
            if name == "stratified":
                # stratified: each count within 1 of N w up to one extra straddled stratum
                assert np.all(np.abs(counts - num * w) < 2)
            else:
                assert np.all(np.abs(counts - num * w) < 1 + 1e-9), (counts, num * w)


def test_residual_keeps_the_deterministic_copies():
    w = np.array([0.05, 0.25, 0.1, 0.4, 0.2])
    for num in (5, 8, 13, 20):
        floor = np.floor(num * w + 1e-9)
        for seed in range(30):
            counts = np.bincount(np.asarray(R.residual(jax.random.key(seed), jnp.log(w), num)), minlength=5)
            assert counts.sum() == num
            assert (counts >= floor).all(), (counts, num * w)


@pytest.mark.parametrize("name", SCHEMES)
def test_unbiased_offspring_counts(name):
    fn = jax.jit(jax.vmap(R.get_resampler(name), in_axes=(0, None, None)), static_argnums=2)
    w = np.array([0.05, 0.25, 0.1, 0.4, 0.2])
    num, reps = 6, 40_000
    idx = np.asarray(fn(jax.random.split(jax.random.key(1), reps), jnp.log(jnp.asarray(w)), num))
    mean_counts = np.stack([np.bincount(r, minlength=5) for r in idx[:2000]]).mean(0)
    np.testing.assert_allclose(mean_counts, num * w, atol=0.1)
    # The marginal law of one ancestor slot pooled over slots is w.
    counts = np.bincount(idx.ravel(), minlength=5)
    assert abs(counts.sum() - num * reps) == 0
    np.testing.assert_allclose(counts / counts.sum(), w, atol=5e-3)


def test_multinomial_law_gof():
    w = np.array([0.05, 0.25, 0.1, 0.4, 0.2])
    idx = np.asarray(R.multinomial(jax.random.key(0), jnp.log(jnp.asarray(w)), 100_000))
    assert pooled_gof_pvalue(np.bincount(idx, minlength=5), w) > 1e-4


@pytest.mark.parametrize("name", SCHEMES)
def test_float32_cumsum_ending_below_one(name):
    # Many tiny weights and one zero weight at the end: in float32 the
    # cumulative sum can end below 1, and the zero-weight last particle must
    # still never be chosen.
    w = np.full(1001, 1.0 / 1000, dtype=np.float32)
    w[-1] = 0.0
    lw = jnp.log(jnp.asarray(w, dtype=jnp.float32))
    for seed in range(10):
        idx = np.asarray(R.get_resampler(name)(jax.random.key(seed), lw, 1000))
        assert idx.max() < 1000 and idx.min() >= 0


@pytest.mark.parametrize("name", SCHEMES)
def test_jit_matches_eager_and_huge_log_weights(name):
    fn = R.get_resampler(name)
    lw = jnp.array([1000.0, 1001.0, -jnp.inf, 999.0])
    eager = fn(jax.random.key(4), lw, 9)
    jitted = jax.jit(fn, static_argnums=2)(jax.random.key(4), lw, 9)
    np.testing.assert_array_equal(eager, jitted)
    assert not np.isin(np.asarray(eager), [2]).any()


def test_unknown_scheme_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown resampling scheme 'bogus'"):
        R.get_resampler("bogus")
    with pytest.raises(ValueError, match="num_samples"):
        R.systematic(jax.random.key(0), jnp.zeros(3), 0)
    with pytest.raises(ValueError, match="log_weights must be 1-D"):
        R.residual(jax.random.key(0), jnp.zeros((2, 3)), 2)


@given(
    weights=st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 10.0)), min_size=1, max_size=12).filter(
        lambda w: sum(w) > 0
    ),
    num=st.sampled_from([1, 3, 16]),
    name=st.sampled_from(SCHEMES),
    seed=st.integers(0, 1000),
)
def test_property_valid_ancestors(weights, num, name, seed):
    w = np.array(weights)
    idx = np.asarray(R.get_resampler(name)(jax.random.key(seed), jnp.log(jnp.asarray(w)), num))
    assert idx.shape == (num,)
    assert ((idx >= 0) & (idx < len(w))).all()
    assert (w[idx] > 0).all()
