"""Tests of specs_theory.mdp: construction, validation, indexing, pytree."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import specs_theory  # noqa: F401  (float64)
from specs_theory.exact import optimal_policy, soft_values
from specs_theory.mdp import (
    BlockMDP,
    children,
    prefix_logp,
    random_mdp,
    sequence_logp,
    sequence_view,
)


@pytest.fixture(scope="module")
def mdp():
    return random_mdp(jax.random.key(0), K=3, H=3, beta=0.5)


def _probs(tables):
    return [np.exp(np.asarray(t)) for t in tables]


def test_random_mdp_shapes_and_laws(mdp):
    assert (mdp.K, mdp.H, mdp.beta, mdp.reward_range) == (3, 3, 0.5, 1.0)
    for name in ("target_logp", "draft_logp"):
        tables = getattr(mdp, name)
        assert len(tables) == 3
        for h, lp in enumerate(tables):
            assert lp.shape == (3**h, 3) and lp.dtype == jnp.float64
            assert np.all(np.isfinite(np.asarray(lp)))  # A1: full support
            np.testing.assert_allclose(np.exp(np.asarray(lp)).sum(-1), 1.0, atol=1e-12)
    r = np.asarray(mdp.reward)
    assert r.shape == (27,) and r.dtype == np.float64
    assert r.min() >= 0 and r.max() <= 1
    # the draft differs from the target (draft_noise = 1) ...
    assert not np.allclose(mdp.target_logp[1], mdp.draft_logp[1])
    # ... and equals it with draft_noise = 0
    exact = random_mdp(jax.random.key(0), K=3, H=3, beta=0.5, draft_noise=0.0)
    for lt, ld in zip(exact.target_logp, exact.draft_logp):
        np.testing.assert_allclose(lt, ld, atol=1e-13)


def test_random_mdp_sparse_reward_has_a_hit():
    for seed in range(5):
        m = random_mdp(
            jax.random.key(seed), K=2, H=2, beta=1.0, reward_range=3.0,
            reward_kind="sparse", sparse_p=0.01,
        )
        r = np.asarray(m.reward)
        assert set(np.unique(r)) <= {0.0, 3.0}
        assert (r == 3.0).sum() >= 1


def test_random_mdp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="reward_kind"):
        random_mdp(jax.random.key(0), K=2, H=2, beta=1.0, reward_kind="dense")
    with pytest.raises(ValueError, match="beta"):
        random_mdp(jax.random.key(0), K=2, H=2, beta=0.0)


def test_indexing_matches_explicit_enumeration(mdp):
    """idx = sum_j y_j K^(H-j) and the sequence law is the product of block laws."""
    seq = np.asarray(sequence_logp(mdp, mdp.target_logp))
    K = mdp.K
    for ys in itertools.product(range(K), repeat=mdp.H):
        lp, s = 0.0, 0
        for h, y in enumerate(ys):
            lp += float(mdp.target_logp[h][s, y])
            s = s * K + y
        assert s == sum(y * K ** (mdp.H - 1 - j) for j, y in enumerate(ys))
        assert seq[s] == pytest.approx(lp, abs=1e-13)
    np.testing.assert_array_equal(children(jnp.array([0, 2]), 3), [[0, 1, 2], [6, 7, 8]])


def test_prefix_logp_marginalises(mdp):
    reach = prefix_logp(mdp.draft_logp)
    assert [r.shape for r in reach] == [(1,), (3,), (9,), (27,)]
    for h in range(mdp.H):
        # P(s_h) = sum over children of P(s_h o y)
        np.testing.assert_allclose(
            np.exp(reach[h + 1]).reshape(-1, 3).sum(-1), np.exp(reach[h]), atol=1e-14
        )


def test_pytree_roundtrip_and_jit(mdp):
    leaves, treedef = jax.tree_util.tree_flatten(mdp)
    assert len(leaves) == 2 * mdp.H + 1
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert (back.K, back.H, back.beta, back.reward_range) == (mdp.K, mdp.H, mdp.beta, 1.0)
    v0 = jax.jit(lambda m: soft_values(m)[0])(mdp)
    np.testing.assert_allclose(v0, soft_values(mdp)[0], rtol=0, atol=1e-15)
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, mdp)
    np.testing.assert_allclose(doubled.reward, 2 * mdp.reward)


def test_from_probs_roundtrip(mdp):
    m2 = BlockMDP.from_probs(_probs(mdp.target_logp), _probs(mdp.draft_logp), mdp.reward, 0.5)
    assert m2.reward_range == pytest.approx(float(np.max(mdp.reward)))
    for a, b in zip(m2.target_logp, mdp.target_logp):
        np.testing.assert_allclose(a, b, atol=1e-14)
    zero = BlockMDP.from_probs(_probs(mdp.target_logp), _probs(mdp.draft_logp), np.zeros(27), 1.0)
    assert zero.reward_range == 1.0


def _bad_inputs(mdp):
    t, d, r = _probs(mdp.target_logp), _probs(mdp.draft_logp), np.asarray(mdp.reward)
    wrong_shape = t[:1] + [t[1][:2]] + t[2:]
    not_normalised = [x.copy() for x in t]
    not_normalised[2][4] *= 1.01
    zero_entry = [x.copy() for x in d]
    zero_entry[1][2] = [1.0, 0.0, 0.0]
    nan_entry = [x.copy() for x in d]
    nan_entry[0][0, 1] = np.nan
    neg_reward = r.copy()
    neg_reward[5] = -0.1
    inf_reward = r.copy()
    inf_reward[3] = np.inf
    return [
        (dict(target_probs=wrong_shape), r"target_probs\[1\] must have shape"),
        (dict(target_probs=not_normalised), r"target_probs\[2\] row 4 sums to"),
        (dict(draft_probs=zero_entry), r"draft_probs\[1\] row 2 .*full support"),
        (dict(draft_probs=nan_entry), r"draft_probs\[0\] row 0"),
        (dict(draft_probs=d[:2]), r"draft_probs must hold H = 3"),
        (dict(target_probs=[]), r"target_probs must hold H >= 1"),
        (dict(reward=r[:5]), r"reward must have shape"),
        (dict(reward=neg_reward), r"reward\[5\] = -0.1"),
        (dict(reward=inf_reward), r"reward must be finite; entry 3"),
        (dict(reward=r * 2, reward_range=1.0), r"reward must lie in \[0, reward_range=1.0\]"),
        (dict(reward_range=-1.0), r"reward_range must be finite and > 0"),
        (dict(beta=0.0), r"beta must be finite and > 0"),
        (dict(beta=np.nan), r"beta must be finite and > 0"),
    ]


@pytest.mark.parametrize("case", range(13))
def test_from_probs_rejects_bad_input(mdp, case):
    kwargs, message = _bad_inputs(mdp)[case]
    args = dict(
        target_probs=_probs(mdp.target_logp),
        draft_probs=_probs(mdp.draft_logp),
        reward=np.asarray(mdp.reward),
        beta=0.5,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        BlockMDP.from_probs(
            args.pop("target_probs"), args.pop("draft_probs"), args.pop("reward"),
            args.pop("beta"), **args,
        )


def test_sequence_view_is_the_same_problem(mdp):
    seq = sequence_view(mdp)
    assert (seq.K, seq.H) == (27, 1)
    assert seq.target_logp[0].shape == (1, 27)
    np.testing.assert_allclose(soft_values(seq)[0], soft_values(mdp)[0], atol=1e-14)
    np.testing.assert_allclose(
        optimal_policy(seq)[0][0], sequence_logp(optimal_policy(mdp)), atol=1e-13
    )
