"""Decode cost per token on vLLM CPU of randomly initialised testbed models, target/draft.

    python benchmarks/testbed_hard/cost.py --draft 2x128 --targets 8x256 12x128 12x192

Shapes are LAYERSxHIDDEN (heads = hidden / 64, one KV head, MLP 2 x hidden).
Each target is measured against the one draft with `quality.decode_cost`
(n = 4, 48 tokens, best of 5 alternating calls)."""

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

from specs_llm.backends.vllm_env import apply_vllm_env

apply_vllm_env()

from specs_llm.backends.base import State  # noqa: E402
from specs_llm.backends.vllm import VLLMLanguageModel
from specs_llm.testbed import quality
from specs_llm.testbed.tokenizer import load_tokenizer
from specs_llm.testbed.train import Shape, new_lm

OPTIONS = dict(dtype="float32", max_model_len=512, enforce_eager=True, max_num_batched_tokens=32768, block_size=32)


def shape(text: str) -> Shape:
    layers, hidden = (int(x) for x in text.split("x"))
    return Shape(hidden, layers, max(hidden // 64, 1), 1, 2 * hidden)


def save(s: Shape, tok, directory: Path) -> Path:
    from transformers import GenerationConfig

    new_lm(s, tok, 0).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(str(directory))
    return directory


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--draft", default="1x128")
    ap.add_argument("--targets", nargs="+", required=True)
    ap.add_argument("--tokenizer", default=str(Path(__file__).parents[2] / "specs_llm/testbed/weights/target"))
    args = ap.parse_args()
    tok = load_tokenizer(args.tokenizer)
    prompt = State("Compute 23 + 58 - 17 + 9 - 31 + 44.")
    with tempfile.TemporaryDirectory() as tmp:
        draft = VLLMLanguageModel(str(save(shape(args.draft), tok, Path(tmp) / "draft")), **OPTIONS)
        for t in args.targets:
            target = VLLMLanguageModel(str(save(shape(t), tok, Path(tmp) / t)), **OPTIONS)
            cost = quality.decode_cost(draft, target, prompt)
            s = cost["seconds_per_token"]
            print(json.dumps({"draft": args.draft, "target": t, "ms_draft": 1e3 * s["draft"],
                              "ms_target": 1e3 * s["target"], "ratio": cost["ratio"]}), flush=True)
            del target
            gc.collect()


if __name__ == "__main__":
    sys.exit(main())
