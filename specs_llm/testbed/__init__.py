"""A trained CPU testbed: a step-by-step arithmetic task and three small real models for it.

- `task`: the problem generator, the exact step checker, the JSONL splits.
- `tokenizer`: a byte-level BPE with merges trained on the task text.
- `train`: the training loops (causal LM; value-head PRM).
- `build`: `specs testbed build`, the whole pipeline, deterministic.
- `quality`: PRM step-level AUC and the decode cost ratio.

The built models ship with the package (``specs_llm/testbed/weights/``:
``draft``, ``target``, ``prm``; float16 safetensors) beside their held-out
split (``heldout.jsonl``, the dataset "testbed" of `specs_llm.data`) and
``build.json``. Recipes name the models
``testbed:draft``, ``testbed:target`` and ``testbed:prm``; `model_path`
resolves them, to ``$SPECS_TESTBED_DIR/<role>`` when that variable names a
build of your own. A second testbed, "testbed-hard" (`TESTBEDS`: the
dataset "testbed-hard", models ``testbed-hard:<role>``, built by ``specs
testbed build --name testbed-hard``), is the same machinery with a harder
task and a costlier target, for the paper's regime; its weights are not
shipped yet (``$SPECS_TESTBED_HARD_DIR`` names a build).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ROLES", "TESTBEDS", "WEIGHTS", "models_dir", "model_path", "heldout_path"]

ROLES = ("draft", "target", "prm")
WEIGHTS = Path(__file__).resolve().parent / "weights"
# name -> (shipped weights, the variable that names a build of your own instead)
TESTBEDS = {
    "testbed": (WEIGHTS, "SPECS_TESTBED_DIR"),
    # the paper's regime (issue 17): a harder task, an 8-layer target; not shipped yet, build it
    "testbed-hard": (Path(__file__).resolve().parent / "weights-hard", "SPECS_TESTBED_HARD_DIR"),
}


def _testbed(name: str) -> tuple[Path, str]:
    if name not in TESTBEDS:
        raise ValueError(f"testbeds are {sorted(TESTBEDS)}, got {name!r}")
    return TESTBEDS[name]


def models_dir(testbed: str = "testbed") -> Path:
    """The directory named by the testbed's variable (``$SPECS_TESTBED_DIR``
    for "testbed") if set, else its shipped weights."""
    shipped, var = _testbed(testbed)
    env = os.environ.get(var)
    return Path(env).expanduser() if env else shipped


def _missing(testbed: str, what: str, path: Path) -> FileNotFoundError:
    shipped, var = _testbed(testbed)
    tail = f", or unset {var} for the shipped models" if shipped.is_dir() else f"; {testbed} is not shipped"
    return FileNotFoundError(f"no {testbed} {what} in {path} (run `specs testbed build --name {testbed} --out "
                             f"DIR` and set {var}=DIR{tail})")


def model_path(role: str, testbed: str = "testbed") -> str:
    """The directory of the testbed's ``role`` model; FileNotFoundError names what is missing."""
    if role not in ROLES:
        raise ValueError(f"testbed models are {ROLES}, got {role!r}")
    path = models_dir(testbed) / role
    if not (path / "config.json").is_file():
        raise _missing(testbed, f"{role} model", path)
    return str(path)


def heldout_path(testbed: str = "testbed") -> Path:
    """The held-out problems of the testbed models in use (``heldout.jsonl`` beside them)."""
    path = models_dir(testbed) / "heldout.jsonl"
    if not path.is_file():
        raise _missing(testbed, "held-out split", path)
    return path
