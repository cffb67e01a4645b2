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

    text: the step text, without the stop string that ended it.
    token_ids: the generated token ids of ``text + end``: every token decoded
      but a final EOS. The stop string's tokens are kept because a merging
      tokenizer may write the step's last characters and the delimiter as one
      token (".\n\n"), so the step cannot be cut from its delimiter at a token
      boundary; the step *event* is "this text, then the delimiter".
    logprobs: per-token log-probabilities under the generating model (nats),
      one per token in ``token_ids``.
    finish_reason: one of FINISH_REASONS.
    num_generated: tokens actually decoded (the EOS included; -1: same as
      ``len(token_ids)``); what latency is charged for.
    end: the stop string that ended the step ("stop"), else "".
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str
    num_generated: int = field(default=-1)
    end: str = ""

    def __post_init__(self):
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"token_ids and logprobs differ in length ({len(self.token_ids)} vs {len(self.logprobs)})"
            )
        if self.end and self.finish_reason != "stop":
            raise ValueError(f"only a step that finished with 'stop' has an end string, got {self.end!r}")
        if self.num_generated < 0:
            object.__setattr__(self, "num_generated", len(self.token_ids))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def scored_text(self) -> str:
        """``text + end``: the text whose log-probability `logprob` is. Another
        model scoring this step (`LanguageModel.score`) is given this text, so
        both models judge the same event with the same tokens."""
        return self.text + self.end

    @property
    def logprob(self) -> float:
        """Log-probability of the step event (sum over its tokens, nats)."""
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
        seed: int | Sequence[int],
    ) -> list[list[Step]]:
        """``n`` sampled next steps for each state (a list of n Steps per state).

        Sampling stops at the first occurrence of any string in ``stop`` in
        the generated text only (never across the prompt boundary), at EOS, or
        after ``max_tokens`` tokens. Seeded: ``seed`` is one int for the call
        or one per state (`common.state_seeds`); a state's samples depend on
        its prompt and its seed only, not on the other states of the call.
        """
        ...

    def score(self, states: Sequence[State], steps: Sequence[str]) -> list[list[float]]:
        """Per-token log-probabilities (nats) of ``steps[i]`` continuing ``states[i]``.

        Returns one list per pair; its sum is log p(step | state) under this
        model. ``steps[i]`` is a text (a sampled step's `Step.scored_text`, its
        delimiter included), tokenised on its own with this model's tokenizer
        and appended to the prompt's tokens (text-level scoring), so a draft
        and a target with different tokenizers still compose, and a model
        scoring its own sample gets the sample's log-probs back.
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
