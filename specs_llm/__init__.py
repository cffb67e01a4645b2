"""SPECS and its baselines on language models (vLLM, HF transformers, MDP backends)."""

from specs_theory import __version__

__all__ = ["__version__"]
