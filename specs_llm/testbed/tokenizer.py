r"""A byte-level BPE with merges, trained on the task text, as real LLM tokenizers are.

`train_tokenizer(texts, vocab_size)` learns merges with the `tokenizers`
library over Qwen2's own pre-tokenizer (the split rule of the paper's
models): every digit is a pre-token of its own, letters merge with one
leading space or punctuation mark (" answer", "\\boxed"), a run of
punctuation merges with the line breaks after it (".\n\n", "}.\n\n"), and
line breaks merge with each other ("\n\n"). All 256 bytes are in the base
vocabulary, so any text encodes and decodes losslessly.

The special tokens are Qwen2's ``<|endoftext|>`` (padding), ``<|im_start|>``
and ``<|im_end|>`` (end of a turn: the models' EOS), and the chat template is
ChatML, as in `specs_llm.testing`. Saved tokenizers load with
``AutoTokenizer.from_pretrained`` and with vLLM; because the pre-tokenizer is
Qwen2's exactly, transformers' Qwen2 tokenizer class (which rebuilds the
pipeline from vocab and merges) encodes the same way.

What this exposes to step-level search (and what the backends' tests pin):
a sampled step that ends ".\n\n" is generated as one token that straddles the
step and the delimiter, while the step text "…." re-encodes with a "." of its
own; and a prompt that ends in "\n\n" re-encodes as one "\n\n" token where
the model may have produced two "\n" tokens.
"""

from __future__ import annotations

import os
from typing import Iterable

from ..testing import EOS_TOKEN, PAD_TOKEN, chat_tokenizer

__all__ = ["QWEN2_PATTERN", "SPECIALS", "corpus", "train_tokenizer", "load_tokenizer"]

# Qwen2's pre-tokenizer split pattern (tokenizer.json of the Qwen2/Qwen2.5 models).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
SPECIALS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN)


def corpus(problems) -> list[str]:
    """The tokenizer's training texts: every question and worked solution, the
    chat template's role names, and the step delimiter "\n\n" on its own (so
    that it is one token wherever it follows a digit or a letter, as in real
    tokenizers, not only inside ".\n\n")."""
    return ["user", "assistant", "\n\n", "\n\n"] + [t for p in problems for t in (p.question, p.solution)]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, *, min_frequency: int = 2):
    """A `PreTrainedTokenizerFast` whose BPE merges are learned from ``texts``.

    ``vocab_size`` counts the specials and the 256 byte symbols; training is
    deterministic for the same texts in the same order.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIALS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIALS)} (bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return chat_tokenizer(tok, model_max_length=1024)


def load_tokenizer(directory: str | os.PathLike):
    """The tokenizer saved in ``directory``, as the backends load it (``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))
