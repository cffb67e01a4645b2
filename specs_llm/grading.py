r"""Grading final answers: extract the answer, compare it with math-verify under a hard timeout.

Two steps, each a public function:

- `extract_answer(text)` finds the final answer in a model response (the
  last ``\boxed{...}``, else an answer phrase; see its docstring).
- `is_equivalent(predicted, gold)` / `Grader.grade` decide whether two answers
  are mathematically the same, with math-verify (``math_verify.parse`` on both,
  then ``math_verify.verify(gold, predicted)``; gold first, the function is
  not symmetric).

Every math-verify comparison runs in a long-lived worker *process* (a fresh
Python interpreter, so nothing of the caller is inherited) reused across calls. math-verify's own timeout uses ``SIGALRM`` and
has hung on some inputs; here it is switched off (``parsing_timeout=None``,
``timeout_seconds=None``) and the parent enforces a hard wall-clock limit
instead: a comparison that has not answered after ``timeout`` seconds gets its
worker killed and replaced, and is graded wrong with status ``"timeout"``; a
worker that dies mid-comparison is graded wrong with status ``"error"``. Both
are counted in `Grader.counts`, never hidden.

Before math-verify sees them, answers are normalised by `normalize_math`
(unescaped ``$`` removed, whitespace runs collapsed) and wrapped in ``$...$``,
the delimiters math-verify's LaTeX extraction looks for. Two answers that are
identical after normalisation are equal without calling the worker.

Known disagreements of math-verify 0.9 with a human grader (each pinned by a
test in ``tests/test_grading.py``, ``MATH_VERIFY_DISAGREES``, so a new
math-verify version that changes them is noticed):

- decimal percentages: ``62.5`` vs gold ``62.5\%`` is wrong, while ``8`` vs
  ``8\%`` is right;
- a relation vs an interval is compared only when the *prediction* is the
  interval: ``[2,5]`` vs gold ``2 \le x \le 5`` is right, ``2 \le x \le 5``
  vs gold ``[2,5]`` (or ``x \le 3`` vs ``(-\infty, 3]``) is wrong;
- a column vector ``\begin{pmatrix} 1 \\ 2 \end{pmatrix}`` vs the point
  ``(1,2)`` is wrong; ``e^{i\pi}`` vs ``-1`` is wrong;
- lenient: the set ``\{1,2\}`` is accepted for the ordered pair ``(1,2)``;
  unevaluated sums, integrals and limits are evaluated and accepted
  (``\sum_{k=1}^{10} k`` for ``55``); units and ``\text{}`` words are
  dropped (``5\text{ inches}`` for ``5``); a base subscript is dropped
  (``2516`` for ``2516_8``);
- gold answers math-verify cannot parse match only themselves (string
  comparison): OlympiadBench 1782 ``m_{\max }=n^{2}-n-1`` and 2045
  ``t(0,4]`` (a typo in the source data).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Callable, Literal

__all__ = [
    "STATUSES",
    "Grade",
    "Grader",
    "default_grader",
    "extract_answer",
    "is_equivalent",
    "normalize_math",
]

STATUSES: tuple[str, ...] = ("ok", "no_answer", "timeout", "error")
Status = Literal["ok", "no_answer", "timeout", "error"]

# A comparison function run inside the worker: (predicted, gold) -> (correct,
# detail), both arguments already normalised; raising means status "error".
Compare = Callable[[str, str], "tuple[bool, str]"]


# ---------------------------------------------------------------------------
# Answer extraction
# ---------------------------------------------------------------------------

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_PHRASE = re.compile(
    r"(?i)\b(?:final answer|the answer)\*{0,2}\s*(?:is\b\s*:?|:)\*{0,2}\s*"
)
_SENTENCE_END = re.compile(r"\.(?=\s|$)")


def extract_answer(text: str) -> str | None:
    """Return the final answer written in a model response, or None.

    Rules, in order:

    1. **Box.** If ``text`` contains ``\\boxed{`` or ``\\fbox{`` (whitespace
       allowed before the brace), the answer is the content of the one that
       *starts last*, up to its matching closing brace. Braces nest; an
       escaped brace (``\\{``, ``\\}``) does not count, while ``\\\\{`` (a
       line break, then a brace) does. The content is stripped of
       surrounding whitespace. If that last box is never closed (a truncated
       response) or is empty, the result is None: an earlier box is *not*
       used instead, and rule 2 is not tried.
    2. **Answer phrase** (only when there is no box at all). The last
       occurrence, case-insensitive, of ``final answer`` or ``the answer``
       followed by ``is``, ``:`` or ``is:`` (Markdown ``**`` allowed around
       them). The answer is what follows: the inside of a ``$$...$$``,
       ``$...$``, ``\\(...\\)`` or ``\\[...\\]`` if one starts right there
       (None if it is not closed); otherwise the rest of that line, cut at the
       first full stop followed by whitespace or the end, with ``*`` and
       whitespace stripped from both ends. Empty -> None.
    3. Otherwise None.

    No other fallback is applied (no "last number in the text").
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a string, got {type(text).__name__}")
    boxes = list(_BOX_OPEN.finditer(text))
    if boxes:
        content = _braced_content(text, boxes[-1].end())
        if content is None:
            return None
        return content.strip() or None
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if not phrases:
        return None
    return _answer_after_phrase(text[phrases[-1].end():])


def _braced_content(text: str, start: int) -> str | None:
    """Content from ``start`` (just after an opening brace) to its matching brace."""
    depth = 1
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def _answer_after_phrase(rest: str) -> str | None:
    for opening, closing in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(opening):
            end = _find_unescaped(rest, closing, len(opening))
            if end is None:
                return None
            return rest[len(opening):end].strip() or None
    line = rest.split("\n", 1)[0]
    stop = _SENTENCE_END.search(line)
    if stop is not None:
        line = line[: stop.start()]
    return line.strip().strip("*").strip() or None


def _find_unescaped(text: str, needle: str, start: int) -> int | None:
    i = start
    while i < len(text):
        if text[i] == "\\" and not needle.startswith("\\"):
            i += 2
            continue
        if text.startswith(needle, i):
            return i
        i += 1
    return None


# ---------------------------------------------------------------------------
# Normalisation shared by the fast path and the worker input
# ---------------------------------------------------------------------------

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_WHITESPACE = re.compile(r"\s+")


def normalize_math(answer: str) -> str:
    """Answer as compared: unescaped ``$`` removed, whitespace runs -> one space, stripped.

    Only this, so that two answers equal after it are equal as LaTeX (math
    mode ignores spacing; ``\\text{...}`` keeps single spaces).
    """
    return _WHITESPACE.sub(" ", _UNESCAPED_DOLLAR.sub("", answer)).strip()


# ---------------------------------------------------------------------------
# Grades and the grader
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Grade:
    """The verdict on one answer.

    Attributes:
        correct: True only when ``status == "ok"`` and the answers are equal.
        status: ``"ok"`` (compared), ``"no_answer"`` (nothing extracted),
            ``"timeout"`` (the comparison exceeded the limit; worker killed) or
            ``"error"`` (the comparison raised, math-verify swallowed an
            exception on a mismatch, or the worker died). Anything but
            ``"ok"`` is graded wrong.
        predicted: the answer compared (as extracted), None for no_answer.
        detail: a short human-readable reason.
    """

    correct: bool
    status: Status
    predicted: str | None
    detail: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.correct and self.status != "ok":
            raise ValueError(f"a {self.status!r} grade cannot be correct")


class Grader:
    """Grades answers against gold answers with math-verify in a worker process.

    Use as a context manager (or call `close`) so the worker is stopped::

        with Grader(timeout=5.0) as grader:
            g = grader.grade(response_text, problem.answer)
            g.correct, g.status, grader.counts

    One worker process is started on the first comparison that needs it and
    reused; after a timeout or a crash it is killed and a new one is started
    on the next comparison (``restarts`` counts replacements). Thread-safe:
    calls are serialised by a lock.

    Args:
        timeout: default hard limit in seconds for one comparison.
        start_timeout: limit in seconds for a new worker to import math-verify
            and report ready; exceeding it raises ``RuntimeError`` (the
            environment is broken; no grade is recorded).
        _compare: test hook only: a module-level function ``(predicted,
            gold) -> (correct, detail)`` that the worker imports (by module
            and name, with the parent's ``sys.path``) and runs instead of
            math-verify.
    """

    def __init__(
        self, *, timeout: float = 5.0, start_timeout: float = 120.0, _compare: Compare | None = None
    ) -> None:
        _check_positive("timeout", timeout)
        _check_positive("start_timeout", start_timeout)
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout)
        self._compare_ref = None if _compare is None else _reference(_compare)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(STATUSES, 0)
        self._worker: _Worker | None = None
        self._closed = False
        self.restarts = 0

    # -- public ------------------------------------------------------------

    @property
    def counts(self) -> dict[str, int]:
        """Number of grades per status so far (a copy; every status present)."""
        with self._lock:
            return dict(self._counts)

    def grade(
        self, prediction: str, gold: str, *, extract: bool = True, timeout: float | None = None
    ) -> Grade:
        """Grade ``prediction`` against the gold answer ``gold``.

        Args:
            prediction: a model response when ``extract`` is True (the answer
                is taken with `extract_answer`; none found -> status
                ``"no_answer"``), or the answer itself when ``extract`` is False.
            gold: the gold answer (LaTeX, with or without ``$`` delimiters).
            extract: see ``prediction``.
            timeout: hard limit in seconds for this comparison (default: the
                grader's ``timeout``).

        Raises:
            TypeError: a non-string prediction or gold.
            ValueError: an empty gold answer, a non-positive timeout.
            RuntimeError: the grader is closed, or a worker cannot start.
        """
        if not isinstance(prediction, str) or not isinstance(gold, str):
            raise TypeError(
                "prediction and gold must be strings, got "
                f"{type(prediction).__name__} and {type(gold).__name__}"
            )
        if self._closed:
            raise RuntimeError("this Grader is closed")
        limit = self.timeout if timeout is None else timeout
        _check_positive("timeout", limit)
        gold_math = normalize_math(gold)
        if not gold_math:
            raise ValueError(f"gold answer {gold!r} is empty")
        predicted = extract_answer(prediction) if extract else prediction
        if predicted is None:
            return self._record(
                Grade(False, "no_answer", None, "no \\boxed{...} or answer phrase found")
            )
        predicted_math = normalize_math(predicted)
        if not predicted_math:
            return self._record(Grade(False, "no_answer", None, "the answer is empty"))
        if predicted_math == gold_math:
            return self._record(Grade(True, "ok", predicted, "identical after normalisation"))
        with self._lock:
            status, correct, detail = self._compare_in_worker(predicted_math, gold_math, limit)
            grade = Grade(correct, status, predicted, detail)
            self._counts[grade.status] += 1
        return grade

    def close(self) -> None:
        """Stop the worker. Idempotent; a closed grader cannot grade."""
        with self._lock:
            self._closed = True
            if self._worker is not None:
                self._worker.stop(graceful=True)
                self._worker = None

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- private -----------------------------------------------------------

    def _record(self, grade: Grade) -> Grade:
        with self._lock:
            self._counts[grade.status] += 1
        return grade

    def _compare_in_worker(self, predicted: str, gold: str, limit: float) -> tuple[Status, bool, str]:
        # Called with self._lock held.
        if self._closed:
            raise RuntimeError("this Grader is closed")
        if self._worker is None:
            self._worker = _Worker(self._compare_ref, self.start_timeout)
        worker = self._worker
        if not worker.send((predicted, gold)):
            # Died while idle (killed from outside): replace it and send again.
            self._replace_worker(kill=True)
            worker = self._worker = _Worker(self._compare_ref, self.start_timeout)
            if not worker.send((predicted, gold)):
                raise RuntimeError("a fresh grading worker died before receiving its first task")
        if not worker.receiver.poll(limit):
            self._replace_worker(kill=True)
            return "timeout", False, f"no verdict within {limit:g} s; worker killed and replaced"
        try:
            kind, correct, detail = worker.receiver.recv()
        except (EOFError, OSError):
            exitcode = worker.exitcode()
            self._replace_worker(kill=True)
            return "error", False, f"grading worker died during the comparison (exit code {exitcode})"
        return kind, correct, detail

    def _replace_worker(self, *, kill: bool) -> None:
        if self._worker is not None:
            self._worker.stop(graceful=not kill)
            self._worker = None
            self.restarts += 1


def _check_positive(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value < float("inf")
    ):
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")


class _Worker:
    """One worker process (a fresh ``python -c``) and the parent's ends of its two pipes.

    The worker is a plain subprocess rather than a ``multiprocessing`` spawn
    child so that the caller's ``__main__`` is never re-imported in it (no
    ``if __name__ == "__main__"`` requirement, no re-import of a script's
    torch or vLLM imports for every restart). It loads this file by path
    (this module imports only the standard library), not the ``specs_llm``
    package, whose import pulls in JAX: a (re)start then costs about the
    math-verify import alone. Messages are pickled over
    `multiprocessing.connection.Connection` objects on two ``os.pipe``s.

    An idle worker exits when the parent goes away (its pipe closes); one
    busy in a hung comparison when the parent is killed with SIGKILL keeps
    running until that computation ends.
    """

    def __init__(self, compare_ref: tuple[str, str] | None, start_timeout: float) -> None:
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        code = _WORKER_BOOT.format(
            path=os.path.abspath(__file__), read=to_child_read, write=from_child_write
        )
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(to_child_read, from_child_write),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            for fd in (to_child_read, to_child_write, from_child_read, from_child_write):
                os.close(fd)
            raise
        os.close(to_child_read)
        os.close(from_child_write)
        self.sender = Connection(to_child_write, readable=False)
        self.receiver = Connection(from_child_read, writable=False)
        self._finalizer = weakref.finalize(
            self, _stop_process, self.process, self.sender, self.receiver, False
        )
        if not self.send((list(sys.path), compare_ref)):
            self.stop(graceful=False)
            raise RuntimeError("the grading worker exited before receiving its setup")
        if not self.receiver.poll(start_timeout):
            self.stop(graceful=False)
            raise RuntimeError(f"the grading worker did not start within {start_timeout:g} s")
        try:
            message = self.receiver.recv()
        except (EOFError, OSError):
            code_ = self.exitcode()
            self.stop(graceful=False)
            raise RuntimeError(
                f"the grading worker exited while starting (exit code {code_})"
            ) from None
        if message[0] != "ready":
            self.stop(graceful=False)
            raise RuntimeError(f"the grading worker could not start: {message[1]}")

    def send(self, message: object) -> bool:
        try:
            self.sender.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            return False
        return True

    def exitcode(self) -> int | None:
        try:
            return self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, *, graceful: bool) -> None:
        self._finalizer.detach()
        _stop_process(self.process, self.sender, self.receiver, graceful)


# Run by the worker interpreter: load this file as a standalone module.
_WORKER_BOOT = (
    "import importlib.util, sys; "
    "spec = importlib.util.spec_from_file_location('_specs_grading_worker', {path!r}); "
    "module = importlib.util.module_from_spec(spec); "
    "sys.modules[spec.name] = module; "
    "spec.loader.exec_module(module); "
    "module._worker_main({read}, {write})"
)


def _stop_process(
    process: subprocess.Popen, sender: Connection, receiver: Connection, graceful: bool
) -> None:
    """Stop a worker: ask it to exit (if graceful) and wait 2 s, else kill it."""
    if graceful and process.poll() is None:
        try:
            sender.send(None)
            process.wait(timeout=2.0)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError, subprocess.TimeoutExpired):
            pass
    if process.poll() is None:
        process.kill()
    process.wait()
    sender.close()
    receiver.close()


# ---------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------


def _worker_main(read_fd: int, write_fd: int) -> None:
    """Worker loop (in the subprocess).

    First message: ``(sys_path, compare_ref)``; the worker adopts the parent's
    ``sys.path``, imports math-verify and the comparison function, and replies
    ``("ready", pid)`` or ``("fatal", reason)``. Then each ``(predicted,
    gold)`` gets ``(status, correct, detail)``; ``None`` or a closed pipe stops.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    receiver = Connection(read_fd, writable=False)
    sender = Connection(write_fd, readable=False)
    try:
        sys_path, compare_ref = receiver.recv()
        sys.path[:] = sys_path
        _prepare_math_verify()
        compare = _math_verify_compare if compare_ref is None else _resolve(compare_ref)
    except BaseException as err:  # report any setup failure to the parent
        sender.send(("fatal", f"{type(err).__name__}: {err}"))
        return
    sender.send(("ready", os.getpid()))
    while True:
        try:
            task = receiver.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if task is None:
            return
        predicted, gold = task
        try:
            correct, detail = compare(predicted, gold)
            reply = ("ok", bool(correct), str(detail))
        except Exception as err:
            reply = ("error", False, f"{type(err).__name__}: {err}")
        sender.send(reply)


def _reference(function: Compare) -> tuple[str, str]:
    """(module, qualname) of a module-level function, for the worker to import."""
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", "")
    if not module or not qualname or "<" in qualname:
        raise ValueError(f"_compare must be a module-level function, got {function!r}")
    return module, qualname


def _resolve(reference: tuple[str, str]) -> Compare:
    module, qualname = reference
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


class _LogCollector(logging.Handler):
    """Collects what math-verify logs about exceptions it swallows."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Timeout is disabled"):
            return  # we disable it on purpose and enforce the limit ourselves
        if record.exc_info and record.exc_info[1] is not None:
            err = record.exc_info[1]
            self.messages.append(f"{message}: {type(err).__name__}: {err}")
        elif record.levelno >= logging.WARNING:
            self.messages.append(message)


_COLLECTOR: _LogCollector | None = None


def _prepare_math_verify() -> _LogCollector:
    """Import math-verify and route its log records to this module's collector (once)."""
    global _COLLECTOR
    import math_verify  # noqa: F401  (import cost paid once per worker)

    if _COLLECTOR is None:
        _COLLECTOR = _LogCollector()
        logger = logging.getLogger("math_verify")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(_COLLECTOR)
        logger.propagate = False
    return _COLLECTOR


def _math_verify_compare(predicted: str, gold: str) -> tuple[bool, str]:
    """Compare two normalised answers with math-verify (runs in the worker).

    Both are wrapped in ``$...$`` and parsed with the default extraction
    (LaTeX, then plain expressions; a string fallback when nothing parses);
    then ``verify(gold, predicted)``. A gold answer math-verify extracts
    nothing from raises; exceptions math-verify swallows and logs are
    reported by raising when the verdict is False (status "error").
    """
    from math_verify import parse, verify

    collector = _prepare_math_verify()
    collector.messages.clear()
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    if not gold_parsed:
        raise ValueError(f"math-verify extracted nothing from the gold answer {gold!r}")
    predicted_parsed = parse(f"${predicted}$", parsing_timeout=None)
    if not predicted_parsed:
        return False, "math-verify extracted nothing from the prediction"
    correct = verify(gold_parsed, predicted_parsed, timeout_seconds=None)
    swallowed = list(collector.messages)
    if not correct and swallowed:
        raise RuntimeError("math-verify swallowed: " + " | ".join(swallowed[:3]))
    if correct:
        return True, "math-verify: equivalent"
    return False, f"math-verify: not equivalent ({_shown(gold_parsed)} vs {_shown(predicted_parsed)})"


def _shown(parsed: list) -> str:
    # parse() returns [sympy object, extracted string] or [string]: show the
    # string; never str() a sympy object (that can itself take very long).
    return repr(parsed[-1]) if isinstance(parsed[-1], str) else type(parsed[0]).__name__


# ---------------------------------------------------------------------------
# Module-level default grader
# ---------------------------------------------------------------------------

_DEFAULT: Grader | None = None
_DEFAULT_LOCK = threading.Lock()


def default_grader() -> Grader:
    """The module's shared `Grader` (created on first use, closed at exit)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Grader()
            atexit.register(_DEFAULT.close)
        return _DEFAULT


def is_equivalent(predicted: str, gold: str, *, timeout: float = 5.0) -> bool:
    """True when the answer ``predicted`` equals the gold answer ``gold``.

    Both are answers, not responses (no extraction). Uses `default_grader`,
    whose ``counts`` record timeouts and errors; those return False.
    """
    return default_grader().grade(predicted, gold, extract=False, timeout=timeout).correct
