"""Tiny random language models and PRMs for tests, built offline in seconds.

`build_tiny_models(directory)` writes three model directories that load with
HF transformers (`AutoModelForCausalLM`, `AutoModelForTokenClassification`,
`AutoTokenizer`) and with vLLM (``LLM(model=path)``; the PRM with
``runner="pooling"``):

- ``draft``: Qwen2, hidden 128, 2 layers, 2 heads (head_dim 64: vLLM's CPU
  attention supports only some head sizes).
- ``target``: Qwen2, hidden 256, 4 layers, 4 heads.
- ``prm``: a Qwen2 token classifier (hidden 128, 2 layers) in one of two
  conventions (``prm_kind``):
    * ``"value_head"`` (Skywork-o1-Open-PRM): 1 label; the reward of a step is
      ``sigmoid(head)`` at the last token of ``step + delimiter``;
    * ``"step_tag"`` (Qwen2.5-Math-PRM): 2 labels; each step is followed by the
      separator token ``STEP_TAG`` and the reward is ``softmax(head)[1]`` there.

All share one tokenizer: a byte-level BPE with no merges and an ASCII-only
vocabulary, 4 specials + 95 printable + "\\n" + "\\t" = 101 tokens, and a
ChatML chat template. Characters outside that vocabulary (non-ASCII, "\\r")
are dropped by the tokenizer. `build_tiny_model(directory, "draft_merges")`
adds a draft whose tokenizer has a few merges (among them "\\n\\n" as one
token), so tests can check that text-level scoring composes models with
different tokenizers.

Non-degenerate sampling. Random weights at the usual init give a near-uniform
next-token law, which never emits "\\n\\n" or EOS. Qwen2's ``lm_head`` has no
bias, so we build one: hidden dimension 0 of every token embedding is the
constant 1 and no layer writes to it (row 0 of every ``o_proj`` and
``down_proj`` is zero), so after the final RMSNorm it is about 1 at every
position, and
column 0 of ``lm_head`` holds the per-token bias. The other columns are random
with per-logit standard deviation about 1.5. The biases give, at temperature
1, mean next-token probabilities P("\\n") ~ 0.25, P(" ") ~ 0.1 and
P(EOS) ~ 0.012: the biases are calibrated at build time (`_calibrate_bias`) on
i.i.d. contexts with those frequencies; the other specials get bias -30
(never sampled). Measured with 256 samples of 32 tokens from the chat prompt
at temperature 1: draft 183 "\\n\\n"-ended / 41 EOS / 32 length-capped,
target 163 / 48 / 45; steps average ~15 characters
(tests/test_backends_hf.py::test_tiny_models_sample_varied_text).

Builds are idempotent: each model directory holds a marker file with a hash
of its spec; a directory whose marker matches is reused as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "SPECIALS",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "STEP_TAG",
    "CHAT_TEMPLATE",
    "chat_tokenizer",
    "TinySpec",
    "TINY_SPECS",
    "build_tiny_tokenizer",
    "build_tiny_model",
    "build_tiny_models",
]

# Bump when the builder changes what it writes: every cached build is redone.
_BUILDER_VERSION = 5
_MARKER = "specs_tiny_spec.json"

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
STEP_TAG = "<extra_0>"
SPECIALS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN, STEP_TAG)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Merges of the "draft_merges" tokenizer, in byte-level symbols
# ("\u010a" is "\n", "\u0120" is " ").
_EXTRA_MERGES = (("\u010a", "\u010a"), ("\u0120", "t"), ("t", "h"), ("e", "\u0120"), ("=", "\u0120"))

# Mean next-token probabilities the lm_head bias is calibrated to (module doc).
_LM_TARGET_PROBS = {"\n": 0.25, " ": 0.10, EOS_TOKEN: 0.012}
_SPECIAL_BIAS = -30.0  # the specials other than EOS


@dataclass(frozen=True)
class TinySpec:
    """What one tiny model directory holds."""

    kind: str  # "lm" | "value_head" | "step_tag"
    hidden_size: int
    num_layers: int
    num_heads: int
    seed: int
    merges: bool = False  # tokenizer with _EXTRA_MERGES
    logit_std: float = 1.5  # std of the random part of each logit (nats)
    layer_std: float = 0.04  # init std of attention/MLP weights
    max_position_embeddings: int = 1024

    def hash(self) -> str:
        blob = json.dumps({"spec": asdict(self), "builder": _BUILDER_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


TINY_SPECS: dict[str, TinySpec] = {
    "draft": TinySpec("lm", 128, 2, 2, seed=1),
    "target": TinySpec("lm", 256, 4, 4, seed=2),
    # PRMs: larger layer weights so the head sees the context, not just the
    # delimiter token its reward is read at.
    "prm_value_head": TinySpec("value_head", 128, 2, 2, seed=3, logit_std=2.0, layer_std=0.2),
    "prm_step_tag": TinySpec("step_tag", 128, 2, 2, seed=4, logit_std=2.0, layer_std=0.2),
    "draft_merges": TinySpec("lm", 128, 2, 2, seed=5, merges=True),
}


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> symbol table used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _make_tokenizer(merges: bool):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    symbol = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for b in [ord("\n"), ord("\t")] + list(range(32, 127)):
        vocab[symbol[b]] = len(vocab)
    merge_list = list(_EXTRA_MERGES) if merges else []
    for a, b in merge_list:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merge_list))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return chat_tokenizer(tok)


def chat_tokenizer(tok, **kwargs):
    """A `tokenizers.Tokenizer` as the transformers tokenizer every project model
    uses: EOS and pad tokens, `CHAT_TEMPLATE`, no clean-up of spaces."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                   chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False, **kwargs)


def build_tiny_tokenizer(directory: str | os.PathLike, *, merges: bool = False):
    """Save the shared tiny tokenizer to ``directory``; returns the tokenizer."""
    tok = _make_tokenizer(merges)
    tok.save_pretrained(str(directory))
    return tok


def _qwen2_config(spec: TinySpec, tok):
    from transformers import Qwen2Config

    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    extra = {}
    if spec.kind == "value_head":
        extra = dict(num_labels=1, architectures=["Qwen2ForTokenClassification"], classifier_dropout=0.0)
    elif spec.kind == "step_tag":
        extra = dict(num_labels=2, architectures=["Qwen2ForTokenClassification"], classifier_dropout=0.0)
    else:
        extra = dict(architectures=["Qwen2ForCausalLM"])
    return Qwen2Config(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        intermediate_size=2 * spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
        use_sliding_window=False,
        dtype="float32",
        **extra,
    )


def _init_weights(model, spec: TinySpec, tok) -> None:
    """Random weights from ``spec.seed`` with the lm_head bias trick (module doc)."""
    import torch

    g = torch.Generator().manual_seed(spec.seed)
    hidden = spec.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * spec.layer_std)
        emb = model.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=g))
        emb[:, 0] = 1.0
        for layer in model.model.layers:  # layers never write to dimension 0
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        if spec.kind == "lm":
            head = model.get_output_embeddings().weight  # (vocab, hidden)
            head.copy_(torch.randn(head.shape, generator=g) * spec.logit_std / (hidden - 1) ** 0.5)
            head[:, 0] = 0.0
            for s in SPECIALS:
                head[tok.convert_tokens_to_ids(s), 0] = _SPECIAL_BIAS
            _calibrate_bias(model, tok, g)
        else:
            score = model.score.weight  # (num_labels, hidden)
            score.copy_(torch.randn(score.shape, generator=g) * spec.logit_std / hidden**0.5)


def _calibrate_bias(model, tok, g) -> None:
    """Set the lm_head biases of "\\n", " " and EOS so that their mean next-token
    probability is about `_LM_TARGET_PROBS`, over contexts drawn i.i.d. with
    those character frequencies (a stand-in for the model's own samples; no
    EOS): fixed-point steps ``b += log(target / measured)``, deterministic
    given ``g``."""
    import torch

    head = model.get_output_embeddings().weight
    vocab = len(tok)
    weights = torch.zeros(vocab)
    weights[len(SPECIALS):] = 1.0  # the ordinary characters follow the specials
    targets = {}
    for text, p in _LM_TARGET_PROBS.items():
        (i,) = tok.encode(text, add_special_tokens=False)
        targets[i] = p
        if text != EOS_TOKEN:
            weights[i] = 0.0
    weights *= (1.0 - sum(p for i, p in targets.items() if weights[i] == 0 and i >= len(SPECIALS))) / weights.sum()
    for i, p in targets.items():
        if i >= len(SPECIALS):
            weights[i] = p
    contexts = torch.multinomial(weights, 32 * 32, replacement=True, generator=g).view(32, 32)
    for _ in range(6):
        with torch.no_grad():
            mean = model(contexts).logits.softmax(-1).mean((0, 1))
        for i, p in targets.items():
            head[i, 0] += float(torch.log(torch.tensor(p) / mean[i]))


def build_tiny_model(directory: str | os.PathLike, name: str, *, seed: int = 0) -> str:
    """Build the model ``name`` of `TINY_SPECS` in ``directory/name``; returns that path.

    ``seed`` shifts every spec's seed (``spec.seed + 1000 * seed``), for a
    second independent family of models. Idempotent: reuses a directory
    whose marker matches the spec.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, GenerationConfig

    if name not in TINY_SPECS:
        raise KeyError(f"unknown tiny model {name!r}; known: {sorted(TINY_SPECS)}")
    base = TINY_SPECS[name]
    spec = TinySpec(**{**asdict(base), "seed": base.seed + 1000 * seed})
    out = Path(directory) / name
    marker = out / _MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("hash") == spec.hash():
        return str(out)

    Path(directory).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=directory))
    try:
        tok = _make_tokenizer(spec.merges)
        config = _qwen2_config(spec, tok)
        auto = AutoModelForCausalLM if spec.kind == "lm" else AutoModelForTokenClassification
        torch_state = torch.random.get_rng_state()
        model = auto.from_config(config)
        torch.random.set_rng_state(torch_state)  # leave the caller's global RNG alone
        _init_weights(model, spec, tok)
        model.eval()
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if spec.kind == "lm":
            GenerationConfig(
                eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=True
            ).save_pretrained(str(tmp))
        (tmp / _MARKER).write_text(json.dumps({"hash": spec.hash(), "spec": asdict(spec)}, indent=1))
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:
            # another process finished the same build first: keep its copy
            if not (marker.is_file() and json.loads(marker.read_text()).get("hash") == spec.hash()):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return str(out)


def build_tiny_models(
    directory: str | os.PathLike, *, prm_kind: str = "value_head", seed: int = 0
) -> dict[str, str]:
    """Build (or reuse) the draft, target and PRM under ``directory``.

    Returns ``{"draft": path, "target": path, "prm": path}``; ``prm_kind`` is
    ``"value_head"`` or ``"step_tag"`` (both may live in one directory).
    """
    if prm_kind not in ("value_head", "step_tag"):
        raise ValueError(f"prm_kind must be 'value_head' or 'step_tag', got {prm_kind!r}")
    return {
        "draft": build_tiny_model(directory, "draft", seed=seed),
        "target": build_tiny_model(directory, "target", seed=seed),
        "prm": build_tiny_model(directory, f"prm_{prm_kind}", seed=seed),
    }
