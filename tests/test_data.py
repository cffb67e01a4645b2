"""Tests of specs_llm.data: the shipped datasets, answer normalisation, local files, errors."""

import json
import math
import re
from importlib import resources

import pytest

from specs_llm.data import DATASETS, Problem, load_problems, normalize_answer

UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


# -- shipped datasets -------------------------------------------------------


@pytest.mark.parametrize("name, rows", [("math500", 500), ("amc23", 40), ("olympiadbench", 675), ("testbed", 500)])
def test_shipped_dataset_loads_every_row_with_unique_ids(name, rows):
    problems = load_problems(name)
    assert len(problems) == rows
    assert len({p.id for p in problems}) == rows
    for p in problems:
        assert isinstance(p, Problem)
        assert p.source == name
        assert isinstance(p.id, str) and p.id
        assert isinstance(p.problem, str) and p.problem.strip()
        assert isinstance(p.answer, str) and p.answer == p.answer.strip() and p.answer
        assert not UNESCAPED_DOLLAR.search(p.answer)
        assert "raw_answer" in p.meta


def test_datasets_names_and_package_files():
    assert DATASETS == ("math500", "amc23", "olympiadbench", "testbed", "testbed-hard")
    for name in DATASETS[:3]:
        assert resources.files("specs_llm").joinpath("data", f"{name}.jsonl").is_file()
    # the testbed's held-out split lies beside its shipped models
    assert resources.files("specs_llm").joinpath("testbed", "weights", "heldout.jsonl").is_file()


def test_math500_ids_are_row_indices_and_meta_keeps_other_fields():
    problems = load_problems("math500")
    assert [p.id for p in problems[:3]] == ["math500-0", "math500-1", "math500-2"]
    assert problems[-1].id == "math500-499"
    first = problems[0]
    assert first.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert set(first.meta) == {"solution", "subject", "level", "raw_answer"}


def test_amc23_float_answers_become_integer_strings():
    problems = load_problems("amc23")
    assert problems[0].id == "0"
    assert problems[0].answer == "27"
    assert problems[0].meta["raw_answer"] == 27.0
    assert all(re.fullmatch(r"-?\d+", p.answer) for p in problems)
    assert {p.answer for p in problems} >= {"-1", "3159"}
    assert set(problems[0].meta) == {"question", "url", "raw_answer"}


def test_olympiadbench_dollar_delimited_answers_are_unwrapped():
    by_raw = {p.meta["raw_answer"]: p.answer for p in load_problems("olympiadbench")}
    assert by_raw["$69$,$84$"] == "69,84"
    assert by_raw["$221,$8$"] == "221,8"  # a typo in the source file
    assert by_raw["$(-\\infty, 0) \\cup\\{1\\}$."] == "(-\\infty, 0) \\cup\\{1\\}"
    assert by_raw["$\\frac{2}{3}$"] == "\\frac{2}{3}"
    assert by_raw["62.5%"] == "62.5%"


def test_math500_escaped_dollar_is_kept():
    answers = {p.answer for p in load_problems("math500")}
    assert r"\$18.90" in answers


def test_limit_and_ids_filter_keep_file_order():
    assert [p.id for p in load_problems("amc23", limit=3)] == ["0", "1", "2"]
    assert load_problems("amc23", limit=0) == []
    picked = load_problems("olympiadbench", ids=[1610, "1606"])
    assert [p.id for p in picked] == ["1606", "1610"]
    assert [p.id for p in load_problems("math500", ids=["math500-7", "math500-3"], limit=1)] == [
        "math500-3"
    ]


def test_problem_is_frozen_and_hashable():
    p = load_problems("amc23", limit=1)[0]
    with pytest.raises(AttributeError):
        p.answer = "28"
    assert hash(p) == hash(Problem(p.id, p.problem, p.answer, p.source, {}))


# -- answer normalisation ----------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        (27.0, "27"),
        (-1.0, "-1"),
        (0.5, "0.5"),
        (1e-05, "0.00001"),
        (2.25, "2.25"),
        (3, "3"),
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),
        ("  $x$. ", "x"),
        ("\\$18.90", "\\$18.90"),
        ("$69$,$84$", "69,84"),
        (["$1$", 2.0, "3"], "1, 2, 3"),
        ("4.25", "4.25"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("raw", [True, math.nan, math.inf, "", "  ", "$ $", ".", [], None, {"a": 1}])
def test_normalize_answer_rejects_non_answers(raw):
    with pytest.raises(ValueError):
        normalize_answer(raw)


# -- local files --------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


def test_local_file_default_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [{"id": 7, "problem": "1+1?", "answer": 2.0, "level": 1}, "\n", {"id": "b", "problem": "p", "answer": "$x$"}],
    )
    problems = load_problems(path)
    assert problems == [
        Problem("7", "1+1?", "2", str(path), {"level": 1, "raw_answer": 2.0}),
        Problem("b", "p", "x", str(path), {"raw_answer": "$x$"}),
    ]


def test_local_file_field_map_and_row_numbering(tmp_path):
    path = write_jsonl(
        tmp_path / "other.jsonl",
        [{"question": "q0", "final": ["1", "2"]}, {"question": "q1", "final": 0.25}],
    )
    problems = load_problems(str(path), field_map={"id": None, "problem": "question", "answer": "final"})
    assert [(p.id, p.problem, p.answer) for p in problems] == [
        ("other-0", "q0", "1, 2"),
        ("other-1", "q1", "0.25"),
    ]
    assert problems[0].meta == {"raw_answer": ["1", "2"]}


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'math5000'.*math500, amc23, olympiadbench"):
        load_problems("math5000")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_problems(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_problems("nope.jsonl")


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": 1, "problem": "p", "answer": "1"}\n', "{not json\n"], r"bad\.jsonl, line 2: not valid JSON"),
        (["[1, 2]\n"], r"bad\.jsonl, line 1: expected a JSON object, got list"),
        (['{"id": 1, "answer": "1"}\n'], r"bad\.jsonl, line 1: missing required field 'problem'"),
        (['{"id": 1, "problem": "p"}\n'], r"line 1: missing required field 'answer'"),
        (['{"problem": "p", "answer": "1"}\n'], r"line 1: missing required field 'id'"),
        (['{"id": 1, "problem": "p", "answer": null}\n'], r"line 1: missing required field 'answer'"),
        (['{"id": 1, "problem": "", "answer": "1"}\n'], r"line 1: field 'problem' must be a non-empty string"),
        (['{"id": 1, "problem": "p", "answer": "$$"}\n'], r"line 1: field 'answer': answer '\$\$' is empty"),
        (['{"id": 1, "problem": "p", "answer": true}\n'], r"line 1: field 'answer': a boolean"),
        (
            ['{"id": 1, "problem": "p", "answer": "1"}\n', "\n", '{"id": "1", "problem": "q", "answer": "2"}\n'],
            r"line 3: duplicate id '1' \(first on line 1\)",
        ),
    ],
)
def test_bad_lines_name_file_line_and_problem(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=message):
        load_problems(path)


def test_bad_arguments(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", [{"id": 1, "problem": "p", "answer": "1"}])
    with pytest.raises(ValueError, match="field_map applies to local files only"):
        load_problems("amc23", field_map={"answer": "answer"})
    with pytest.raises(ValueError, match=r"unknown \['solution'\]"):
        load_problems(path, field_map={"solution": "x"})
    with pytest.raises(ValueError, match="only 'id' may be None"):
        load_problems(path, field_map={"answer": None})
    with pytest.raises(ValueError, match="limit must be a non-negative int"):
        load_problems(path, limit=-1)
    with pytest.raises(ValueError, match=r"2 requested id\(s\) not in .*: 2, 3"):
        load_problems(path, ids=["1", "2", 3])
