r"""The testbed task: multi-step arithmetic problems with worked, checkable solutions.

A problem is a start value and a list of operations, asked in one of two
forms::

    compute: "Compute 23 + 58 - 17 + 9."
    story:   "A jar holds 23 coins. Then 58 more are put in, 17 are taken
              out and 9 more are put in. How many coins are in the jar?"

Its worked solution has one step per operation and a final answer step, each a
sentence ending in ".", separated by the step delimiter "\n\n" (so a
merging tokenizer writes ".\n\n" as one token, as real ones do)::

    23 + 58 = 81.

    81 - 17 = 64.

    64 + 9 = 73.

    The answer is \boxed{73}.

so a problem with m operations has m + 1 steps (2-6 steps for 1-5
operations). Everything is exact: `check_steps` says whether each step of any
response is right given the steps before it, and `Problem.answer` is the gold
answer the runner grades against.

Difficulty knobs (`Difficulty`): the number of operations, the operand size
in decimal digits, the operators ("+", "-", "*" with a one-digit factor), and
whether intermediate values may go negative.

Splits: `make_split` draws a seeded held-out set; `training_problems`
streams training problems from another seed and skips every problem whose
(start, operations) is in the held-out set, so the two never share a
problem. `write_jsonl` exports a split in the format `specs_llm.data` loads
(``id``, ``problem``, ``answer``; the rest is kept as ``meta``).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

__all__ = [
    "DELIMITER",
    "OPERATORS",
    "FORMS",
    "Difficulty",
    "Problem",
    "apply",
    "StepCheck",
    "sample_problem",
    "make_split",
    "training_problems",
    "check_steps",
    "response_steps",
    "write_jsonl",
    "read_jsonl",
]

DELIMITER = "\n\n"
OPERATORS = ("+", "-", "*")
FORMS = ("compute", "story")

_ARITHMETIC_STEP = re.compile(r"^(-?\d+) ([+\-*]) (-?\d+) = (-?\d+)\.$")
_ANSWER_STEP = re.compile(r"^The answer is \\boxed\{(-?\d+)\}\.$")

# story form: (container sentence, unit, put-in phrase, take-out phrase, times phrase)
_STORIES = (
    ("A jar holds {x} coins.", "coins", "are in the jar"),
    ("A shelf has {x} books.", "books", "are on the shelf"),
    ("A farm keeps {x} sheep.", "sheep", "are on the farm"),
    ("A box contains {x} pens.", "pens", "are in the box"),
)


@dataclass(frozen=True)
class Difficulty:
    """How hard the generated problems are.

    min_ops, max_ops: number of operations (the solution has ops + 1 steps).
    digits: operands have 1 to ``digits`` decimal digits; a "*" factor always
      has one digit (2-9).
    start_digits: the start value has 1 to ``start_digits`` digits (default:
      ``digits``).
    operators: drawn uniformly from these (of `OPERATORS`).
    allow_negative: if False, a "-" never takes the running value below 0
      (its operand is capped by the value; a value of 0 gets "+" instead).
    forms: question forms, drawn uniformly (of `FORMS`).
    """

    min_ops: int = 1
    max_ops: int = 5
    digits: int = 2
    start_digits: int | None = None
    operators: tuple[str, ...] = ("+", "-")
    allow_negative: bool = False
    forms: tuple[str, ...] = FORMS

    def __post_init__(self):
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if not 1 <= self.digits <= 6:
            raise ValueError(f"digits must be in 1..6, got {self.digits}")
        if self.start_digits is not None and not 1 <= self.start_digits <= 6:
            raise ValueError(f"start_digits must be in 1..6, got {self.start_digits}")
        bad = [o for o in self.operators if o not in OPERATORS]
        if bad or not self.operators:
            raise ValueError(f"operators must be a non-empty subset of {OPERATORS}, got {self.operators}")
        bad = [f for f in self.forms if f not in FORMS]
        if bad or not self.forms:
            raise ValueError(f"forms must be a non-empty subset of {FORMS}, got {self.forms}")


@dataclass(frozen=True)
class Problem:
    """One problem: ``start`` then ``ops`` (operator, operand) in order, asked as ``question``."""

    id: str
    start: int
    ops: tuple[tuple[str, int], ...]
    question: str
    form: str = "compute"

    @property
    def values(self) -> tuple[int, ...]:
        """The running value after 0, 1, ..., m operations."""
        out = [self.start]
        for op, x in self.ops:
            out.append(apply(out[-1], op, x))
        return tuple(out)

    @property
    def answer(self) -> str:
        return str(self.values[-1])

    @property
    def steps(self) -> tuple[str, ...]:
        """The worked solution, one string per step (no delimiter)."""
        v = self.values
        out = [f"{v[i]} {op} {x} = {v[i + 1]}." for i, (op, x) in enumerate(self.ops)]
        return tuple(out) + (_answer_step(v[-1]),)

    @property
    def solution(self) -> str:
        return DELIMITER.join(self.steps)

    @property
    def key(self) -> tuple:
        """What makes two problems the same (the question form aside)."""
        return (self.start, self.ops)

    def to_json(self) -> dict:
        return {"id": self.id, "problem": self.question, "answer": self.answer, "solution": self.solution,
                "start": self.start, "ops": [list(o) for o in self.ops], "form": self.form}


def apply(a: int, op: str, b: int) -> int:
    """``a op b`` for an operator of `OPERATORS`."""
    return a + b if op == "+" else a - b if op == "-" else a * b


def _answer_step(value: int) -> str:
    return f"The answer is \\boxed{{{value}}}."


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(1, 10**digits - 1)


def _question(rng: random.Random, start: int, ops: Sequence[tuple[str, int]], form: str) -> str:
    if form == "compute":
        return "Compute " + " ".join([str(start)] + [f"{op} {x}" for op, x in ops]) + "."
    opening, unit, where = rng.choice(_STORIES)
    phrases = []
    for op, x in ops:
        if op == "+":
            phrases.append(f"{x} more are put in")
        elif op == "-":
            phrases.append(f"{x} are taken out")
        else:
            phrases.append(f"the number is multiplied by {x}")
    if len(phrases) == 1:
        middle = phrases[0]
    else:
        middle = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{opening.format(x=start)} Then {middle}. How many {unit} {where}?"


def sample_problem(rng: random.Random, difficulty: Difficulty = Difficulty(), *, id: str = "") -> Problem:
    """One problem drawn with ``rng`` (a `random.Random`)."""
    d = difficulty
    m = rng.randint(d.min_ops, d.max_ops)
    value = start = _operand(rng, d.start_digits or d.digits)
    ops = []
    for _ in range(m):
        op = rng.choice(d.operators)
        if op == "-" and not d.allow_negative and value < 1:
            op = "+" if "+" in d.operators else "*"
        if op == "*":
            x = rng.randint(2, 9)
        elif op == "-" and not d.allow_negative:
            x = rng.randint(1, min(value, 10**d.digits - 1))
        else:
            x = _operand(rng, d.digits)
        ops.append((op, x))
        value = apply(value, op, x)
    form = rng.choice(d.forms)
    return Problem(id, start, tuple(ops), _question(rng, start, ops, form), form)


def make_split(seed: int, size: int, difficulty: Difficulty = Difficulty(), *, prefix: str = "testbed") -> list[Problem]:
    """``size`` distinct problems (by `Problem.key`) drawn from ``seed``, ids ``<prefix>-<i>``."""
    rng = random.Random(f"specs-testbed-split/{seed}")
    out, seen = [], set()
    while len(out) < size:
        p = sample_problem(rng, difficulty, id=f"{prefix}-{len(out)}")
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out


def training_problems(seed: int, difficulty: Difficulty = Difficulty(), *,
                      exclude: Sequence[Problem] = ()) -> Iterator[Problem]:
    """An endless seeded stream of problems, none of which shares a key with ``exclude``."""
    rng = random.Random(f"specs-testbed-train/{seed}")
    banned = {p.key for p in exclude}
    i = 0
    while True:
        p = sample_problem(rng, difficulty, id=f"train-{i}")
        if p.key not in banned:
            i += 1
            yield p


# ---------------------------------------------------------------------------
# checking responses


@dataclass(frozen=True)
class StepCheck:
    """Verdicts on the steps of one response.

    correct[i]: step i is right given the steps before it: an arithmetic step
      continues the previous step's stated result (the start value for the
      first) with the problem's next operation and computes it exactly; the
      answer step comes right after the last operation and boxes the previous
      step's stated result; nothing may follow the answer step.
    prefix_correct[i]: steps 0..i are all correct (the PRM's label).
    solved: the response is the whole correct solution, answer step included.
    """

    correct: tuple[bool, ...]
    prefix_correct: tuple[bool, ...]
    solved: bool


def response_steps(text: str) -> list[str]:
    """A sampled response cut into its steps (at `DELIMITER`, blank pieces dropped)."""
    return [t for t in text.split(DELIMITER) if t.strip()]


def check_steps(problem: Problem, steps: Sequence[str]) -> StepCheck:
    """Judge each step of a response (texts without the delimiter; surrounding
    whitespace ignored) against ``problem``; see `StepCheck`."""
    correct = []
    stated = problem.start  # the value the next step must continue from
    answered = False
    for i, raw in enumerate(steps):
        text = raw.strip()
        ok = False
        arithmetic, answer = _ARITHMETIC_STEP.match(text), _ANSWER_STEP.match(text)
        if answered:
            pass  # nothing may follow the answer
        elif arithmetic and i < len(problem.ops):
            a, op, b, c = int(arithmetic[1]), arithmetic[2], int(arithmetic[3]), int(arithmetic[4])
            ok = a == stated and (op, b) == problem.ops[i] and c == apply(a, op, b)
            stated = c
        elif answer:
            ok = i == len(problem.ops) and int(answer[1]) == stated
            answered = True
        correct.append(ok)
    prefix = [all(correct[: i + 1]) for i in range(len(correct))]
    solved = len(correct) == len(problem.ops) + 1 and all(correct)
    return StepCheck(tuple(correct), tuple(prefix), solved)


# ---------------------------------------------------------------------------
# files


def write_jsonl(problems: Sequence[Problem], path: str | Path) -> Path:
    """One JSON object per line (`Problem.to_json`); loads with `specs_llm.data.load_problems`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_json(), separators=(",", ":")) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[Problem]:
    """The problems of a file written by `write_jsonl`."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(Problem(row["id"], row["start"], tuple((o, x) for o, x in row["ops"]), row["problem"],
                               row.get("form", "compute")))
    return out
