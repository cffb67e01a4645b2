"""Monte Carlo samplers on a block MDP: SPECS, beam search, best-of-n, SMC.

Every sampler is pure, takes the PRNG key first and returns ``(samples,
info)``: ``samples`` is a ``(num_runs,)`` array of complete responses encoded
as sequence indices in ``[0, K**H)`` (THEORY.md 1.1: ``idx = sum_j y_j
K**(H-j)``), ``info`` a NamedTuple of per-run diagnostics. Runs are
independent: run ``r`` uses ``jax.random.split(key, num_runs)[r]`` only, so a
result does not depend on ``batch_size`` (runs are vmapped in chunks of
``batch_size`` with ``jax.lax.map``; the default keeps a chunk near 2**18
candidates, which is cache-friendly on CPU). Everything is jitted with the
sizes (``n``, ``num_runs``, ``k``, ...) and the mode strings static; the
threshold, temperature, ESS threshold and the MDP's arrays are traced (no
recompilation when they change; a new K, H or beta, which are static in a
`BlockMDP`, does recompile). The H blocks are one ``jax.lax.scan`` over
per-state tables stacked across depths.

Every selection, deferral and resampling decision is made by
`specs_theory.select` and `specs_theory.resample`; this module only draws
candidate blocks and looks up their scores (`select.candidate_scores`,
evaluated once per (state, block)) and the idealised PRM values (A*, Q* from
`specs_theory.exact`, THEORY.md A2).

Exact laws these samplers must reproduce (tests/test_simulate.py):

* `simulate_specs` with the defaults (soft verification, temperature 1, no
  threshold, k = 1) is the idealised SPECS of THEORY.md 2, whose sequence law
  is ``exact.sequence_probs(mdp, exact.specs_policy(mdp, n))``; with a
  threshold it is the law of THEORY.md 2.2 (``specs_policy(..., threshold=,
  target_mode=, score=)``), deferring with probability ``(1 - a(s))**n``.
* `simulate_beam_search` (k = 1) is the product of BoN_n[pi, Q*] over states
  (THEORY.md 2.3), `simulate_best_of_n` is BoN_n over whole responses.
* `simulate_smc` is the block SMC of THEORY.md 4: N = 1 gives pi_d,seq, H = 1
  gives SIR_N[pi_d, w], and E[Zhat] = 1.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from specs_theory import exact, resample, select

__all__ = [
    "simulate_specs",
    "simulate_beam_search",
    "simulate_best_of_n",
    "simulate_smc",
    "sequence_counts",
    "all_finite",
    "SpecsInfo",
    "BeamSearchInfo",
    "BestOfNInfo",
    "SMCInfo",
]

# Default runs vmapped together: about this many candidates per chunk (bounds
# memory; chunks near this size ran fastest on the 2-core CPU box).
_CANDIDATES_PER_CHUNK = 1 << 18


# --------------------------------------------------------------------------
# diagnostics


class SpecsInfo(NamedTuple):
    """Diagnostics of `simulate_specs`.

    deferred: (num_runs, H) bool, True where block h went to the target
      (no draft candidate was eligible).
    num_filled: (num_runs, H) int32, beam slots that had no eligible draft
      to keep (fewer eligible drafts than k, sampling without replacement)
      and were filled by duplicating kept beams (always 0 for k = 1).
    beams: (num_runs, k) int, the k final beams (sequence indices).
    reward: (num_runs,) float, terminal reward of the returned sample.
    """

    deferred: jax.Array
    num_filled: jax.Array
    beams: jax.Array
    reward: jax.Array


class BeamSearchInfo(NamedTuple):
    """Diagnostics of `simulate_beam_search`.

    beams: (num_runs, k) int, final beams, best first (by reward = Q* of the
      last block).
    reward: (num_runs,) float, reward of the returned (best) beam.
    """

    beams: jax.Array
    reward: jax.Array


class BestOfNInfo(NamedTuple):
    """Diagnostics of `simulate_best_of_n`.

    reward: (num_runs,) float, reward of the returned response (the max).
    mean_reward: (num_runs,) float, mean reward of the n responses.
    """

    reward: jax.Array
    mean_reward: jax.Array


class SMCInfo(NamedTuple):
    """Diagnostics of `simulate_smc`.

    log_Z: (num_runs,) float, log of the unbiased normalising-constant
      estimate Zhat (E[Zhat] = Z = 1 under the idealised PRM).
    ess: (num_runs, H) float, effective sample size
      ``(sum w)^2 / sum w^2`` of the weights after reweighting at block h
      (before any resampling), in particles.
    resampled: (num_runs, H) bool, True where the particles were resampled
      after block h (never after the last block).
    """

    log_Z: jax.Array
    ess: jax.Array
    resampled: jax.Array


# --------------------------------------------------------------------------
# helpers
#
# The per-depth tables (h-th of shape (K**h, K)) are stacked into one
# (sum_h K**h, K) array; the prefix with index i at depth h is row
# offset_h + i, offset_h = sum_{j<h} K**j. The H blocks then run as one
# `jax.lax.scan` whose body is traced once, whatever H is.


class _Tables(NamedTuple):
    """Per-state tables. The state with prefix index i at depth h is row
    ``offset_h + i`` of the (sum_h K**h, K) CDFs and has the flat index
    ``(offset_h + i) * K + y`` into the (sum_h K**h * K,) per-(s, y) tables."""

    target_cdf: jax.Array  # cumulative probabilities along y, for `_draw`
    draft_cdf: jax.Array
    log_weight: jax.Array  # log pi_t/pi_d + A*/beta (select.candidate_scores)
    advantage: jax.Array  # A*(s, y), the idealised PRM
    q_value: jax.Array  # Q*(s, y) = V*(s.y)


def _stack(arrays) -> jax.Array:
    return jnp.concatenate([jnp.asarray(a) for a in arrays], axis=0)


def _cdf(logp) -> jax.Array:
    return jnp.cumsum(jnp.exp(logp), axis=-1)


def _tables(mdp) -> _Tables:
    """Lookup tables of an MDP (traceable: called inside jit).

    The SPECS score (= SMC log G) is elementwise in (s, y), so
    `select.candidate_scores` is evaluated once on the whole table and each
    candidate looks its score up, instead of three lookups and a score per
    candidate."""
    values = exact.soft_values(mdp)
    target, draft = _stack(mdp.target_logp), _stack(mdp.draft_logp)
    advantage = _stack(exact.advantages(mdp, values))
    log_weight = select.candidate_scores(
        target, draft, advantage, ratio_weight=1.0, reward_weight=1.0 / mdp.beta
    )
    return _Tables(
        _cdf(target),
        _cdf(draft),
        log_weight.ravel(),
        advantage.ravel(),
        _stack(exact.q_values(mdp, values)).ravel(),
    )


def _block_inputs(key, K, H, num_keys):
    """Per-block scan inputs ((H, num_keys) keys, (H,) row offsets of each
    depth) and one more key for after the last block. A single split, so
    one threefry is compiled for all of them."""
    offsets = jnp.asarray([sum(K**j for j in range(h)) for h in range(H)], jnp.int32)
    keys = jax.random.split(key, (H + 1, num_keys))
    return (keys[:H], offsets), keys[H, 0]


def all_finite(arrays) -> bool:
    """True when every entry is known (concretely) to be finite. Without a
    threshold a SPECS block can only defer when some pi_t(y|s) = 0 (no A1)."""
    try:
        return all(bool(jnp.all(jnp.isfinite(a))) for a in arrays)
    except jax.errors.ConcretizationTypeError:
        return False


def _check_count(name, value, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum} (it fixes shapes), got {value!r}")
    return value


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_nonnegative(name, value):
    if not isinstance(value, jax.core.Tracer) and not float(value) >= 0.0:  # also NaN
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _batch_size(batch_size, num_runs, per_run) -> int:
    if batch_size is None:
        batch_size = max(1, _CANDIDATES_PER_CHUNK // max(per_run, 1))
    else:
        batch_size = _check_count("batch_size", batch_size)
    if batch_size >= num_runs:
        return num_runs
    # Equal chunks: the fewest chunks of at most batch_size runs each.
    num_chunks = -(-num_runs // batch_size)
    return -(-num_runs // num_chunks)


def _map_runs(runs, key, num_runs, batch_size):
    """Apply ``runs`` (a function of a (B,) array of run keys, e.g. a
    vmapped one-run function) to ``jax.random.split(key, num_runs)`` in
    chunks of ``batch_size`` runs (the last chunk padded with repeated keys
    whose runs are dropped, so one chunk shape is compiled)."""
    keys = jax.random.split(key, num_runs)
    if batch_size >= num_runs:
        return runs(keys)
    num_chunks = -(-num_runs // batch_size)
    padded = jnp.concatenate([keys, keys[: num_chunks * batch_size - num_runs]])
    out = jax.lax.map(runs, padded.reshape(num_chunks, batch_size))
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:num_runs], out)


def _draw(u, cdf, rows):
    """One block per state row, y ~ pi(.|s), by inversion of the row's CDF:
    y = #{j < K-1 : cdf[j] <= u} with u ~ U[0, 1) given (one uniform per
    draw; a zero-probability block is never drawn). (m,) -> (m,) int32."""
    c = cdf[rows]
    return jnp.sum(c[..., :-1] <= u[..., None], axis=-1).astype(jnp.int32)


def _uniforms(key, shape):
    return jax.random.uniform(key, shape, dtype=jnp.float64)


def _fill_empty(indices):
    """Replace the -1 slots (always trailing, see select.subsample) by cycling
    through the kept indices. Returns (filled indices, number of slots filled)."""
    k = indices.shape[0]
    kept = jnp.sum(indices >= 0)
    slot = jnp.arange(k) % jnp.maximum(kept, 1)
    return jnp.where(indices >= 0, indices, indices[slot]), (k - kept).astype(jnp.int32)


def _keep_best(key, scores, k):
    """Top-k by score, ties uniform (`select.top_k`). For k = 1 the same law
    is drawn without a sort: one uniform pick among the maxima
    (`select.subsample` at temperature 0 with replacement)."""
    if k == 1:
        return select.subsample(key, scores, 1, temperature=0.0, replace=True)
    return select.top_k(key, scores, k)


def sequence_counts(samples, num_sequences):
    """Histogram of sequence indices: (num_sequences,) int counts (works
    under jit). Use with `specs_theory.gof.pooled_gof_pvalue`."""
    return jnp.bincount(jnp.ravel(samples), length=num_sequences)


# --------------------------------------------------------------------------
# SPECS


def _where_needed(needed, fn, args):
    """``jax.vmap(fn)(*args)`` where only the runs with ``needed`` (B,) bool
    matter (the other rows of the result are unspecified). When at most
    B // 8 runs need it, ``fn`` is evaluated on those rows alone (gathered,
    then scattered back); otherwise on all B. Under vmap a `jax.lax.cond`
    per run would compute both branches, so the selection is made here, once
    per chunk of runs."""
    size = needed.shape[0]
    capacity = max(1, size // 8)

    def few(args):
        idx = jnp.nonzero(needed, size=capacity, fill_value=size)[0]  # size = out of range
        out = jax.vmap(fn)(*jax.tree.map(lambda a: a.at[idx].get(mode="clip"), args))
        return jax.tree.map(
            lambda o: jnp.zeros((size,) + o.shape[1:], o.dtype).at[idx].set(o, mode="drop"), out
        )

    return jax.lax.cond(jnp.sum(needed) <= capacity, few, lambda a: jax.vmap(fn)(*a), args)


def _specs_runs(keys, mdp, tables, threshold, temperature, *, n, k, use_threshold, can_defer,
                target_mode, score, replace):
    """A chunk of SPECS runs, one per key in ``keys`` (B,). The blocks are
    scanned over the whole chunk so that the deferral branch (n target
    draws and their selection) is computed only for runs that defer
    (`_where_needed`): deferrals are rare with a useful threshold."""
    K, H, inv_beta = mdp.K, mdp.H, 1.0 / mdp.beta
    m = n // k  # candidates per beam
    thr = threshold if use_threshold else None
    # For k = 1 sampling with and without replacement is the same law; the
    # with-replacement draw needs no sort.
    replace = replace or k == 1
    gate = tables.q_value if score == "q" else tables.advantage

    def draft(k_draw, k_select, rows):
        """One run's draft phase: k*m candidates from pi_d, soft verification."""
        y = _draw(_uniforms(k_draw, rows.shape), tables.draft_cdf, rows)
        cell = rows * K + y  # flat (s, y) index
        scores = tables.log_weight[cell]  # select.candidate_scores, see _tables
        step = select.select_step(
            k_select, scores, k, temperature=temperature, threshold=thr, replace=replace,
            gate=gate[cell] if use_threshold else None,
        )
        return y, step

    def target(key, rows):
        """One run's deferred block: as many candidates from pi_t, kept by the PRM alone."""
        k_draw, k_keep = jax.random.split(key)
        y = _draw(_uniforms(k_draw, rows.shape), tables.target_cdf, rows)
        cell = rows * K + y
        if target_mode == "soft":
            kept = select.select_target(
                k_keep, tables.advantage[cell], k, mode="soft", temperature=temperature,
                reward_weight=inv_beta, replace=replace,
            )
        else:
            kept = _keep_best(k_keep, gate[cell], k)  # = select_target(mode="greedy")
        return y, kept

    def block(beams, inputs):
        keys, offset = inputs  # (B, 3) keys, (B,) row offset of this depth
        k_draw, k_select, k_defer = (keys[:, j] for j in range(3))
        parent = jnp.repeat(beams, m, axis=1)  # (B, k*m) beam of each candidate
        rows = offset[:, None] + parent
        y, step = jax.vmap(draft)(k_draw, k_select, rows)
        kept = step.indices
        if can_defer:
            y_t, kept_t = _where_needed(step.deferred, target, (k_defer, rows))
            kept = jnp.where(step.deferred[:, None], kept_t, kept)
            y = jnp.where(step.deferred[:, None], y_t, y)
        kept, filled = jax.vmap(_fill_empty)(kept)
        take = partial(jnp.take_along_axis, indices=kept, axis=1)
        return take(parent) * K + take(y), (step.deferred, filled)

    inputs, key_final = jax.vmap(partial(_block_inputs, K=K, H=H, num_keys=3))(keys)
    inputs = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), inputs)  # blocks first
    init = jnp.zeros((keys.shape[0], k), jnp.int32)
    beams, (deferred, num_filled) = jax.lax.scan(block, init, inputs)
    deferred, num_filled = deferred.T, num_filled.T  # (B, H)
    if k == 1:
        answer = beams[:, 0]
    else:  # the completed beam with the best final reward, ties uniform
        best = jax.vmap(lambda key, b: b[_keep_best(key, mdp.reward[b], 1)[0]])
        answer = best(key_final, beams)
    return answer, SpecsInfo(deferred, num_filled, beams, mdp.reward[answer])


@partial(
    jax.jit,
    static_argnames=("n", "k", "num_runs", "batch_size", "use_threshold", "can_defer",
                     "target_mode", "score", "replace"),
)
def _specs(key, mdp, threshold, temperature, *, n, k, num_runs, batch_size, use_threshold,
           can_defer, target_mode, score, replace):
    runs = partial(
        _specs_runs, mdp=mdp, tables=_tables(mdp), threshold=threshold, temperature=temperature,
        n=n, k=k, use_threshold=use_threshold, can_defer=can_defer, target_mode=target_mode,
        score=score, replace=replace,
    )
    return _map_runs(runs, key, num_runs, batch_size)


def simulate_specs(
    key,
    mdp,
    n: int,
    num_runs: int,
    *,
    k: int = 1,
    threshold=None,
    target_mode: str = "soft",
    score: str = "q",
    temperature=1.0,
    replace: bool = False,
    batch_size: int | None = None,
):
    """SPECS with the idealised PRM (THEORY.md 2, 2.2), ``num_runs`` independent runs.

    At every block each of the ``k`` beams proposes ``n // k`` draft blocks
    y ~ pi_d(.|s). Each gets the score

        log w(y) = log pi_t(y|s) - log pi_d(y|s) + A*(s, y) / beta

    (`select.candidate_scores` with ratio_weight 1, reward_weight 1/beta) and
    is eligible when its gate g(s, y) = Q*(s, y) (``score="q"``) or A*(s, y)
    (``score="a"``) is strictly above ``threshold``. ``k`` beams are kept by
    `select.select_step` (softmax(log w / temperature) over the eligible
    drafts, without replacement unless ``replace``). If no draft is eligible
    the block is DEFERRED: ``k * (n // k)`` blocks are drawn from pi_t and
    ``k`` kept by `select.select_target`: ``target_mode="soft"`` samples by
    exp(A*/(beta temperature)), ``"greedy"`` keeps the top ``k`` by g (ties
    uniform). Beam slots left empty (fewer eligible drafts than ``k``) are
    filled by duplicating kept beams and counted in ``info.num_filled``.

    The defaults (soft, temperature 1, no threshold, k = 1) are the "ideal"
    variant, whose sequence law is exact.specs_policy(mdp, n); with k = 1 and
    temperature 1 any threshold, target_mode and score match
    exact.specs_policy with the same arguments. k > 1 is simulated but has no
    exact law (THEORY.md 2, Corollary A3).

    Args:
      key: PRNG key.
      mdp: a `specs_theory.mdp.BlockMDP`.
      n: candidates per block in total (static); each beam proposes n // k.
      num_runs: independent runs (static).
      k: beams kept (static), 1 <= k <= n.
      threshold: None (no gate) or a float compared with g.
      target_mode: "soft" or "greedy" selection after a deferral.
      score: "q" (gate on Q* in [0, R]) or "a" (gate on A* in [-R, R]).
      temperature: >= 0 (0: greedy by score).
      replace: keep the k beams with replacement (static).
      batch_size: runs vmapped at once (static; None: automatic). The
        result does not depend on it.

    Returns:
      samples: (num_runs,) sequence indices in [0, K**H); for k > 1 the final
        beam with the highest reward (ties uniform).
      info: `SpecsInfo` (deferrals per block, filled slots, all k beams).
    """
    n = _check_count("n", n)
    num_runs = _check_count("num_runs", num_runs)
    k = _check_count("k", k)
    if k > n:
        raise ValueError(f"k = {k} beams need at least k candidates per block, got n = {n}")
    _check_choice("target_mode", target_mode, ("soft", "greedy"))
    _check_choice("score", score, ("q", "a"))
    _check_nonnegative("temperature", temperature)
    use_threshold = threshold is not None
    return _specs(
        key,
        mdp,
        jnp.asarray(threshold if use_threshold else 0.0, dtype=float),
        jnp.asarray(temperature, dtype=float),
        n=n,
        k=k,
        num_runs=num_runs,
        batch_size=_batch_size(batch_size, num_runs, 2 * n),
        use_threshold=use_threshold,
        can_defer=use_threshold or not all_finite(mdp.target_logp),
        target_mode=target_mode,
        score=score,
        replace=bool(replace),
    )


# --------------------------------------------------------------------------
# beam search and best-of-n


def _generator_cdf(mdp, generator):
    return _cdf(_stack(mdp.target_logp if generator == "target" else mdp.draft_logp))


def _beam_run(key, mdp, cdf, q_value, *, n, k):
    m = n // k

    def block(beams, inputs):
        (k_draw, k_keep), offset = inputs
        parent = jnp.repeat(beams, m)
        y = _draw(_uniforms(k_draw, parent.shape), cdf, offset + parent)
        kept = _keep_best(k_keep, q_value[(offset + parent) * mdp.K + y], k)  # best first
        return parent[kept] * mdp.K + y[kept], None

    inputs, _ = _block_inputs(key, mdp.K, mdp.H, 2)
    beams, _ = jax.lax.scan(block, jnp.zeros((k,), jnp.int32), inputs)
    # The last block's Q* is the reward, so beams[0] is the best final beam.
    return beams[0], BeamSearchInfo(beams, mdp.reward[beams[0]])


@partial(jax.jit, static_argnames=("n", "k", "num_runs", "batch_size", "generator"))
def _beam(key, mdp, *, n, k, num_runs, batch_size, generator):
    q_value = _stack(exact.q_values(mdp)).ravel()
    run = partial(_beam_run, mdp=mdp, cdf=_generator_cdf(mdp, generator), q_value=q_value,
                  n=n, k=k)
    return _map_runs(jax.vmap(run), key, num_runs, batch_size)


def simulate_beam_search(key, mdp, n: int, num_runs: int, *, k: int = 1,
                         generator: str = "target", batch_size: int | None = None):
    """Beam search scored by the idealised PRM Q*, ``num_runs`` independent runs.

    At every block each of the ``k`` beams proposes ``n // k`` blocks from the
    generator (pi_t or pi_d); the top ``k`` of all candidates by Q*(s, y) are
    kept (`select.top_k`, ties uniform). For k = 1 the sequence law is the
    product over states of BoN_n[pi, Q*] (THEORY.md 2.3), i.e.
    exact.beam_policy. Returns the best final beam (highest reward) and a
    `BeamSearchInfo` with all k beams, best first.
    """
    n = _check_count("n", n)
    num_runs = _check_count("num_runs", num_runs)
    k = _check_count("k", k)
    if k > n:
        raise ValueError(f"k = {k} beams need at least k candidates per block, got n = {n}")
    _check_choice("generator", generator, ("target", "draft"))
    return _beam(key, mdp, n=n, k=k, num_runs=num_runs,
                 batch_size=_batch_size(batch_size, num_runs, n), generator=generator)


def _best_of_n_run(key, mdp, cdf, *, n):
    def block(responses, inputs):
        (key_h,), offset = inputs
        y = _draw(_uniforms(key_h, responses.shape), cdf, offset + responses)
        return responses * mdp.K + y, None

    inputs, k_keep = _block_inputs(key, mdp.K, mdp.H, 1)
    responses, _ = jax.lax.scan(block, jnp.zeros((n,), jnp.int32), inputs)
    r = mdp.reward[responses]
    best = responses[_keep_best(k_keep, r, 1)[0]]
    return best, BestOfNInfo(mdp.reward[best], jnp.mean(r))


@partial(jax.jit, static_argnames=("n", "num_runs", "batch_size", "generator"))
def _best_of_n(key, mdp, *, n, num_runs, batch_size, generator):
    run = partial(_best_of_n_run, mdp=mdp, cdf=_generator_cdf(mdp, generator), n=n)
    return _map_runs(jax.vmap(run), key, num_runs, batch_size)


def simulate_best_of_n(key, mdp, n: int, num_runs: int, *, generator: str = "target",
                       batch_size: int | None = None):
    """Best-of-n: n whole responses from the generator (pi_t or pi_d), keep
    one of maximal reward (`select.top_k`, ties uniform). The law is
    BoN_n[pi_seq, r] (THEORY.md 2.3), i.e. exact.best_of_n_policy."""
    n = _check_count("n", n)
    num_runs = _check_count("num_runs", num_runs)
    _check_choice("generator", generator, ("target", "draft"))
    return _best_of_n(key, mdp, n=n, num_runs=num_runs,
                      batch_size=_batch_size(batch_size, num_runs, n), generator=generator)


# --------------------------------------------------------------------------
# sequential Monte Carlo


def _smc_run(key, mdp, tables, ess_threshold, *, N, resampling):
    K, H = mdp.K, mdp.H

    def block(carry, inputs):
        # log_w: log-weights carried since the last resampling; log_norm:
        # their logsumexp.
        particles, log_w, log_norm, log_Z = carry
        ((k_draw, k_resample), offset), last = inputs
        rows = offset + particles
        y = _draw(_uniforms(k_draw, (N,)), tables.draft_cdf, rows)
        # Exponentiated score G = pi_t/pi_d * exp(A*/beta), in log space.
        log_G = tables.log_weight[rows * K + y]  # select.candidate_scores, see _tables
        step = select.smc_update(k_resample, log_w, log_norm, log_G, ess_threshold=ess_threshold, last=last,
                                 resampling=resampling)
        particles = (particles * K + y)[step.ancestors]
        carry = (particles, step.log_weights, step.log_norm, log_Z + step.log_Z_increment)
        return carry, (step.ess, step.resampled)

    inputs, key_out = _block_inputs(key, K, H, 2)
    # The barrier keeps XLA from constant-folding the first block over the
    # (num_runs, N) broadcast of this constant state (seconds at N = 1).
    init = jax.lax.optimization_barrier(
        (jnp.zeros((N,), jnp.int32), jnp.zeros((N,)), jnp.log(float(N)), jnp.zeros(()))
    )
    last = jnp.arange(H) == H - 1
    (particles, log_w, _, log_Z), (ess, resampled) = jax.lax.scan(block, init, (inputs, last))
    # Output x^J, J ~ Cat(final weights).
    j = select.subsample(key_out, log_w, 1, temperature=1.0, replace=True)[0]
    return particles[j], SMCInfo(log_Z, ess, resampled)


@partial(jax.jit, static_argnames=("N", "num_runs", "batch_size", "resampling"))
def _smc(key, mdp, ess_threshold, *, N, num_runs, batch_size, resampling):
    run = partial(_smc_run, mdp=mdp, tables=_tables(mdp), ess_threshold=ess_threshold,
                  N=N, resampling=resampling)
    return _map_runs(jax.vmap(run), key, num_runs, batch_size)


def simulate_smc(key, mdp, num_particles: int, num_runs: int, *, resampling: str = "multinomial",
                 ess_threshold=1.0, batch_size: int | None = None):
    """Block SMC with the exponentiated score (THEORY.md 4), ``num_runs`` runs.

    N = ``num_particles`` particles start at the prompt. At block h each
    particle draws y ~ pi_d(.|x) and is reweighted by

        G = pi_t(y|x)/pi_d(y|x) * exp(A*(x, y)/beta)       (log space)

    and Zhat *= sum_i Wbar_i G_i (Wbar: normalised weights carried into the
    block; 1/N right after resampling), so E[Zhat] = Z = 1. After every block
    but the last the particles are resampled with
    ``resample.get_resampler(resampling)``: at every block when
    ``ess_threshold >= 1``, else only when ESS/N < ``ess_threshold`` (0:
    never); without resampling the weights are carried forward. The output is
    x^J with J ~ Cat(final weights) (`select.subsample`, k = 1, temperature 1).

    Returns:
      samples: (num_runs,) sequence indices in [0, K**H).
      info: `SMCInfo` with log Zhat, ESS per block and resampling flags.
    """
    N = _check_count("num_particles", num_particles)
    num_runs = _check_count("num_runs", num_runs)
    resample.get_resampler(resampling)  # validates the name
    _check_nonnegative("ess_threshold", ess_threshold)
    return _smc(key, mdp, jnp.asarray(ess_threshold, dtype=float), N=N, num_runs=num_runs,
                batch_size=_batch_size(batch_size, num_runs, 2 * N), resampling=resampling)
