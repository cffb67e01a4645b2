"""Search configuration: one frozen dataclass, validated on construction.

The defaults follow the authors' SPECS recipe (DESIGN.md section 1): n = 4
candidates, k = 1 beam, selection temperature 0.2, reward weight 10,
threshold 7 on the combined score, switch-back threshold 0.7, "\\n\\n" step
delimiter, at most 30 steps, first step from the target, greedy target mode.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from specs_theory.resample import RESAMPLERS

__all__ = ["SearchConfig", "STRATEGIES", "AGGREGATIONS", "RESAMPLING"]

STRATEGIES = ("specs", "beam", "bon", "rsd", "smc")
AGGREGATIONS = ("score", "prm_last", "prm_min", "prm_prod", "vote", "sample")
RESAMPLING = tuple(RESAMPLERS)


@dataclass(frozen=True)
class SearchConfig:
    """How one search runs.

    strategy: "specs" (draft proposals, soft verification, deferral),
      "beam" (PRM-guided beam search with ``generator`` proposing),
      "bon" (best-of-n whole responses from ``generator``, aggregated),
      "rsd" (reward-guided speculative decoding: one draft step, kept if its
      reward is above ``threshold``, else one target step),
      "smc" (sequential Monte Carlo: ``n`` particles, each extended by one
      step from ``generator`` and reweighted by exp(score), resampled with
      ``resampling`` every step or when ESS/n < ``ess_threshold``).
    n: candidates per step (all beams together), or particles for "smc";
      k: beams kept (n % k == 0; not used by "smc").
    temperature: selection temperature (0: greedy).
    sampling_temperature, top_p: generation settings of the models.
    ratio_weight, reward_weight, length_normalize: the score
      ``ratio_weight * (logp_t - logp_d) [/ tokens] + reward_weight * reward``.
    threshold: drafts whose score (``threshold_on="score"``, the authors'
      code) or PRM reward (``"reward"``, THEORY.md 2.2) is <= threshold are
      rejected; None: no threshold.
    target_mode: after a deferral, keep target candidates "greedy"-ly by
      reward or by "soft" sampling with weights exp(reward_weight * r / T).
    switch_back_threshold: after a target step, return to draft mode only if
      the best target reward is above it (None: always return). SPECS only:
      RSD returns to the draft after every target step, so for "rsd" it is
      set to None.
    first_step: "target" (authors' code) or "draft".
    generator: proposing model for "beam", "bon" and "smc".
    resampling, ess_threshold: the SMC resampling scheme and when it runs
      (>= 1: after every step; 0: never).
    max_steps, max_step_tokens, step_delimiter: step structure.
    aggregation: how the answer is chosen among finished beams ("sample":
      drawn in proportion to the SMC weights, SMC's own output).
    seed: all randomness (generation and selection) derives from it.
    """

    strategy: str = "specs"
    n: int = 4
    k: int = 1
    temperature: float = 0.2
    sampling_temperature: float = 0.7
    top_p: float = 1.0
    ratio_weight: float = 1.0
    reward_weight: float = 10.0
    length_normalize: bool = False
    threshold: float | None = 7.0
    threshold_on: str = "score"
    target_mode: str = "greedy"
    switch_back_threshold: float | None = 0.7
    first_step: str = "target"
    generator: str = "target"
    resampling: str = "multinomial"
    ess_threshold: float = 1.0
    max_steps: int = 30
    max_step_tokens: int = 512
    step_delimiter: str = "\n\n"
    aggregation: str = "score"
    seed: int = 0

    def __post_init__(self):
        def choice(name, options):
            value = getattr(self, name)
            if value not in options:
                raise ValueError(f"{name} must be one of {options}, got {value!r}")

        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")

        def finite(name, *, optional=False, minimum=None):
            value = getattr(self, name)
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if minimum is not None and value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value!r}")

        choice("strategy", STRATEGIES)
        choice("threshold_on", ("score", "reward"))
        choice("target_mode", ("greedy", "soft"))
        choice("first_step", ("target", "draft"))
        choice("generator", ("target", "draft"))
        choice("aggregation", AGGREGATIONS)
        choice("resampling", RESAMPLING)
        for name in ("n", "k", "max_steps", "max_step_tokens"):
            positive_int(name)
        if self.n % self.k:
            raise ValueError(f"n must be a multiple of k (each beam proposes n // k), got n={self.n}, k={self.k}")
        finite("temperature", minimum=0.0)
        finite("ess_threshold", minimum=0.0)
        finite("sampling_temperature", minimum=0.0)
        finite("top_p", minimum=0.0)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        finite("ratio_weight")
        finite("reward_weight")
        finite("threshold", optional=True)
        finite("switch_back_threshold", optional=True)
        if self.strategy == "rsd":  # one target step per rejected draft, never a target mode
            object.__setattr__(self, "switch_back_threshold", None)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not isinstance(self.step_delimiter, str) or not self.step_delimiter:
            raise ValueError("step_delimiter must be a non-empty string")
        if not isinstance(self.length_normalize, bool):
            raise ValueError(f"length_normalize must be a bool, got {self.length_normalize!r}")

    @property
    def roles(self) -> frozenset[str]:
        """The models this search calls: "draft", "target", "prm"."""
        if self.strategy in ("specs", "rsd"):
            return frozenset({"draft", "target", "prm"})
        # smc weighs the log-ratio of a draft proposal under the target
        scores_target = self.strategy == "smc" and self.generator == "draft" and self.ratio_weight != 0
        return frozenset({self.generator, "prm"} | ({"target"} if scores_target else set()))

    def replace(self, **changes) -> "SearchConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict) -> "SearchConfig":
        """Build from a mapping (e.g. a recipe), rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown search setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)
