"""Tests of specs_llm.grading: answer extraction, math-verify equivalence, the worker's hard timeout."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from specs_llm import grading
from specs_llm.data import load_problems
from specs_llm.grading import (
    STATUSES,
    Grade,
    Grader,
    default_grader,
    extract_answer,
    is_equivalent,
    normalize_math,
)

# -- answer extraction ---------------------------------------------------------

EXTRACTION_CASES = [
    # boxes: nested braces, escaped braces, \fbox, spacing, last box wins
    (r"so $x = \boxed{5}$.", "5"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\frac{\sqrt{3}}{2^{n+1}}}", r"\frac{\sqrt{3}}{2^{n+1}}"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),
    (r"\boxed{\left\{ 1, \frac{3}{2} \right\}}", r"\left\{ 1, \frac{3}{2} \right\}"),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    (r"\boxed{a\\{b}}", r"a\\{b}"),  # \\ is a line break, the brace after it counts
    (r"\boxed{\text{(C)}}", r"\text{(C)}"),
    (r"\fbox{7}", "7"),
    (r"\boxed {7}", "7"),
    (r"\boxed{  7 }", "7"),
    (r"First \boxed{1}, then \boxed{2}; finally \boxed{3}.", "3"),
    (r"\fbox{1} and \boxed{2}", "2"),
    (r"\boxed{x = \boxed{4}}", "4"),  # the box that starts last wins
    ("The answer is 3.\n\nActually \\boxed{4}", "4"),  # a box beats a phrase
    # no box, or a box that cannot be read
    ("We get 5, so 5 it is.", None),
    ("", None),
    (r"\boxed{}", None),
    (r"\boxed{  }", None),
    (r"\boxed{\frac{1}{2}", None),  # truncated: unbalanced
    (r"\boxed{3} and then \boxed{4", None),  # last box unbalanced: no fallback to 3
    (r"The answer is 3 \boxed{", None),  # a box exists: phrases are not tried
    # answer phrases (only without any box)
    ("Thus the answer is 7.", "7"),
    ("So the answer is: 3.14.", "3.14"),
    ("The final answer is $\\frac{1}{2}$. I hope it is correct.", r"\frac{1}{2}"),
    ("Final answer: $$x^2+1$$", "x^2+1"),
    ("FINAL ANSWER: \\(x=3\\)", "x=3"),
    ("The answer is \\[ 12 \\] indeed", "12"),
    ("**Final Answer:** 12", "12"),
    ("The answer is **(C)**.", "(C)"),
    ("the answer is 1.\nWait, the answer is 2.\nsome text", "2"),
    ("the answer is $x", None),  # unclosed $
    ("the answer is", None),
    ("the answer is .", None),
]


@pytest.mark.parametrize("text, expected", EXTRACTION_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_rejects_non_strings():
    with pytest.raises(TypeError, match="expects a string"):
        extract_answer(None)


def test_normalize_math():
    assert normalize_math("  $\\frac{1}{2}$ \n") == r"\frac{1}{2}"
    assert normalize_math(r"\$5  \text{ a   b}") == r"\$5 \text{ a b}"


# -- equivalence: cases where math-verify and a human grader agree -------------------

# (predicted, gold): equal. Drawn from the answer styles of MATH500, AMC23 and
# OlympiadBench.
EQUIVALENT = [
    # fractions and decimals
    ("0.5", r"\frac{1}{2}"),
    ("1/2", r"\frac{1}{2}"),
    (r"\dfrac{1}{2}", r"\frac{1}{2}"),
    (r"\tfrac12", "0.5"),
    (r"\frac{2}{4}", r"\frac12"),
    ("1.5", r"\frac32"),
    (r"\frac{3}{2}", r"1\frac{1}{2}"),
    (r"\frac{-1}{2}", r"-\frac12"),
    (r"-\frac{1}{2}", "-0.5"),
    # radicals
    (r"\sqrt{12}", r"2\sqrt{3}"),
    (r"\sqrt{3}\cdot 2", r"2\sqrt{3}"),
    (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}"),
    (r"3\sqrt{3}", r"\sqrt{27}"),
    (r"4-2\sqrt3", r"4-2 \sqrt{3}"),
    (r"\sqrt[3]{8}", "2"),
    # intervals
    (r"(-\infty,3]", r"(-\infty, 3]"),
    (r"(2,12)\cup(12,102)", r"(2,12) \cup (12,102)"),
    (r"x \in [2,5]", "[2,5]"),
    ("[2,5]", r"2 \le x \le 5"),
    # tuples and points
    (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)"),
    ("(1, 2, 3)", "(1,2,3)"),
    ("(15, -29)", "(15,-29)"),
    ("(4,5,7), (2,7,13), (1,8,19)", "(1,8,19), (2,7,13), (4,5,7)"),
    ("(2,6), (-6,6)", "(-6,6), (2,6)"),
    # degrees
    ("30", r"30^\circ"),
    (r"30^{\circ}", r"30^\circ"),
    ("60, 90", r"90^{\circ},60^{\circ}"),
    # text answers and \text{} wrappers
    ("C", r"\text{(C)}"),
    ("(C)", r"\text{(C)}"),
    (r"\text{C}", r"\text{(C)}"),
    (r"\textbf{(C)}", r"\text{(C)}"),
    ("Monday", r"\text{Monday}"),
    (r"\text{monday}", r"\text{Monday}"),
    ("even", r"\text{even}"),
    ("Devon", r"\text{Devon}"),
    # units and currency
    ("5", r"5\text{ cm}"),
    (r"5\text{ cm}", "5"),
    (r"5\text{ inches}", "5"),
    ("18.90", r"\$18.90"),
    (r"\$ 32,348", r"\$32,\!348"),
    # sets and several answers
    (r"\{2,1\}", r"\{1,2\}"),
    ("1, 2", r"\{1,2\}"),
    ("84, 69", "69,84"),
    (r"\pm 2, 0", "-2,0,2"),
    (r"2 \text{ or } 3", "2,3"),
    ("8, 2^{-2/3}", "2^{-2 / 3}, 8"),
    ("m=221, n=8", "221,8"),
    # equations
    ("3", "x=3"),
    ("x=3", "3"),
    ("y = 2x + 3", "y=2x+3"),
    ("2n-1", "k=2 n-1"),
    ("2x", "f(x)=2 x"),
    (r"2, -6-4\sqrt2", r"a=2, a=-6-4 \sqrt{2}"),
    # multiples of pi
    (r"\pi \cdot 2", r"2\pi"),
    (r"\pi/2", r"\frac{\pi}{2}"),
    # AMC23 float answers and integers
    ("27.0", "27"),
    ("27.00", "27"),
    ("3159.0", "3159"),
    ("3,159", "3159"),
    ("-1.0", "-1"),
    # percentages (integer ones; see MATH_VERIFY_DISAGREES for decimals)
    ("8", r"8 \%"),
    ("0.08", r"8 \%"),
    ("0.625", "62.5%"),
    (r"25\%", r"\frac14"),
    # algebra, complex numbers, matrices, big numbers
    ("9i+6", "6+9i"),
    ("n^2+1", "n^{2}+1"),
    ("(n+1)(n-1)", "n^2-1"),
    (r"\frac{(2n)!}{(n!)^2}", r"\binom{2n}{n}"),
    (r"\begin{pmatrix}-1&0\\0&-1\end{pmatrix}", r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}"),
    ("10^100", r"10^{100}"),
    ("1{,}000", "1000"),
    ("10^3", "1000"),
]

# (predicted, gold): not equal.
NOT_EQUIVALENT = [
    ("0.333", r"\frac13"),
    (r"\frac{1}{2}", "2"),
    (r"3\sqrt{2}", r"2\sqrt{3}"),
    ("1.414", r"\sqrt{2}"),
    (r"[-\infty,3)", r"(-\infty, 3]"),
    (r"(-\infty,3)", r"(-\infty, 3]"),
    (r"(2,102)", r"(2,12) \cup (12,102)"),
    ("(2,1)", "(1,2)"),
    ("(1,2)", "(1,2,3)"),
    ("(1,8,19), (2,7,13)", "(1,8,19), (2,7,13), (4,5,7)"),
    ("31", r"30^\circ"),
    ("D", r"\text{(C)}"),
    ("A", "C"),
    (r"\text{Tuesday}", r"\text{Monday}"),
    (r"\text{odd}", r"\text{even}"),
    ("6", r"5\text{ cm}"),
    (r"\{1,3\}", r"\{1,2\}"),
    ("1, 2, 3", "1, 2"),
    ("69", "69,84"),
    ("69, 84, 85", "69,84"),
    ("f(n)=n", "f(n)=n, g(n)=1"),
    ("y=3", "x=3"),
    ("x=4", "3"),
    ("f(x)=3x", "f(x)=2 x"),
    ("3x", "3"),
    (r"3\pi", r"2\pi"),
    ("6.2832", r"2\pi"),
    ("1.5708", r"\frac{\pi}{2}"),
    ("5", "-5"),
    ("-27", "27"),
    ("28", "27"),
    ("27.5", "27"),
    ("1, 234", "1234"),
    ("9", r"8 \%"),
    ("6-9i", "6+9i"),
    ("n^2+n", "n^{2}+1"),
    ("10^{99}", r"10^{100}"),
    ("266.67", r"\frac{800}{3}"),
    (r"-\infty", r"\infty"),
    (r"\begin{pmatrix} -1 & 0 \\ 0 & 1 \end{pmatrix}", r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}"),
    ("1358", "2516_8"),  # the value in base 10 is not the requested base-8 form
    ("0", "1"),
]

# Where math-verify 0.9 disagrees with a human grader. The test pins
# math-verify's verdict, so a version that changes it is noticed; the second
# boolean is the human verdict.
MATH_VERIFY_DISAGREES = [
    # (predicted, gold, math-verify says, a human says, why)
    ("62.5", "62.5%", False, True, "a decimal percentage: '8' = '8\\%' is accepted but '62.5' = '62.5%' is not"),
    ("17.5", r"17.5\%", False, True, "same: a decimal percentage loses its percent-free reading"),
    (r"2 \le x \le 5", "[2,5]", False, True, "relation vs interval only when the prediction is the set (the swap is equal)"),
    (r"x \le 3", r"(-\infty, 3]", False, True, "same asymmetry"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", "(1,2)", False, True, "a column vector vs the same point"),
    (r"e^{i\pi}", "-1", False, True, "Euler's identity is not simplified"),
    ("n^2-n-1", r"m_{\max }=n^{2}-n-1", False, True, "OlympiadBench gold 1782 does not parse (subscripted name); only the identical string matches"),
    ("(0,4]", "t(0,4]", False, True, "OlympiadBench gold 2045 has a typo (t for t\\in) and does not parse"),
    (r"\{1,2\}", "(1,2)", True, False, "a set is accepted for the ordered pair (1,2)"),
    (r"\sum_{k=1}^{10} k", "55", True, False, "unevaluated sums (and integrals, limits) are evaluated and accepted"),
    ("10_2", "2", False, True, "a base subscript is dropped: 10_2 is read as ten (and 2516 is accepted for 2516_8)"),
]


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout=10.0) as g:
        yield g


def test_case_lists_are_large_enough():
    assert len(EQUIVALENT) >= 40 and len(NOT_EQUIVALENT) >= 40


@pytest.mark.parametrize("predicted, gold", EQUIVALENT)
def test_equivalent(grader, predicted, gold):
    grade = grader.grade(predicted, gold, extract=False)
    assert grade.status == "ok", grade
    assert grade.correct, grade
    assert grade.predicted == predicted


@pytest.mark.parametrize("predicted, gold", NOT_EQUIVALENT)
def test_not_equivalent(grader, predicted, gold):
    grade = grader.grade(predicted, gold, extract=False)
    assert grade.status == "ok", grade
    assert not grade.correct, grade


@pytest.mark.parametrize("predicted, gold, math_verify, human, why", MATH_VERIFY_DISAGREES)
def test_known_math_verify_disagreements(grader, predicted, gold, math_verify, human, why):
    assert math_verify != human
    grade = grader.grade(predicted, gold, extract=False)
    assert grade.status == "ok", grade
    assert grade.correct == math_verify, f"math-verify changed its verdict ({why}): {grade}"


def _sample(name, k=10):
    problems = load_problems(name)
    step = len(problems) // k
    return [(name, p.id, p.answer) for p in problems[::step][:k]]


GOLD_SAMPLE = _sample("math500") + _sample("amc23") + _sample("olympiadbench")


@pytest.mark.parametrize("name, problem_id, answer", GOLD_SAMPLE)
def test_real_gold_answers_equal_themselves(grader, name, problem_id, answer):
    # Through math-verify itself (the public path would take the fast path).
    with grader._lock:
        status, correct, detail = grader._compare_in_worker(answer, answer, 10.0)
    assert (status, correct) == ("ok", True), (name, problem_id, answer, detail)
    # And as a model would write it, through extraction.
    grade = grader.grade(f"Therefore, the final answer is $\\boxed{{{answer}}}$.", answer)
    assert grade.correct and grade.predicted == answer


def test_grade_extracts_from_responses(grader):
    response = "We compute $1+1=2$.\n\nThen halve it: \\boxed{\\dfrac{1}{2}}"
    assert grader.grade(response, "0.5").correct
    assert grader.grade("The answer is 27.0", "27").correct
    missing = grader.grade("I could not solve it.", "27")
    assert missing == Grade(False, "no_answer", None, missing.detail)
    empty = grader.grade("", "27", extract=False)
    assert empty.status == "no_answer" and not empty.correct


def test_fast_path_and_counts():
    with Grader(timeout=10.0) as g:
        grade = g.grade("$27$", " 27 ", extract=False)
        assert grade == Grade(True, "ok", "$27$", "identical after normalisation")
        assert g._worker is None  # no worker was needed
        g.grade("no answer", "27")
        assert g.counts == {"ok": 1, "no_answer": 1, "timeout": 0, "error": 0}


def test_is_equivalent_uses_the_default_grader():
    before = default_grader().counts
    assert is_equivalent(r"\frac{1}{2}", "0.5")
    assert not is_equivalent("3", "4")
    after = default_grader().counts
    assert after["ok"] == before["ok"] + 2
    assert default_grader() is default_grader()


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout must be a positive finite number"):
        Grader(timeout=0)
    with pytest.raises(ValueError, match="timeout must be a positive finite number"):
        Grader(timeout=float("inf"))
    with pytest.raises(ValueError, match="module-level function"):
        Grader(_compare=lambda predicted, gold: (True, ""))
    with Grader() as g:
        with pytest.raises(TypeError, match="must be strings"):
            g.grade(27, "27")
        with pytest.raises(ValueError, match="gold answer .* is empty"):
            g.grade("27", " $ $ ")
        with pytest.raises(ValueError, match="timeout must be a positive finite number"):
            g.grade("1", "2", timeout=-1)
    with pytest.raises(RuntimeError, match="closed"):
        g.grade("1", "2")
    g.close()  # idempotent
    with pytest.raises(ValueError, match="status must be one of"):
        Grade(False, "wrong", None, "")
    with pytest.raises(ValueError, match="cannot be correct"):
        Grade(True, "timeout", "1", "")
    assert STATUSES == ("ok", "no_answer", "timeout", "error")


# -- the hard timeout and crashes ------------------------------------------------

HANG = r"\text{test: hang}"
CRASH = r"\text{test: crash}"
RAISE = r"\text{test: raise}"


def misbehaving_compare(predicted, gold):
    """Test hook run in the worker: hangs, exits or raises on the marker golds."""
    if gold == HANG:
        time.sleep(600)
    if gold == CRASH:
        os._exit(17)
    if gold == RAISE:
        raise ArithmeticError("boom")
    return grading._math_verify_compare(predicted, gold)


@pytest.fixture(scope="module")
def hooked():
    # One grader for these tests (each worker start costs about a second);
    # every test checks changes of counts and restarts, not totals.
    with Grader(timeout=1.0, _compare=misbehaving_compare) as g:
        yield g


def _warm(grader):
    """Make sure a worker is up, so timings below exclude its start."""
    assert grader.grade("1/2", "0.5", extract=False).correct
    return grader.counts, grader.restarts


def _delta(grader, counts):
    return {status: grader.counts[status] - counts[status] for status in STATUSES}


def test_hung_comparison_times_out_is_counted_and_the_next_one_works(hooked):
    counts, restarts = _warm(hooked)
    start = time.monotonic()
    grade = hooked.grade("1", HANG, extract=False)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + 3.0
    assert grade.status == "timeout" and not grade.correct
    assert "1 s" in grade.detail
    assert hooked.restarts == restarts + 1
    after = hooked.grade(r"\sqrt{12}", r"2\sqrt{3}", extract=False)
    assert after.status == "ok" and after.correct
    assert _delta(hooked, counts) == {"ok": 1, "no_answer": 0, "timeout": 1, "error": 0}


def test_crashing_comparison_is_an_error_counted_and_the_next_one_works(hooked):
    counts, restarts = _warm(hooked)
    grade = hooked.grade("1", CRASH, extract=False)
    assert grade.status == "error" and not grade.correct
    assert "exit code 17" in grade.detail
    assert hooked.restarts == restarts + 1
    assert hooked.grade("2", "2.0", extract=False).correct
    assert _delta(hooked, counts) == {"ok": 1, "no_answer": 0, "timeout": 0, "error": 1}


def test_raising_comparison_is_an_error_and_the_worker_survives(hooked):
    counts, restarts = _warm(hooked)
    grade = hooked.grade("1", RAISE, extract=False)
    assert (grade.status, grade.correct, grade.detail) == ("error", False, "ArithmeticError: boom")
    assert hooked.grade("3", "x=3", extract=False).correct
    assert hooked.restarts == restarts
    assert _delta(hooked, counts) == {"ok": 1, "no_answer": 0, "timeout": 0, "error": 1}


def test_per_call_timeout_overrides_the_default(hooked):
    _warm(hooked)
    start = time.monotonic()
    grade = hooked.grade("1", HANG, extract=False, timeout=0.3)
    assert grade.status == "timeout" and "0.3 s" in grade.detail
    assert time.monotonic() - start < 0.3 + 3.0


def test_worker_killed_while_idle_is_replaced_without_an_error(hooked):
    counts, restarts = _warm(hooked)
    hooked._worker.process.kill()
    hooked._worker.process.wait()
    grade = hooked.grade("0.25", r"\frac14", extract=False)
    assert grade.status == "ok" and grade.correct
    assert hooked.restarts == restarts + 1
    assert _delta(hooked, counts) == {"ok": 1, "no_answer": 0, "timeout": 0, "error": 0}


def test_a_real_input_that_hangs_math_verify_times_out(grader):
    # sympy evaluates 9^(9^9) (~370 million digits) in one C call that a
    # signal cannot interrupt; only killing the process stops it.
    counts, _ = _warm(grader)
    start = time.monotonic()
    grade = grader.grade("9^{9^{9}}", "1", extract=False, timeout=1.0)
    assert grade.status == "timeout" and time.monotonic() - start < 1.0 + 3.0
    assert grader.grade("9^{2}", "81", extract=False).correct
    assert _delta(grader, counts) == {"ok": 1, "no_answer": 0, "timeout": 1, "error": 0}


def test_works_from_a_script_without_a_main_guard(tmp_path):
    # The worker is a fresh interpreter, so the caller's __main__ is never
    # re-imported (a spawn-based worker would fail here).
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            r"""
            from specs_llm.grading import default_grader, is_equivalent
            print(is_equivalent("0.5", "\\frac{1}{2}"), is_equivalent("3", "4"))
            print(default_grader().counts)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "True False"
    assert lines[1] == "{'ok': 2, 'no_answer': 0, 'timeout': 0, 'error': 0}"
