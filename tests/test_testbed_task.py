"""The testbed task: generator, exact step checker, splits, JSONL; and its BPE tokenizer."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specs_llm.testbed.task import (
    Difficulty,
    Problem,
    check_steps,
    make_split,
    read_jsonl,
    sample_problem,
    training_problems,
    write_jsonl,
)

EXAMPLE = Problem("x", 23, (("+", 58), ("-", 17), ("+", 9)), "Compute 23 + 58 - 17 + 9.")


def test_worked_solution_of_the_issue_example():
    assert EXAMPLE.solution == "23 + 58 = 81.\n\n81 - 17 = 64.\n\n64 + 9 = 73.\n\nThe answer is \\boxed{73}."
    assert EXAMPLE.answer == "73"
    check = check_steps(EXAMPLE, EXAMPLE.steps)
    assert check.correct == (True,) * 4 and check.solved


@given(st.integers(0, 10**6), st.integers(1, 3), st.sampled_from([("+",), ("+", "-"), ("+", "-", "*")]),
       st.booleans())
def test_generated_problems_solve_themselves(seed, digits, operators, negative):
    d = Difficulty(digits=digits, operators=operators, allow_negative=negative)
    p = sample_problem(random.Random(seed), d)
    assert d.min_ops <= len(p.ops) <= d.max_ops
    assert len(p.steps) == len(p.ops) + 1  # 2-6 steps
    assert check_steps(p, p.steps).solved
    assert check_steps(p, [" " + s + " " for s in p.steps]).solved  # surrounding whitespace is ignored
    if not negative:
        assert min(p.values) >= 0
    for op, x in p.ops:
        assert op in operators
        assert (2 <= x <= 9) if op == "*" else (1 <= x < 10**digits)


def test_step_verdicts_are_given_the_previous_steps():
    steps = list(EXAMPLE.steps)
    wrong = ["23 + 58 = 80."] + steps[1:]
    c = check_steps(EXAMPLE, wrong)
    # step 1 is wrong; step 2 starts from 81, not from the stated 80, so it is wrong too
    assert c.correct == (False, False, True, True) and c.prefix_correct == (False,) * 4 and not c.solved
    carried = ["23 + 58 = 80.", "80 - 17 = 63.", "63 + 9 = 72.", "The answer is \\boxed{72}."]
    c = check_steps(EXAMPLE, carried)  # a wrong start carried on correctly
    assert c.correct == (False, True, True, True) and c.prefix_correct == (False,) * 4
    assert check_steps(EXAMPLE, steps[:2] + ["64 - 9 = 55."] + steps[3:]).correct == (True, True, False, False)
    assert check_steps(EXAMPLE, steps[:2] + ["The answer is \\boxed{64}."]).correct == (True, True, False)
    assert check_steps(EXAMPLE, steps + ["64 + 9 = 73."]).correct == (True,) * 4 + (False,)
    assert not check_steps(EXAMPLE, steps + ["64 + 9 = 73."]).solved
    assert check_steps(EXAMPLE, steps[:3]).prefix_correct == (True,) * 3  # unfinished: right so far
    assert not check_steps(EXAMPLE, steps[:3]).solved
    assert check_steps(EXAMPLE, ["23+58=81."] + steps[1:]).correct[0] is False  # the format is exact
    assert check_steps(EXAMPLE, []).solved is False


def test_splits_are_seeded_distinct_and_disjoint(tmp_path):
    d = Difficulty(digits=1, start_digits=2)
    held = make_split(0, 200, d)
    assert held == make_split(0, 200, d) and held != make_split(1, 200, d)
    assert len({p.key for p in held}) == 200
    assert [p.id for p in held[:2]] == ["testbed-0", "testbed-1"]
    train = list(itertools.islice(training_problems(0, d, exclude=held), 5000))
    assert not {p.key for p in train} & {p.key for p in held}
    assert {p.form for p in held} == {"compute", "story"}
    path = write_jsonl(held, tmp_path / "h.jsonl")
    assert read_jsonl(path) == held

    from specs_llm.data import load_problems

    loaded = load_problems(str(path))
    assert [(p.id, p.problem, p.answer) for p in loaded] == [(p.id, p.question, p.answer) for p in held]


def test_bad_difficulty_is_named():
    with pytest.raises(ValueError, match="operators"):
        Difficulty(operators=("/",))
    with pytest.raises(ValueError, match="min_ops"):
        Difficulty(min_ops=3, max_ops=2)
    with pytest.raises(ValueError, match="digits"):
        Difficulty(digits=0)


def test_tokenizer_merges_like_a_real_one(tmp_path):
    from specs_llm.testbed.tokenizer import corpus, load_tokenizer, train_tokenizer

    problems = list(itertools.islice(training_problems(3, Difficulty(digits=1, start_digits=2)), 500))
    tok = train_tokenizer(corpus(problems), 400)
    assert 259 < len(tok) <= 400
    pieces = lambda text: [tok.decode([i]) for i in tok.encode(text, add_special_tokens=False)]  # noqa: E731
    assert pieces("81.\n\n") == ["8", "1", ".\n\n"]  # digits alone (Qwen2's rule); "." merges with "\n\n"
    assert "\n\n" in pieces("a\n\nb") and " answer" in pieces("The answer is")
    # lossless on any text, special tokens are single ids
    for text in ("héllo ∑ 12\r\n", "<|im_end|>", "x" * 50):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert len(tok.encode("<|im_end|>", add_special_tokens=False)) == 1
    # what transformers reloads (Qwen2's tokenizer class for a qwen2 config) encodes the same
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    again = load_tokenizer(tmp_path)
    text = tok.apply_chat_template([{"role": "user", "content": problems[0].question}], add_generation_prompt=True,
                                   tokenize=False) + problems[0].solution
    assert again.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
