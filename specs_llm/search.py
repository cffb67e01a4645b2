"""One step loop for SPECS and its baselines, over many problems at once.

Every step, all active beams of all problems go to each model in one call:

1. *propose*: the proposing model (the draft for SPECS and RSD; the
   ``generator`` for beam search and best-of-n) samples ``n // k`` candidate
   steps per active beam;
2. *score*: the target scores the candidates (when the strategy weighs the
   log-ratio) while the PRM scores them, in parallel threads;
3. *select*: the strategy's selection function, built from
   `specs_theory.select` and vectorised over problems, keeps up to ``k``
   candidates or defers;
4. *defer*: problems that deferred (and problems in target mode) get ``n // k``
   candidates per beam from the target, scored by the PRM, kept by
   `specs_theory.select.select_target`; `should_switch_back` decides the next
   step's mode.

Strategies differ only in the selection function they pass (`strategy_for`).
Sequential Monte Carlo ("smc") shares steps 1 and 2 and the scores of step
3: each of its ``n`` particles proposes one step, the candidate score is its
incremental log-weight, and `specs_theory.select.smc_update` reweights and
resamples (finished particles stay in the population with weight factor 1).
No decision is made here that `specs_theory.select` does not make.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specs_theory import select as S

from .backends.base import LanguageModel, RewardModel, State, Step
from .backends.common import derive_seed
from .config import SearchConfig
from .timing import Ledger

__all__ = ["Models", "StepRecord", "Beam", "SearchResult", "run_search", "strategy_for"]


class Models(NamedTuple):
    """The three models; ``draft`` may be None for target-only strategies."""

    draft: LanguageModel | None
    target: LanguageModel
    prm: RewardModel


@dataclass(frozen=True)
class StepRecord:
    """A kept step: where it came from and how it was judged.

    ``text + end`` is exactly what was generated for the step: ``end`` is the
    step delimiter when the step stopped at it, else "" (EOS, length, or a
    best-of-n response, which is generated without a stop string).
    """

    text: str
    source: str  # "draft" or "target"
    score: float  # the selection score (nats-scale); reward_weight * r for target steps
    reward: float  # PRM reward of this step (may be NaN: then it was never kept by score)
    deferred: bool  # True when the draft phase of this step deferred to the target
    num_tokens: int
    logp_draft: float | None = None
    logp_target: float | None = None
    end: str = ""

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Beam:
    state: State
    records: tuple[StepRecord, ...] = ()
    step_rewards: tuple[float, ...] = ()  # the PRM's rewards of all steps, from its last call
    finish: str | None = None  # None while active; "eos", "length" or "max_steps" when done
    log_weight: float = 0.0  # SMC importance log-weight (0 for the other strategies)

    @property
    def text(self) -> str:
        """The response as generated: ``"".join(r.text + r.end for r in records)``.

        Not built from ``state.steps``: a best-of-n response is split into
        steps there, blank pieces dropped, for the PRM."""
        return "".join(r.text + r.end for r in self.records)


@dataclass
class SearchResult:
    """Outcome for one problem."""

    question: str
    text: str | None = None  # the chosen beam's `Beam.text`: its kept steps as generated
    answer: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    finished: list[Beam] = field(default_factory=list)
    error: str | None = None
    counts: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    smc: list[dict] = field(default_factory=list)  # per step: active, ess, resampled, log_Z (smc only)

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "text": self.text,
            "answer": self.answer,
            "steps": [s.to_dict() for s in self.steps],
            "num_finished_beams": len(self.finished),
            "error": self.error,
            "counts": dict(self.counts),
            "timing": self.timing,
            "smc": list(self.smc),
        }


# ---------------------------------------------------------------------------
# strategies: the selection functions, vectorised over problems


@dataclass(frozen=True)
class Strategy:
    """What differs between strategies: who proposes, how candidates are kept.

    ``compiled(keys, logp_target, logp_draft, reward, num_tokens, valid,
    params)`` (rows padded with ``valid = False``) returns ``(scores (P, n),
    indices (P, k), deferred (P,))``: `candidate_scores`, then the strategy's
    selection function from `specs_theory.select`, vmapped over problems.
    """

    proposer: str  # "draft" or "target"
    per_beam: int  # candidates each active beam proposes per call
    defers: bool  # may hand a step to the target (SPECS, RSD)
    uses_ratio: bool  # the score weighs log pi_t - log pi_d (needs target scoring)
    compiled: Callable  # jit(vmap(score, keep)), shared by every strategy of this structure
    params: dict  # its traced settings
    stop: tuple[str, ...]


def _keep_specs(key, s, r, valid, k, p, gate_on_reward):
    gate = r if gate_on_reward else None
    return S.select_step(key, s, k, temperature=p["temperature"], threshold=p["threshold"], gate=gate)


def _keep_top_k(key, s, r, valid, k, p, gate_on_reward):
    return S.StepSelection(S.top_k(key, s, k), jnp.array(False))


def _keep_all(key, s, r, valid, k, p, gate_on_reward):
    return S.StepSelection(jnp.where(valid, jnp.arange(s.shape[0]), -1), jnp.array(False))


@functools.lru_cache(maxsize=64)
def _compiled_selector(keep, k, gate_on_reward, length_normalize):
    """jit(vmap(score, then keep)); the numeric settings ``p`` are traced, so
    seeds, thresholds, temperatures and weights never trigger a recompile."""

    def one(key, lt, ld, r, ntok, valid, p):
        s = S.candidate_scores(lt, ld, r, ratio_weight=p["ratio_weight"], reward_weight=p["reward_weight"],
                               num_tokens=ntok if length_normalize else None)
        s = jnp.where(valid, s, -jnp.inf)
        sel = keep(key, s, r, valid, k, p, gate_on_reward)
        return s, sel.indices, sel.deferred

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, None)))


def strategy_for(config: SearchConfig) -> Strategy:
    """The `Strategy` a configuration describes."""
    c = config
    # No threshold is the threshold -inf: every valid (finite-score) draft passes.
    threshold = -np.inf if c.threshold is None else c.threshold
    per_beam = {"bon": c.n, "smc": 1}.get(c.strategy, c.n // c.k)
    if c.strategy == "specs":
        spec = ("draft", True, c.ratio_weight != 0, _keep_specs, c.k, c.threshold_on == "reward", c.length_normalize,
                dict(temperature=c.temperature, threshold=threshold, ratio_weight=c.ratio_weight,
                     reward_weight=c.reward_weight))
    elif c.strategy == "rsd":
        # one draft step, kept iff its reward passes the threshold
        spec = ("draft", True, False, _keep_specs, c.k, True, False,
                dict(temperature=0.0, threshold=threshold, ratio_weight=0.0, reward_weight=1.0))
    elif c.strategy == "beam":
        spec = (c.generator, False, False, _keep_top_k, c.k, False, False,
                dict(temperature=0.0, threshold=-np.inf, ratio_weight=0.0, reward_weight=1.0))
    elif c.strategy == "bon":
        # n whole responses, all kept; the answer is chosen by `aggregation`
        spec = (c.generator, False, False, _keep_all, c.n, False, False,
                dict(temperature=0.0, threshold=-np.inf, ratio_weight=0.0, reward_weight=1.0))
    elif c.strategy == "smc":
        # one step per particle; every score is the particle's incremental log-weight
        spec = (c.generator, False, c.ratio_weight != 0, _keep_all, c.n, False, c.length_normalize,
                dict(temperature=0.0, threshold=-np.inf, ratio_weight=c.ratio_weight, reward_weight=c.reward_weight))
    else:
        raise ValueError(f"unknown strategy {c.strategy!r}")
    proposer, defers, uses_ratio, keep, k, gate_on_reward, length_normalize, params = spec
    compiled = _compiled_selector(keep, k, gate_on_reward, length_normalize)
    params = {name: jnp.asarray(v, dtype=jnp.float64) for name, v in params.items()}
    stop = () if c.strategy == "bon" else (c.step_delimiter,)
    return Strategy(proposer, per_beam, defers, uses_ratio, compiled, params, stop)


@functools.lru_cache(maxsize=16)
def _compiled_target_selector(k, mode):
    select = jax.vmap(
        lambda key, r, t, w: S.select_target(key, r, k, mode=mode, temperature=t, reward_weight=w),
        in_axes=(0, 0, None, None),
    )
    back = jax.vmap(lambda r, t: S.should_switch_back(r, t), in_axes=(0, None))
    return jax.jit(select), jax.jit(back)


@functools.lru_cache(maxsize=8)
def _compiled_smc_update(resampling):
    def one(key, log_w, log_norm, log_g, ess_threshold, last):
        return S.smc_update(key, log_w, log_norm, log_g, ess_threshold=ess_threshold, last=last,
                            resampling=resampling)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None, 0)))


_COMPILED_SHAPES: set = set()


def _call(call, fn, *args):
    """``fn(*args)``, with the one-off JIT compilation for a new argument shape
    done first and left out of the call's latency (``call.excluded``)."""
    key = (fn, tuple((a.shape, a.dtype) if hasattr(a, "shape") else type(a) for a in jax.tree.leaves(args)))
    if key not in _COMPILED_SHAPES:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        call.excluded += time.perf_counter() - t0
        _COMPILED_SHAPES.add(key)
    return fn(*args)


@jax.jit
def _problem_keys(root, problem_indices, step, salt):
    fold = jax.random.fold_in
    return jax.vmap(lambda i: fold(fold(fold(root, i), step), salt))(problem_indices)


@jax.jit
def _output_key(root, problem_index):
    """The key of a problem's final draw (aggregation "sample")."""
    return jax.random.fold_in(jax.random.fold_in(root, problem_index), 5)


def _bucket(p: int) -> int:
    """Pad the problem axis to a power of two so jit compiles few shapes."""
    return 1 << max(p - 1, 0).bit_length()


def _padded(rows: list[np.ndarray], shape: tuple[int, int], fill=np.nan) -> np.ndarray:
    """Rows stacked into a ``shape`` array, padded with ``fill``."""
    out = np.full(shape, fill, dtype=np.float64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


# ---------------------------------------------------------------------------
# the loop


@dataclass
class _Candidate:
    beam: int
    step: Step
    state: State
    source: str
    logp_draft: float | None = None
    logp_target: float | None = None
    reward: float = float("nan")
    step_rewards: tuple[float, ...] = ()
    score: float = float("nan")


@dataclass
class _Particles:
    """SMC's population: all ``n`` particles (finished ones included) and their weights."""

    beams: list[Beam]
    log_weights: np.ndarray  # carried since the last resampling
    log_norm: float  # their logsumexp
    log_Z: float = 0.0  # log of the normalising-constant estimate so far
    trace: list[dict] = field(default_factory=list)


@dataclass
class _Problem:
    index: int
    question: str
    beams: list[Beam]  # the active beams (for smc: the particles still moving)
    mode: str
    finished: list[Beam] = field(default_factory=list)
    error: str | None = None
    deferred_now: bool = False  # the draft phase of the current step deferred
    particles: _Particles | None = None  # smc only
    counts: dict = field(default_factory=lambda: {
        "steps": 0, "draft_steps": 0, "target_steps": 0, "deferrals": 0,
        "nan_rewards": 0, "nan_logprobs": 0, "resamplings": 0,
    })

    @property
    def active(self) -> bool:
        return self.error is None and bool(self.beams)


class _Search:
    """The step functions of one cohort of a run (`run_search`) of ``size``
    problems. Every compiled call pads the problem axis to the same ``rows``
    (a power of two), so a run compiles one shape per candidate width, not a
    new one each time problems finish."""

    def __init__(self, models: Models, config: SearchConfig, ledger: Ledger, pool: ThreadPoolExecutor,
                 max_steps: int, size: int):
        self.m, self.c, self.ledger, self.pool, self.max_steps = models, config, ledger, pool, max_steps
        self.rows = _bucket(size)
        self.proposed = threading.Event()  # set after this cohort's first proposal call
        self.strategy = strategy_for(config)
        c = config
        # Target candidates (after a deferral, or in target mode) are kept by
        # reward; the switch-back decision looks at the same rewards.
        self.target_select, self.switch_back = _compiled_target_selector(c.k, c.target_mode)
        self.target_params = (jnp.float64(c.temperature), jnp.float64(c.reward_weight))
        self.switch_back_threshold = jnp.float64(
            -np.inf if c.switch_back_threshold is None else c.switch_back_threshold)
        self.root_key = jax.random.key(c.seed)
        self.smc_update = _compiled_smc_update(c.resampling)
        self.ess_threshold = jnp.float64(c.ess_threshold)

    def model(self, role: str):
        model = self.m.draft if role == "draft" else self.m.target
        if model is None:
            raise ValueError(f"strategy {self.c.strategy!r} needs a {role} model")
        return model

    def keys(self, call, probs: list[_Problem], step: int, salt: int) -> jax.Array:
        """One key per problem (padded to ``rows``), independent of batching."""
        idx = np.zeros(self.rows, dtype=np.int64)
        idx[: len(probs)] = [p.index for p in probs]
        return _call(call, _problem_keys, self.root_key, idx, step, salt)

    # -- model calls ----------------------------------------------------------

    def propose(self, probs: list[_Problem], role: str, step: int, salt: int) -> dict[int, list[_Candidate]]:
        """``n // k`` steps per active beam from the ``role`` model, one call."""
        c, strategy = self.c, self.strategy
        per_beam = strategy.per_beam
        states, owners = [], []
        for p in probs:
            for b, beam in enumerate(p.beams):
                states.append(beam.state)
                owners.append((p, b))
        phase = f"{role}_generation"
        # a state's seed says where it is in the search, not where in the call
        seeds = [derive_seed(c.seed, p.index, b, step, salt) for p, b in owners]
        stop = strategy.stop if role == strategy.proposer else (c.step_delimiter,)
        model = self.model(role)
        with self.ledger.record(role, phase, step, [p.index for p in probs]) as call:
            out = model.generate(
                states, per_beam, stop=stop, max_tokens=c.max_step_tokens,
                temperature=c.sampling_temperature, seed=seeds,
            )
            for (p, _), steps in zip(owners, out):
                call.tokens[p.index] += sum(s.num_generated for s in steps)
        self.proposed.set()
        cands: dict[int, list[_Candidate]] = {p.index: [] for p in probs}
        for (p, b), steps in zip(owners, out):
            if len(steps) != per_beam:
                raise RuntimeError(f"{role} model returned {len(steps)} samples, expected {per_beam}")
            for s in steps:
                new_state = _extend(p.beams[b].state, s.text, c.step_delimiter)
                cands[p.index].append(_Candidate(b, s, new_state, role))
        return cands

    def score_target(self, probs, cands, step, group=None):
        items = [(p, x) for p in probs for x in cands[p.index]]
        if not items:
            return
        with self.ledger.record("target", "target_scoring", step, [p.index for p in probs], group=group) as call:
            out = self.model("target").score([p.beams[x.beam].state for p, x in items],
                                             [x.step.scored_text for _, x in items])
            for (p, x), lps in zip(items, out):
                x.logp_target = float(np.sum(lps)) if len(lps) else 0.0
                call.tokens[p.index] += len(lps)

    def score_prm(self, probs, cands, step, group=None):
        items = [(p, x) for p in probs for x in cands[p.index]]
        if not items:
            return
        with self.ledger.record("prm", "prm_scoring", step, [p.index for p in probs], group=group) as call:
            out = self.m.prm.rewards([x.state for _, x in items])
            for (p, x), rs in zip(items, out):
                x.step_rewards = tuple(float(r) for r in rs)
                x.reward = x.step_rewards[-1] if rs else float("nan")
                # charged for the candidate's new tokens (the PRM re-reads the prefix too)
                call.tokens[p.index] += x.step.num_tokens

    def score_parallel(self, probs, cands, step, *, with_target: bool):
        group = self.ledger.new_group()  # the two run concurrently
        jobs = [self.pool.submit(self.score_prm, probs, cands, step, group)]
        if with_target:
            jobs.append(self.pool.submit(self.score_target, probs, cands, step, group))
        for j in jobs:
            j.result()

    # -- one step ---------------------------------------------------------------

    def step(self, probs: list[_Problem], step: int) -> None:
        c, strategy = self.c, self.strategy
        if strategy.defers:
            propose_group = [p for p in probs if p.mode == "draft"]
            target_group = [p for p in probs if p.mode == "target"]
        else:
            propose_group, target_group = list(probs), []

        if propose_group:
            cands = self.propose(propose_group, strategy.proposer, step, salt=0)
            uses_ratio = strategy.uses_ratio and strategy.proposer == "draft"
            self.score_parallel(propose_group, cands, step, with_target=uses_ratio)
            with self.ledger.record("loop", "selection", step, [p.index for p in propose_group]) as call:
                _, indices, deferred = self.select(call, propose_group, cands, step, uses_ratio)
            for i, p in enumerate(propose_group):
                if deferred[i]:
                    p.counts["deferrals"] += 1
                    target_group.append(p)
                    p.deferred_now = True
                else:
                    self.keep(p, [cands[p.index][j] for j in indices[i] if j >= 0], deferred=False)

        if target_group:
            cands = self.propose(target_group, "target", step, salt=2)
            self.score_parallel(target_group, cands, step, with_target=False)
            with self.ledger.record("loop", "selection", step, [p.index for p in target_group]) as call:
                rewards = []
                for p in target_group:
                    r = np.array([x.reward for x in cands[p.index]])
                    p.counts["nan_rewards"] += int(np.isnan(r).sum())
                    rewards.append(r)
                    for x in cands[p.index]:
                        x.score = c.reward_weight * x.reward
                width = max(len(r) for r in rewards)
                padded = jnp.asarray(_padded(rewards, (self.rows, width)))
                indices = np.asarray(_call(call, self.target_select, self.keys(call, target_group, step, 3), padded,
                                           *self.target_params))
                back = None
                if c.switch_back_threshold is not None:
                    back = np.asarray(_call(call, self.switch_back, padded, self.switch_back_threshold))
            for i, p in enumerate(target_group):
                was_deferred, p.deferred_now = p.deferred_now, False
                kept = [cands[p.index][j] for j in indices[i] if j >= 0]
                if not kept:
                    p.error = "every target candidate had a NaN reward"
                    continue
                self.keep(p, kept, deferred=was_deferred)
                p.mode = "draft" if back is None or back[i] else "target"

    def select(self, call, probs, cands, step, uses_ratio):
        """The strategy's scores (P, width) and selection (indices, deferred) of
        every problem's candidates, in one compiled call."""
        width = max(len(cands[p.index]) for p in probs)
        shape = (self.rows, width)
        lt, ld, r = (np.full(shape, np.nan) for _ in range(3))
        ntok, valid = np.ones(shape), np.zeros(shape, dtype=bool)
        for i, p in enumerate(probs):
            xs = cands[p.index]
            m = len(xs)
            valid[i, :m] = True
            r[i, :m] = [x.reward for x in xs]
            ntok[i, :m] = [max(x.step.num_tokens, 1) for x in xs]
            lt[i, :m] = [x.logp_target for x in xs] if uses_ratio else 0.0
            ld[i, :m] = [x.step.logprob for x in xs] if uses_ratio else 0.0
            p.counts["nan_rewards"] += int(np.isnan(r[i, :m]).sum())
            p.counts["nan_logprobs"] += int((np.isnan(lt[i, :m]) | np.isnan(ld[i, :m])).sum())
        scores, indices, deferred = (
            np.asarray(a) for a in _call(call, self.strategy.compiled, self.keys(call, probs, step, 1),
                                         lt, ld, r, ntok, valid, self.strategy.params)
        )
        for i, p in enumerate(probs):
            for x, sx in zip(cands[p.index], scores[i]):
                x.score = float(sx)
        return scores, indices, deferred

    def smc_step(self, probs: list[_Problem], step: int) -> None:
        """Every moving particle proposes one step; `S.smc_update` reweights
        all ``n`` particles by exp(score) (1 for finished ones) and resamples."""
        c, strategy = self.c, self.strategy
        cands = self.propose(probs, strategy.proposer, step, salt=0)
        uses_ratio = strategy.uses_ratio and strategy.proposer == "draft"
        self.score_parallel(probs, cands, step, with_target=uses_ratio)
        with self.ledger.record("loop", "selection", step, [p.index for p in probs]) as call:
            scores, _, _ = self.select(call, probs, cands, step, uses_ratio)
            shape = (self.rows, c.n)
            log_w, log_g = np.zeros(shape), np.zeros(shape)
            log_norm, last = np.full(shape[0], math.log(c.n)), np.ones(shape[0], dtype=bool)
            moving = {}
            for i, p in enumerate(probs):
                moving[p.index] = [j for j, b in enumerate(p.particles.beams) if b.finish is None]
                log_g[i, moving[p.index]] = scores[i, : len(moving[p.index])]
                log_w[i], log_norm[i] = p.particles.log_weights, p.particles.log_norm
                # no resampling after the last step: the output is drawn by the final weights
                ends = [x.step.finish_reason in ("eos", "length") for x in cands[p.index]]
                last[i] = all(ends) or step == self.max_steps - 1
            update = jax.tree.map(np.asarray, _call(call, self.smc_update, self.keys(call, probs, step, 4),
                                                    log_w, log_norm, log_g, self.ess_threshold, last))
        for i, p in enumerate(probs):
            pop = p.particles
            beams = list(pop.beams)
            for j, x in zip(moving[p.index], cands[p.index]):
                beams[j] = self.child(beams[j], x, deferred=False)
            pop.beams = [beams[a] for a in update.ancestors[i]]
            pop.log_weights, pop.log_norm = update.log_weights[i], float(update.log_norm[i])
            pop.log_Z += float(update.log_Z_increment[i])
            resampled = bool(update.resampled[i])
            pop.trace.append({"step": step, "active": len(moving[p.index]), "ess": float(update.ess[i]),
                              "resampled": resampled, "log_Z": pop.log_Z})
            p.counts["steps"] += 1
            p.counts[f"{strategy.proposer}_steps"] += 1
            p.counts["resamplings"] += resampled
            if not np.isfinite(update.log_Z_increment[i]):
                p.error = "every particle has weight zero (NaN or -inf scores)"
            p.beams = [b for b in pop.beams if b.finish is None]

    def child(self, parent: Beam, x: _Candidate, *, deferred: bool) -> Beam:
        """``parent`` extended by candidate ``x``."""
        # A step that stopped ends with the delimiter, the loop's only stop
        # string (the state continues with ``text + delimiter``), whether or
        # not the backend wrote it in ``Step.end`` (the MDP backend does not).
        end = x.step.end or (self.c.step_delimiter if x.step.finish_reason == "stop" else "")
        rec = StepRecord(
            text=x.step.text, source=x.source, score=x.score, reward=x.reward, deferred=deferred,
            num_tokens=x.step.num_tokens, logp_draft=x.step.logprob if x.source == "draft" else x.logp_target,
            logp_target=x.logp_target if x.source == "draft" else x.step.logprob, end=end,
        )
        finish = x.step.finish_reason if x.step.finish_reason in ("eos", "length") else None
        if self.c.strategy == "bon":
            finish = finish or "eos"
        return Beam(x.state, parent.records + (rec,), x.step_rewards, finish)

    def keep(self, p: _Problem, kept: list[_Candidate], *, deferred: bool) -> None:
        """Replace ``p``'s active beams by the kept candidates (at most as many as were active)."""
        kept = kept[: len(p.beams)] if self.c.strategy != "bon" else kept
        beams = [self.child(p.beams[x.beam], x, deferred=deferred) for x in kept]
        p.counts["steps"] += 1
        p.counts["target_steps" if kept and kept[0].source == "target" else "draft_steps"] += 1
        p.finished += [b for b in beams if b.finish is not None]
        p.beams = [b for b in beams if b.finish is None]


def _extend(state: State, text: str, delimiter: str) -> State:
    """Append a generated step; a whole response (best-of-n) is split into its steps."""
    parts = [t for t in text.split(delimiter) if t.strip()] if delimiter in text else [text]
    for t in parts:
        state = state.extend(t)
    return state


def run_search(
    questions: Sequence[str],
    models: Models,
    config: SearchConfig,
    *,
    ledger: Ledger | None = None,
    on_step: Callable[[int, int], None] | None = None,
    cohorts: int = 1,
) -> list[SearchResult]:
    """Run ``config.strategy`` on every question, all problems batched together.

    Returns one `SearchResult` per question, in order. A failed model call
    ends every problem still active in that call's step with ``error`` set
    (never a silent wrong answer; a resumable runner retries them);
    ``ledger`` (optional) receives every timed call; ``on_step(step,
    active)`` is called after each step with the number of problems still
    active.

    ``cohorts``: the problems are split into this many groups (contiguous,
    in order), each advancing through its own step loop in its own thread;
    cohort c starts when cohort c - 1 has made its first proposal call, so
    while one cohort's candidates are scored, the next cohort's are being
    generated (models on separate servers or devices then work at once; a
    server batches the calls that do meet, an in-process vLLM engine takes
    them one at a time). Decisions and samples depend only on a problem's
    own history (seeds and keys derive from the problem's position, the
    beam, the step and the phase), so the results are those of one lockstep
    loop; only the timing changes. A problem's latency is then the time its
    own cohort's calls took, sharing the models with the other cohorts. A
    one-step search (best-of-n) always runs as one cohort.
    """
    from .aggregate import choose_answer

    if isinstance(questions, str):
        raise TypeError("questions must be a sequence of strings, not one string")
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"question {i} is empty or not a string: {q!r}")
    if isinstance(cohorts, bool) or not isinstance(cohorts, int) or cohorts < 1:
        raise ValueError(f"cohorts must be an integer >= 1, got {cohorts!r}")
    for role in sorted(config.roles):
        if getattr(models, role) is None:
            raise ValueError(f"strategy {config.strategy!r} (generator {config.generator!r}) needs a {role} model")
    ledger = ledger or Ledger()
    first = "draft" if config.strategy == "rsd" else config.first_step
    probs = [_Problem(i, q, [Beam(State(q))], first) for i, q in enumerate(questions)]
    if config.strategy == "smc":
        for p in probs:
            p.beams = [p.beams[0]] * config.n
            p.particles = _Particles(list(p.beams), np.zeros(config.n), math.log(config.n))
    max_steps = 1 if config.strategy == "bon" else config.max_steps
    # a one-step search (best-of-n) has nothing to pipeline: its cohorts would generate one after the other
    cohorts = 1 if max_steps == 1 else min(cohorts, max(len(probs), 1))
    groups = [g.tolist() for g in np.array_split(np.arange(len(probs)), cohorts)]
    progress = threading.Lock()

    def advance(search: _Search, cohort: list[_Problem], after: _Search | None) -> None:
        if after is not None:
            after.proposed.wait()  # start half a step behind the cohort before
        try:
            for step in range(max_steps):
                active = [p for p in cohort if p.active]
                if not active:
                    break
                try:
                    (search.smc_step if config.strategy == "smc" else search.step)(active, step)
                except Exception as exc:  # a failed model call: end these problems, loudly
                    for p in active:
                        p.error = f"{type(exc).__name__}: {exc}"
                if on_step is not None:
                    with progress:
                        on_step(step, sum(p.active for p in probs))
        finally:
            search.proposed.set()  # never leave the next cohort waiting

    # two scoring threads per cohort (target and PRM scoring run concurrently)
    with ThreadPoolExecutor(max_workers=2 * len(groups)) as pool:
        searches = [_Search(models, config, ledger, pool, max_steps, len(g)) for g in groups]
        if len(groups) == 1:
            advance(searches[0], probs, None)
        else:
            with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="cohort") as runners:
                jobs = [runners.submit(advance, s, [probs[i] for i in g], searches[c - 1] if c else None)
                        for c, (s, g) in enumerate(zip(searches, groups))]
                for job in jobs:
                    job.result()
    ledger.finish()
    results = []
    for p in probs:
        if p.particles is not None:  # every particle is an output, with its final weight
            p.finished = [replace(b, log_weight=float(w)) for b, w in zip(p.particles.beams, p.particles.log_weights)]
            p.finished = [b if b.finish else replace(b, finish="max_steps") for b in p.finished]
        else:
            p.finished += [replace(b, finish="max_steps") for b in p.beams]  # still active after max_steps
        res = SearchResult(p.question, finished=p.finished, error=p.error, counts=dict(p.counts),
                           smc=p.particles.trace if p.particles is not None else [])
        if p.error is None and p.finished:
            key = _output_key(searches[0].root_key, p.index) if config.aggregation == "sample" else None
            best = choose_answer(p.finished, config.aggregation, key=key)
            res.text = best.text
            res.steps = list(best.records)
            res.answer = best_answer(res.text)
        res.timing = ledger.problem_summary(p.index)
        results.append(res)
    return results


def best_answer(text: str) -> str | None:
    from .grading import extract_answer

    return extract_answer(text)
