"""The small MDP and helpers shared by the search-loop tests on the MDP backend."""

import jax
import numpy as np

from specs_llm.backends.mdp import MDPLanguageModel, MDPRewardModel, parse_blocks, sequence_index
from specs_llm.search import Models
from specs_theory.mdp import random_mdp


def small_mdp():
    """K = 3, H = 3, beta = 0.5: 27 sequences, small enough for 8000-run law tests."""
    return random_mdp(jax.random.key(0), K=3, H=3, beta=0.5, draft_noise=1.0)


def mdp_models(mdp, prm_kind: str) -> Models:
    """Draft, target and the idealised PRM (``prm_kind``: "q", "a" or "hard") of ``mdp``."""
    return Models(MDPLanguageModel(mdp, "draft"), MDPLanguageModel(mdp, "target"), MDPRewardModel(mdp, prm_kind))


def law_counts(results, K, H):
    """How often each of the K**H sequences was returned."""
    idx = [sequence_index(parse_blocks([s.text for s in r.steps], K), K) for r in results]
    return np.bincount(idx, minlength=K**H)
