"""Cases and checks of cached-prefix scoring shared by the hf, vllm and openai_server tests.

Cached scoring (``prefix_cache=True``) must equal the full recompute
(``prefix_cache=False``, every context read whole): log-probs and rewards to
1e-5 in float32, and a seeded SPECS search with the same selections. The
cases run on the shipped testbed models (`specs_llm.testbed`): duplicates,
a first step with an empty prefix, one-token and empty steps, siblings
sharing their first tokens, another question, long prefixes whose steps
cross a 32-token cache block.
"""

from __future__ import annotations

import pytest

from specs_llm.backends.base import State

TOL = 1e-5
Q = "Compute 47 + 8 - 5 + 9."
Q2 = "Compute 77 + 3 + 8 + 9."
LONG = State("Compute 12 + 5 - 3 + 8 - 4 + 6 + 1.",
             ("12 + 5 = 17.", "17 - 3 = 14.", "14 + 8 = 22.", "22 - 4 = 18.", "18 + 6 = 24."))


def step(text: str) -> str:
    """A scored step text: the step and its delimiter (`Step.scored_text`)."""
    return text + "\n\n"


def assert_close(got: list[list[float]], want: list[list[float]], tol: float = TOL) -> None:
    assert [len(row) for row in got] == [len(row) for row in want]
    for row_got, row_want in zip(got, want):
        assert row_got == pytest.approx(row_want, abs=tol, rel=0)


LM_PAIRS = [
    # first step: the prefix is the chat prompt only
    (State(Q), step("47 + 8 = 55.")),
    (State(Q), step("47 + 8 = 56.")),
    (State(Q), step("47 + 8 = 55.")),  # a duplicate
    (State(Q), step("47 + 8 = 55. So the sum of the first two numbers is 55.")),  # longer
    (State(Q), "4"),  # one token
    # one earlier step
    (State(Q, ("47 + 8 = 55.",)), step("55 - 5 = 50.")),
    (State(Q, ("47 + 8 = 55.",)), ""),  # an empty step
    (State(Q, ("47 + 8 = 55.",)), step("55 - 5 = 49.")),
    (State(Q, ("47 + 8 = 56.",)), step("56 - 5 = 51.")),
    # another question, and a long prefix
    (State(Q2), step("77 + 3 = 80.")),
    (LONG, step("24 + 1 = 25.")),
    (LONG, step("The answer is \\boxed{25}.")),
    (LONG, step("24 + 1 = 25.")),
]


PRM_STATES = [
    State(Q),  # no steps: []
    State(Q, ("47 + 8 = 55.",)),  # one step: the parent is the chat prompt
    State(Q, ("47 + 8 = 56.",)),
    State(Q, ("47 + 8 = 55.", "55 - 5 = 50.")),  # children of one parent
    State(Q, ("47 + 8 = 55.", "55 - 5 = 51.")),
    State(Q, ("47 + 8 = 55.", "55 - 5 = 50. Then 50 + 9 = 59, so the answer is 59.")),
    State(Q, ("47 + 8 = 55.", "55 - 5 = 50.")),  # a duplicate
    State(Q, ("47 + 8 = 56.", "56 - 5 = 51.")),  # another parent
    State(Q2, ("77 + 3 = 80.",)),  # another question
    LONG.extend("24 + 1 = 25."),  # a long prefix
    LONG.extend("The answer is \\boxed{25}."),
]



def same_search(make_models, *, problems: int = 3) -> None:
    """A seeded SPECS search gives the same result with ``make_models(True)``
    (cached scoring) and ``make_models(False)``: `search.Models` of the testbed."""
    from specs_llm.config import SearchConfig
    from specs_llm.data import load_problems
    from specs_llm.search import run_search

    questions = [p.problem for p in load_problems("testbed", limit=problems)]
    config = SearchConfig(strategy="specs", n=4, k=2, max_steps=8, max_step_tokens=32, seed=3)
    runs = [run_search(questions, make_models(cache), config) for cache in (True, False)]
    for a, b in zip(*runs):
        assert a.error is None and b.error is None
        assert (a.text, a.answer, a.counts) == (b.text, b.answer, b.counts)
        assert [(s.text, s.source, s.deferred, s.num_tokens) for s in a.steps] == \
               [(s.text, s.source, s.deferred, s.num_tokens) for s in b.steps]
        for x, y in zip(a.steps, b.steps):
            assert (x.score, x.reward) == pytest.approx((y.score, y.reward), abs=TOL)
            for u, v in ((x.logp_draft, y.logp_draft), (x.logp_target, y.logp_target)):
                assert (u is None) == (v is None) and (u is None or u == pytest.approx(v, abs=TOL))
    assert any(s.source == "draft" for r in runs[0] for s in r.steps)  # the target scored drafts
