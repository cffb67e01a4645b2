"""Rewrite a value-head PRM checkpoint as a standard 1-label token classifier.

Skywork-o1-Open-PRM (the paper's PRM) is a Qwen2 causal LM plus a value head
``v_head.summary`` (``Linear(hidden, 1)`` with bias) read at every token; its
reward is ``sigmoid(v_head(h))`` with ``h`` the last hidden state. Its
``config.json`` names the architecture ``Qwen2ForPrmModel``, which neither
transformers nor vLLM knows (Skywork's vLLM plugin targets vLLM 0.6). The
same network is a ``Qwen2ForTokenClassification`` with ``num_labels = 1``
whose ``score`` layer holds the value head's weight and bias, and that loads
everywhere without custom code: HF ``AutoModelForTokenClassification`` (the
`HFRewardModel` "value_head" convention) and ``vllm serve DIR --runner
pooling`` (``/pooling`` with ``task="token_classify"``, the
`OpenAIServerRewardModel`), outputs ``h @ w + b`` per token.

The rewrite is done shard by shard on the safetensors files (one shard in
memory at a time): ``v_head.summary.{weight,bias}`` -> ``score.{weight,bias}``,
the language-model head (``lm_head.*``) dropped, the index and config
updated; tokenizer and other files are copied unchanged.

Command line: ``python -m specs_llm.convert SRC DST``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

__all__ = ["value_head_to_token_classification"]

_RENAME = {"v_head.summary.weight": "score.weight", "v_head.summary.bias": "score.bias"}
_DROP_PREFIXES = ("lm_head.",)
_NOT_COPIED = ("config.json", "model.safetensors.index.json")


def _new_name(key: str) -> str | None:
    if key in _RENAME:
        return _RENAME[key]
    if key.startswith(_DROP_PREFIXES):
        return None
    if key.startswith("v_head."):  # any other value-head tensor has no place in the classifier
        raise ValueError(f"unexpected value-head tensor {key!r} (expected only {sorted(_RENAME)})")
    return key


def value_head_to_token_classification(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Write ``src`` (Qwen2 + ``v_head.summary``) to ``dst`` as a 1-label
    ``Qwen2ForTokenClassification``; returns ``dst``.

    Raises ValueError when ``src`` has no safetensors weights or no value
    head, or when ``dst`` exists and is not empty.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"{src}: no *.safetensors weights (convert .bin checkpoints to safetensors first)")
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"{dst} exists and is not empty")
    config = json.loads((src / "config.json").read_text())
    if config.get("model_type") != "qwen2":
        raise ValueError(f"{src}: model_type {config.get('model_type')!r}, expected 'qwen2'")

    dst.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    found = set()
    for shard in shards:
        tensors = {}
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                new = _new_name(key)
                if new is None:
                    continue
                if key in _RENAME:
                    found.add(key)
                tensors[new] = f.get_tensor(key)
        if key_clash := [k for k in tensors if k in weight_map]:
            raise ValueError(f"{src}: tensors {key_clash[:3]} appear in several shards")
        if tensors:
            save_file(tensors, str(dst / shard.name), metadata={"format": "pt"})
            weight_map.update({k: shard.name for k in tensors})
    if found != set(_RENAME):
        shutil.rmtree(dst)
        raise ValueError(f"{src}: no value head (missing {sorted(set(_RENAME) - found)})")

    if len({v for v in weight_map.values()}) > 1 or (src / "model.safetensors.index.json").exists():
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.pop("auto_map", None)  # no custom code needed any more
    config.update(
        architectures=["Qwen2ForTokenClassification"],
        num_labels=1,
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
        classifier_dropout=0.0,
    )
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for path in src.iterdir():
        if path.is_file() and path.suffix not in (".safetensors", ".py", ".bin") and path.name not in _NOT_COPIED:
            shutil.copy2(path, dst / path.name)
    return str(dst)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] in ("-h", "--help"):
        print("usage: python -m specs_llm.convert SRC DST\n\n" + __doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(value_head_to_token_classification(args[0], args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
