"""A `specs_theory` BlockMDP behind the LLM Protocols.

Each block y in {0..K-1} is the step text ``"b<y>"``; a state's steps spell
its prefix, so the search loop runs unchanged and its output law can be
checked against `specs_theory.exact`. Log-probabilities are exact (nats); the
PRM is the idealised one (Q* or A*, THEORY.md 1.2) or the hard value
Q^{pi_t} (3.7). The response ends (finish reason "eos") when depth H is
reached.

Each block counts as ``tokens_per_block`` tokens (its log-probability spread
evenly over them) so latency cost models see realistic token counts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from specs_theory import exact
from specs_theory.mdp import BlockMDP

from .base import State, Step
from .common import state_seeds

__all__ = ["MDPLanguageModel", "MDPRewardModel", "block_text", "parse_blocks", "sequence_index"]


def block_text(y: int) -> str:
    return f"b{y}"


def parse_blocks(steps: Sequence[str], K: int) -> list[int]:
    """Blocks of a state's steps; a clear error for text that is not a block."""
    out = []
    for s in steps:
        if not (s.startswith("b") and s[1:].isdigit() and int(s[1:]) < K):
            raise ValueError(f"not an MDP block step: {s!r} (expected 'b<y>' with y < {K})")
        out.append(int(s[1:]))
    return out


def sequence_index(blocks: Sequence[int], K: int) -> int:
    """idx = sum_j y_j K**(h-j) (THEORY.md 1.1)."""
    idx = 0
    for y in blocks:
        idx = idx * K + y
    return idx


def _prefix(state: State, mdp: BlockMDP) -> tuple[int, int]:
    blocks = parse_blocks(state.steps, mdp.K)
    if len(blocks) >= mdp.H:
        raise ValueError(f"state already has {len(blocks)} blocks; the MDP has horizon {mdp.H}")
    return len(blocks), sequence_index(blocks, mdp.K)


class MDPLanguageModel:
    """The target (``role="target"``) or draft policy of ``mdp`` as a LanguageModel."""

    def __init__(self, mdp: BlockMDP, role: str, *, tokens_per_block: int = 1, name: str | None = None):
        if role not in ("target", "draft"):
            raise ValueError(f"role must be 'target' or 'draft', got {role!r}")
        if tokens_per_block < 1:
            raise ValueError(f"tokens_per_block must be >= 1, got {tokens_per_block}")
        self.mdp, self.role, self.tokens_per_block = mdp, role, tokens_per_block
        self.name = name or f"mdp-{role}"
        logp = mdp.target_logp if role == "target" else mdp.draft_logp
        self._logp = [np.asarray(a, dtype=np.float64) for a in logp]

    def prompt(self, state: State) -> str:
        return state.question + "\n" + "".join(s + "\n\n" for s in state.steps)

    def _step(self, y: int, logp: float, depth: int) -> Step:
        L = self.tokens_per_block
        return Step(block_text(y), (y,) * L, (logp / L,) * L, "eos" if depth + 1 == self.mdp.H else "stop")

    def generate(self, states, n, *, stop=("\n\n",), max_tokens=512, temperature=1.0, seed=0):
        """``n`` iid blocks per state from pi(.|prefix), tempered by ``temperature``.

        Returned log-probs are those of the untempered policy, as for LLMs.
        State i draws from its own generator, seeded by its seed
        (`common.state_seeds`), as the LLM backends do.
        """
        out = []
        for state, state_seed in zip(states, state_seeds(seed, len(states))):
            rng = np.random.default_rng(state_seed)
            depth, idx = _prefix(state, self.mdp)
            row = self._logp[depth][idx]
            if temperature == 0:
                ys = np.full(n, int(np.argmax(row)))
            else:
                t = row / temperature
                p = np.exp(t - t.max())
                ys = rng.choice(self.mdp.K, size=n, p=p / p.sum())
            out.append([self._step(int(y), float(row[y]), depth) for y in ys])
        return out

    def score(self, states, steps):
        out = []
        for state, text in zip(states, steps):
            depth, idx = _prefix(state, self.mdp)
            (y,) = parse_blocks([text], self.mdp.K)
            out.append([float(self._logp[depth][idx, y]) / self.tokens_per_block] * self.tokens_per_block)
        return out


class MDPRewardModel:
    """The idealised PRM: reward of step h is Q*(s_{h-1}, y_h) ("q"), A* ("a"),
    or the hard value Q^{pi_t} ("hard")."""

    def __init__(self, mdp: BlockMDP, kind: str = "q", *, name: str | None = None):
        if kind == "q":
            table = exact.q_values(mdp)
        elif kind == "a":
            table = exact.advantages(mdp)
        elif kind == "hard":
            V = exact.hard_values(mdp)
            table = [V[h + 1].reshape(mdp.K**h, mdp.K) for h in range(mdp.H)]
        else:
            raise ValueError(f"kind must be 'q', 'a' or 'hard', got {kind!r}")
        self.mdp, self.kind = mdp, kind
        self.name = name or f"mdp-prm-{kind}"
        self._table = [np.asarray(a, dtype=np.float64) for a in table]

    def rewards(self, states):
        out = []
        for state in states:
            blocks = parse_blocks(state.steps, self.mdp.K)
            idx, rs = 0, []
            for h, y in enumerate(blocks):
                rs.append(float(self._table[h][idx, y]))
                idx = idx * self.mdp.K + y
            out.append(rs)
        return out
