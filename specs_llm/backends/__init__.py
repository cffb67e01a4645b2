"""Backends behind the Protocols of `base`: hf, vllm, openai_server, mdp.

`load_models` builds the three models of a search from paths (or URLs) by
backend name; each backend module is imported only when asked for, so the
core never imports torch or vllm.
"""

from __future__ import annotations

from .base import BackendError, LanguageModel, RewardModel, State, Step

__all__ = ["BACKENDS", "BackendError", "LanguageModel", "RewardModel", "State", "Step", "load_models"]

BACKENDS = ("hf", "vllm", "openai_server")


def load_models(backend: str, *, target, prm, draft=None, prm_convention: str = "value_head",
                step_delimiter: str = "\n\n", tokenizer=None, options: dict | None = None):
    """`search.Models` for ``backend`` from model directories (hf, vllm) or
    server URLs (openai_server; ``tokenizer`` is then the local tokenizer
    directory, default: none needed if the server's model is a local path).

    ``options`` are passed to every model constructor (e.g. ``dtype``,
    ``max_model_len`` for vllm, ``timeout`` for servers).
    """
    from ..search import Models

    options = dict(options or {})
    if backend == "hf":
        from .hf import HFLanguageModel as LM, HFRewardModel as PRM
    elif backend == "vllm":
        from .vllm import VLLMLanguageModel as LM, VLLMRewardModel as PRM
    elif backend == "openai_server":
        from .openai_server import OpenAIServerLanguageModel as LM, OpenAIServerRewardModel as PRM

        if tokenizer is not None:
            options.setdefault("tokenizer_path", tokenizer)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    lm = dict(options, step_delimiter=step_delimiter)
    return Models(
        draft=LM(draft, **lm) if draft is not None else None,
        target=LM(target, **lm),
        prm=PRM(prm, convention=prm_convention, **lm),
    )
