"""Train one testbed LM on a task and measure its sampled held-out accuracy as it trains.

    python benchmarks/testbed_hard/exp_target.py --shape 8x256 --ops 3 6 --digits 2 \
        --steps 800 --every 100 --out /tmp/hard/e1

Prints one JSON line per check: step, seconds, loss, sampled accuracy at
temperature 0.7 on 128 held-out problems, and the first wrong step's kind
(copy: wrong operation or operand; arithmetic: wrong result; other).
Saves the model (float32) and tokenizer in --out at the end."""

import argparse
import itertools
import json
import re
import time
from pathlib import Path

import torch

from specs_llm.backends.base import State
from specs_llm.backends.common import chat_prompt
from specs_llm.testbed.task import Difficulty, check_steps, make_split, response_steps, training_problems
from specs_llm.testbed.tokenizer import corpus, train_tokenizer
from specs_llm.testbed.train import Schedule, Shape, lm_example, new_lm, train_lm

STEP = re.compile(r"^(-?\d+) ([+\-*]) (-?\d+) = (-?\d+)\.$")


def shape(text: str) -> Shape:
    layers, hidden = (int(x) for x in text.split("x"))
    return Shape(hidden, layers, max(hidden // 64, 1), 1, 2 * hidden)


def grown(directory, s: Shape, tok):
    """The LM in ``directory`` grown to ``s.layers`` (`train.grow_lm`)."""
    from transformers import AutoModelForCausalLM

    from specs_llm.testbed.train import grow_lm

    return grow_lm(AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32), s.layers, tok, 1)


@torch.no_grad()
def sample(model, tok, problems, *, seed, max_new_tokens, n=1, temperature=0.7, chunk=256):
    """``n`` sampled solutions per problem, as ``(problem, steps)`` pairs in problem order
    (``chunk`` problems per generate call; the model is left in training mode)."""
    model.eval()
    tok.padding_side = "left"
    torch.manual_seed(seed)
    rows = []
    for start in range(0, len(problems), chunk):
        batch = [p for p in problems[start:start + chunk] for _ in range(n)]
        enc = tok([chat_prompt(tok, State(p.question), "\n\n") for p in batch], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                             top_p=1.0, top_k=0, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        rows += [(p, response_steps(tok.decode(ids, skip_special_tokens=True)))
                 for p, ids in zip(batch, out[:, enc.input_ids.shape[1]:])]
    tok.padding_side = "right"
    model.train()
    return rows


def evaluate(model, tok, problems, seed, max_new_tokens):
    """Sampled accuracy (temperature 0.7) and the kind of each failed solution's first wrong step."""
    solved, kinds = 0, {"copy": 0, "arithmetic": 0, "other": 0}
    for p, steps in sample(model, tok, problems, seed=seed, max_new_tokens=max_new_tokens):
        check = check_steps(p, steps)
        solved += check.solved
        if check.solved:
            continue
        i = next((i for i, ok in enumerate(check.correct) if not ok), len(steps))
        m = STEP.match(steps[i].strip()) if i < len(steps) else None
        if m and i < len(p.ops):
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            kinds["copy" if (op, b) != p.ops[i] else "arithmetic" if a == p.values[i] else "other"] += 1
        else:
            kinds["other"] += 1
    return solved / len(problems), kinds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8x256")
    ap.add_argument("--ops", type=int, nargs=2, default=(3, 6))
    ap.add_argument("--train-ops", type=int, nargs=2, default=None, help="operations in training problems (default --ops)")
    ap.add_argument("--digits", type=int, default=2)
    ap.add_argument("--start-digits", type=int, default=2)
    ap.add_argument("--operators", default="+-")
    ap.add_argument("--forms", default="compute,story")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--pretrain-steps", type=int, default=0,
                    help="first train this many steps on the easy task (1-5 operations, one-digit operands)")
    ap.add_argument("--pretrain-lr", type=float, default=3e-3)
    ap.add_argument("--grow-from", default=None, help="start from this trained LM (and its tokenizer), "
                    "its layers spread over --shape's depth, the new ones the identity")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    forms = tuple(args.forms.split(","))
    d = Difficulty(min_ops=args.ops[0], max_ops=args.ops[1], digits=args.digits, start_digits=args.start_digits,
                   operators=tuple(args.operators), forms=forms)
    lo, hi = args.train_ops or args.ops
    dt = Difficulty(min_ops=lo, max_ops=hi, digits=args.digits, start_digits=args.start_digits,
                    operators=tuple(args.operators), forms=forms)
    heldout = make_split(0, 500, d)
    if args.grow_from:
        from specs_llm.testbed.tokenizer import load_tokenizer

        tok = load_tokenizer(args.grow_from)
        model = grown(args.grow_from, shape(args.shape), tok)
    else:
        tok = train_tokenizer(corpus(itertools.islice(training_problems(1, dt, exclude=heldout), 4000)), 512)
        model = new_lm(shape(args.shape), tok, 1)
    if args.pretrain_steps:
        easy = Difficulty(min_ops=1, max_ops=5, digits=1, start_digits=2)
        t1 = time.perf_counter()
        pre = (lm_example(tok, p.question, p.solution) for p in training_problems(2001, easy, exclude=heldout))
        losses = train_lm(model, tok, pre, Schedule(steps=args.pretrain_steps, batch_size=64, lr=args.pretrain_lr))
        acc, kinds = evaluate(model, tok, make_split(7, 128, easy), 0, args.max_new_tokens)
        hard_acc, hard_kinds = evaluate(model, tok, heldout[:128], 0, args.max_new_tokens)
        print(json.dumps({"pretrain_steps": args.pretrain_steps, "seconds": round(time.perf_counter() - t1),
                          "loss": round(sum(losses[-10:]) / 10, 4), "easy_accuracy": acc, "accuracy": hard_acc,
                          "first_error": hard_kinds}), flush=True)
        model.train()
    examples = (lm_example(tok, p.question, p.solution) for p in training_problems(1001, dt, exclude=heldout))
    probe = heldout[:128]
    t0 = time.perf_counter()
    losses = []

    def on_step(step, loss):
        losses.append(loss)
        done = step + 1
        if done % args.every == 0 or done == args.steps:
            train_s = time.perf_counter() - t0
            acc, kinds = evaluate(model, tok, probe, done, args.max_new_tokens)
            print(json.dumps({"step": done, "train_s": round(train_s), "loss": round(sum(losses[-10:]) / 10, 4),
                              "accuracy": acc, "first_error": kinds}), flush=True)

    train_lm(model, tok, examples, Schedule(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup=args.warmup),
             on_step=on_step)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)


if __name__ == "__main__":
    main()
