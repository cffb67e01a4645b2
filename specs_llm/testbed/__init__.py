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
build of your own.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ROLES", "WEIGHTS", "models_dir", "model_path", "heldout_path"]

ROLES = ("draft", "target", "prm")
WEIGHTS = Path(__file__).resolve().parent / "weights"


def models_dir() -> Path:
    """``$SPECS_TESTBED_DIR`` if set, else the shipped weights."""
    env = os.environ.get("SPECS_TESTBED_DIR")
    return Path(env).expanduser() if env else WEIGHTS


def model_path(role: str) -> str:
    """The directory of the testbed's ``role`` model; FileNotFoundError names what is missing."""
    if role not in ROLES:
        raise ValueError(f"testbed models are {ROLES}, got {role!r}")
    path = models_dir() / role
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no testbed {role} model in {path} (run `specs testbed build --out "
                                f"{models_dir()}`, or unset SPECS_TESTBED_DIR for the shipped models)")
    return str(path)


def heldout_path() -> Path:
    """The held-out problems of the testbed models in use (``heldout.jsonl`` beside them)."""
    path = models_dir() / "heldout.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no testbed held-out split at {path} (a directory written by "
                                f"`specs testbed build` has one)")
    return path
