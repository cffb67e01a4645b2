"""The small Protocols every backend implements, and the records they exchange.

The search loop (`specs_llm.search`) sees only these. A *state* is a question
plus the reasoning steps taken so far; every backend turns it into its own
prompt text in exactly one place (`LanguageModel.prompt`), with the chat
template of the model concerned, so the loop never formats prompts.

Units: log-probabilities in nats, rewards as returned by the PRM (in [0, 1]
for the sigmoid/softmax conventions), token counts as integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

__all__ = [
    "FINISH_REASONS",
    "BackendError",
    "Step",
    "State",
    "LanguageModel",
    "RewardModel",
]

# "stop": the step delimiter was produced (more steps follow);
# "eos": the model ended the response (the beam is complete);
# "length": the per-step token limit was hit.
FINISH_REASONS = ("stop", "eos", "length")


class BackendError(RuntimeError):
    """A model call failed; the message names the model and the call."""


@dataclass(frozen=True)
class State:
    """A partial solution: the question and the steps taken so far.

    ``steps`` are step texts without the delimiter; the prompt of the next
    step is ``prompt(question) + "".join(step + delimiter for step in steps)``
    (built by each backend's `LanguageModel.prompt`).
    """

    question: str
    steps: tuple[str, ...] = ()

    def extend(self, step: str) -> "State":
        return State(self.question, self.steps + (step,))


@dataclass(frozen=True)
class Step:
    """One generated reasoning step.

    text: the step text, without the stop delimiter.
    token_ids: the generated token ids (without the delimiter's tokens when
      the backend can separate them; the count is what latency is charged for).
    logprobs: per-token log-probabilities under the generating model (nats),
      one per token in ``token_ids``.
    finish_reason: one of FINISH_REASONS.
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str
    num_generated: int = field(default=-1)  # tokens actually decoded (>= len(token_ids)); -1: same

    def __post_init__(self):
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"token_ids and logprobs differ in length ({len(self.token_ids)} vs {len(self.logprobs)})"
            )
        if self.num_generated < 0:
            object.__setattr__(self, "num_generated", len(self.token_ids))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def logprob(self) -> float:
        """Log-probability of the whole step (sum over tokens, nats)."""
        return float(sum(self.logprobs))

    @property
    def complete(self) -> bool:
        """True when this step ends the response."""
        return self.finish_reason == "eos"


@runtime_checkable
class LanguageModel(Protocol):
    """A causal LM used as draft or target: proposes steps, scores steps.

    Both methods are batched over states: one call per model per search step.
    """

    name: str

    def prompt(self, state: State) -> str:
        """The model's prompt text for ``state`` (chat template applied once, here)."""
        ...

    def generate(
        self,
        states: Sequence[State],
        n: int,
        *,
        stop: Sequence[str],
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[list[Step]]:
        """``n`` sampled next steps for each state (a list of n Steps per state).

        Sampling stops at the first occurrence of any string in ``stop`` in
        the generated text only (never across the prompt boundary), at EOS, or
        after ``max_tokens`` tokens. Seeded: the same call with the same seed
        returns the same steps.
        """
        ...

    def score(self, states: Sequence[State], steps: Sequence[str]) -> list[list[float]]:
        """Per-token log-probabilities (nats) of ``steps[i]`` continuing ``states[i]``.

        Returns one list per pair; its sum is log p(step | state) under this
        model. Tokenisation is this model's own (text-level scoring), so a
        draft and a target with different tokenizers still compose.
        """
        ...


@runtime_checkable
class RewardModel(Protocol):
    """A process reward model: one reward per step of each partial solution."""

    name: str

    def rewards(self, states: Sequence[State]) -> list[list[float]]:
        """For each state, the reward of each of its steps (len == len(state.steps)).

        A reward may be NaN when the model produced one; the caller rejects
        such candidates and counts them, never turning them into a number.
        """
        ...
