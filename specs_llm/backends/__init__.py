"""Backends behind the Protocols of `base`: hf, vllm, openai_server, mdp.

`load_model` builds one model of a search from a directory (hf, vllm) or a
server URL (openai_server) by backend name; `load_models` builds all three.
Each backend module is imported only when asked for, so the core never
imports torch or vllm.
"""

from __future__ import annotations

import importlib

from .base import BackendError, LanguageModel, RewardModel, State, Step

__all__ = ["BACKENDS", "BackendError", "LanguageModel", "RewardModel", "State", "Step", "load_model", "load_models"]

# backend -> (module, language-model class, reward-model class)
_CLASSES = {
    "hf": ("specs_llm.backends.hf", "HFLanguageModel", "HFRewardModel"),
    "vllm": ("specs_llm.backends.vllm", "VLLMLanguageModel", "VLLMRewardModel"),
    "openai_server": ("specs_llm.backends.openai_server", "OpenAIServerLanguageModel", "OpenAIServerRewardModel"),
}
BACKENDS = tuple(_CLASSES)


def load_model(backend: str, role: str, location: str, **options):
    """The ``role`` model ("draft", "target" or "prm") of ``backend`` at
    ``location`` (a model directory, or a server URL for openai_server).

    ``options`` go to the constructor (e.g. ``dtype``, ``max_model_len`` for
    vllm, ``max_length`` for hf, ``timeout`` or ``tokenizer_path`` for
    servers, ``convention`` for a PRM). ImportError names the missing backend.
    """
    if backend not in _CLASSES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if role not in ("draft", "target", "prm"):
        raise ValueError(f"role must be 'draft', 'target' or 'prm', got {role!r}")
    module_name, lm, prm = _CLASSES[backend]
    try:
        cls = getattr(importlib.import_module(module_name), prm if role == "prm" else lm)
    except ImportError as err:
        raise ImportError(f"backend {backend!r} is not available ({module_name}): {err}") from err
    if backend == "openai_server":
        options.setdefault("role", role)  # errors then say "draft server http://..."
    return cls(location, **options)


def load_models(backend: str, *, target, prm, draft=None, prm_convention: str = "value_head",
                step_delimiter: str = "\n\n", options: dict | None = None):
    """`search.Models` for ``backend``: ``options`` go to every constructor."""
    from ..search import Models

    common = dict(options or {}, step_delimiter=step_delimiter)
    return Models(
        draft=load_model(backend, "draft", draft, **common) if draft is not None else None,
        target=load_model(backend, "target", target, **common),
        prm=load_model(backend, "prm", prm, convention=prm_convention, **common),
    )
