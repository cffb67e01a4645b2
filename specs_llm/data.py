"""Benchmark problems: the shipped MATH500, AMC23 and OlympiadBench sets, or a local JSONL.

Every source is read into the same record, `Problem(id, problem, answer,
source, meta)`, so the rest of the toolkit never sees a dataset's own field
names or answer types.

Shipped datasets (JSON Lines in ``specs_llm/data/``, copied from the project's
shared data; see its README for origins and licences):

=============  =====  ============================================================
name           rows   how fields map
=============  =====  ============================================================
math500        500    no id field: ``id = "math500-<i>"`` with ``i`` the 0-based
                      row index (the row order of HuggingFaceH4/MATH-500);
                      ``meta`` keeps solution, subject, level
amc23          40     ``id = str(id)``; answers are floats (27.0 -> "27");
                      ``meta`` keeps question, url
olympiadbench  675    ``id = str(id)``; answers are LaTeX in ``$...$``
                      (``"$69$,$84$"`` -> ``"69,84"``)
testbed        500    the held-out split of the trained testbed's arithmetic task,
                      ``heldout.jsonl`` beside the testbed models in use
                      (`specs_llm.testbed.heldout_path`); ``meta`` keeps
                      solution, start, ops, form
testbed-hard   -      the same for the harder testbed (issue 17), once built
                      (``$SPECS_TESTBED_HARD_DIR``)
=============  =====  ============================================================

Answer normalisation (`normalize_answer`, applied to every source, the raw
value kept in ``meta["raw_answer"]``):

- an ``int`` becomes its decimal string; a ``float`` with an integral value
  becomes the integer string (27.0 -> "27"), any other finite float the
  exact decimal of its shortest round-trip repr (0.5 -> "0.5", 1e-05 ->
  "0.00001"); ``bool``, NaN and infinities are errors;
- a string loses its unescaped ``$`` math delimiters (``\\$`` stays), then
  surrounding whitespace and one trailing full stop (OlympiadBench has
  ``"$(-\\infty, 0) \\cup\\{1\\}$."``);
- a list (several answers) becomes its normalised elements joined by ", ";
- an answer that is empty after this is an error.

Answers are therefore LaTeX math-mode strings without delimiters, ready for
`specs_llm.grading` and for prompts.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["DATASETS", "Problem", "load_problems", "normalize_answer"]

DATASETS: tuple[str, ...] = ("math500", "amc23", "olympiadbench", "testbed", "testbed-hard")

# Per shipped dataset: which JSON field holds id, problem and answer.
# An id field of None numbers the rows "<name>-<row index>".
_SHIPPED_FIELDS: dict[str, dict[str, str | None]] = {
    "math500": {"id": None, "problem": "problem", "answer": "answer"},
    "amc23": {"id": "id", "problem": "problem", "answer": "answer"},
    "olympiadbench": {"id": "id", "problem": "problem", "answer": "answer"},
    "testbed": {"id": "id", "problem": "problem", "answer": "answer"},
    "testbed-hard": {"id": "id", "problem": "problem", "answer": "answer"},
}
_DEFAULT_FIELDS: dict[str, str | None] = {"id": "id", "problem": "problem", "answer": "answer"}

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    Attributes:
        id: unique within its source (a string, whatever the file's id type).
        problem: the problem statement (LaTeX in Markdown), as in the file.
        answer: the gold answer, normalised by `normalize_answer`.
        source: the dataset name ("math500", ...) or the path of a local file.
        meta: every other field of the row, plus ``raw_answer`` (the answer
            value before normalisation). Not part of the hash.
    """

    id: str
    problem: str
    answer: str
    source: str
    meta: dict = field(default_factory=dict, hash=False)


def normalize_answer(value: Any) -> str:
    """Return a gold answer value as a LaTeX math string without delimiters.

    See the module docstring for the rules. Raises ``ValueError`` for a value
    that cannot be a gold answer (bool, NaN, infinity, empty, other types).
    """
    if isinstance(value, bool):
        raise ValueError(f"a boolean ({value!r}) is not an answer")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a non-finite number ({value!r}) is not an answer")
        if value.is_integer():
            return str(int(value))
        return format(Decimal(repr(value)), "f")
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("an empty list is not an answer")
        return ", ".join(normalize_answer(item) for item in value)
    if isinstance(value, str):
        text = _UNESCAPED_DOLLAR.sub("", value).strip()
        if text.endswith("."):
            text = text[:-1].rstrip()
        if not text:
            raise ValueError(f"answer {value!r} is empty")
        return text
    raise ValueError(f"an answer must be a string, number or list, not {type(value).__name__}")


def load_problems(
    name_or_path: str | os.PathLike,
    *,
    field_map: Mapping[str, str | None] | None = None,
    limit: int | None = None,
    ids: Iterable[str | int] | None = None,
) -> list[Problem]:
    """Load benchmark problems, in file order.

    Args:
        name_or_path: one of `DATASETS` (the shipped files), or the path of a
            local JSONL file (one JSON object per line; blank lines skipped).
        field_map: local files only: which JSON fields hold ``"id"``,
            ``"problem"`` and ``"answer"`` (default: those same names). Keys
            left out keep their default. ``{"id": None}`` numbers the rows
            ``"<file stem>-<row index>"`` instead of reading an id.
        limit: keep the first ``limit`` problems (after ``ids`` filtering).
        ids: keep only these ids (ints are compared as strings); every one
            must exist.

    Raises:
        ValueError: unknown dataset name; a field_map for a shipped dataset or
            with unknown keys; a line that is not a JSON object; a missing or
            empty field, bad answer, or duplicate id (each naming file and
            line); requested ids not in the file; a negative limit.
        FileNotFoundError: a local path that does not exist.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        if field_map is not None:
            raise ValueError(
                f"field_map applies to local files only; {name_or_path!r} is a shipped dataset"
            )
        source = name_or_path
        fields = _SHIPPED_FIELDS[name_or_path]
        from .testbed import TESTBEDS, heldout_path

        if name_or_path in TESTBEDS:  # the held-out split of the testbed models in use
            text = heldout_path(name_or_path).read_text(encoding="utf-8")
        else:
            text = resources.files("specs_llm").joinpath("data", f"{name_or_path}.jsonl").read_text(
                encoding="utf-8"
            )
        where = f"shipped dataset {name_or_path!r}"
        stem = name_or_path
    else:
        path = Path(name_or_path)
        if not path.is_file():
            if isinstance(name_or_path, str) and os.sep not in name_or_path and path.suffix == "":
                raise ValueError(
                    f"unknown dataset {name_or_path!r}; known datasets: {', '.join(DATASETS)} "
                    "(or pass the path of a local .jsonl file)"
                )
            raise FileNotFoundError(f"no such dataset file: {path}")
        fields = _resolve_field_map(field_map)
        source = str(path)
        text = path.read_text(encoding="utf-8")
        where = str(path)
        stem = path.stem

    problems = _parse_lines(text, fields=fields, source=source, where=where, stem=stem)
    if ids is not None:
        wanted = [str(i) for i in ids]
        present = {p.id for p in problems}
        missing = [i for i in wanted if i not in present]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ValueError(f"{len(missing)} requested id(s) not in {where}: {shown}")
        keep = set(wanted)
        problems = [p for p in problems if p.id in keep]
    if limit is not None:
        problems = problems[:limit]
    return problems


def _resolve_field_map(field_map: Mapping[str, str | None] | None) -> dict[str, str | None]:
    fields = dict(_DEFAULT_FIELDS)
    if field_map is None:
        return fields
    unknown = set(field_map) - set(fields)
    if unknown:
        raise ValueError(
            f"field_map keys must be among {sorted(fields)}, got unknown {sorted(unknown)}"
        )
    for key, value in field_map.items():
        if value is None and key != "id":
            raise ValueError(f"field_map[{key!r}] must name a field; only 'id' may be None")
        fields[key] = value
    return fields


def _parse_lines(
    text: str, *, fields: dict[str, str | None], source: str, where: str, stem: str
) -> list[Problem]:
    problems: list[Problem] = []
    first_line_of: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}, line {lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(
                f"{where}, line {lineno}: expected a JSON object, got {type(row).__name__}"
            )
        index = len(problems)
        problem_id = _required(row, fields["id"], where, lineno) if fields["id"] else None
        problem_id = str(problem_id) if problem_id is not None else f"{stem}-{index}"
        statement = _required(row, fields["problem"], where, lineno)
        if not isinstance(statement, str) or not statement.strip():
            raise ValueError(
                f"{where}, line {lineno}: field {fields['problem']!r} must be a non-empty string"
            )
        raw_answer = _required(row, fields["answer"], where, lineno)
        try:
            answer = normalize_answer(raw_answer)
        except ValueError as err:
            raise ValueError(f"{where}, line {lineno}: field {fields['answer']!r}: {err}") from None
        if problem_id in first_line_of:
            raise ValueError(
                f"{where}, line {lineno}: duplicate id {problem_id!r} "
                f"(first on line {first_line_of[problem_id]})"
            )
        first_line_of[problem_id] = lineno
        used = {name for name in fields.values() if name is not None}
        meta = {k: v for k, v in row.items() if k not in used}
        meta["raw_answer"] = raw_answer
        problems.append(Problem(problem_id, statement, answer, source, meta))
    return problems


def _required(row: dict, name: str, where: str, lineno: int) -> Any:
    if name not in row or row[name] is None:
        raise ValueError(f"{where}, line {lineno}: missing required field {name!r}")
    return row[name]
