"""A target and a PRM trained as one model: the LM loss on reference solutions plus a
value-head loss on perturbed solutions, sharing one body from the first step.

    python benchmarks/testbed_hard/exp_joint.py --shape 4x256 --ops 1 5 --digits 1 --steps 600 --out /tmp/hard/j1

Perturbations (`perturbed`): a reference solution cut after a random step,
that step made wrong in one of the ways the models err (a wrong result, the
wrong operation or operand, a wrong start value, an early or wrong answer);
labels are `task.check_steps`' verdicts, so they are exact. Every --every
steps: the LM's sampled accuracy (128 held-out problems, temperature 0.7) and
the value head's step AUC on 2 solutions per problem sampled from the LM
itself at temperature 0.7 (256 held-out problems; `quality.roc_auc`)."""

import argparse
import itertools
import json
import random
import time
from pathlib import Path

import torch

from exp_target import evaluate, sample, shape
from specs_llm.testbed.quality import roc_auc
from specs_llm.testbed.task import Difficulty, apply, check_steps, make_split, training_problems
from specs_llm.testbed.tokenizer import corpus, train_tokenizer
from specs_llm.testbed.train import Schedule, lm_example, new_lm, prm_example

_DELTAS = (1, 2, 9, 10, 11, 20, 100)


def perturbed(p, rng: random.Random) -> tuple[list[str], list[bool]]:
    m, v = len(p.ops), p.values
    steps = list(p.steps)
    if rng.random() < 0.3:  # a correct prefix
        k = rng.randint(1, m + 1)
        out = steps[:k]
    else:
        k = rng.randint(0, m)
        out = steps[:k]
        kind = rng.choice(("result", "result", "result", "operand", "skip", "start", "early")) if k < m else "answer"
        if kind in ("result", "answer") or (kind == "early" and k == 0):
            sign = rng.choice((-1, 1))
            c = max(0, v[k + 1 if k < m else m] + sign * rng.choice(_DELTAS))
            if c == v[k + 1 if k < m else m]:
                c += 1
            if k < m:
                op, x = p.ops[k]
                out.append(f"{v[k]} {op} {x} = {c}.")
            else:
                out.append(f"The answer is \\boxed{{{c}}}.")
        elif kind == "early":
            out.append(f"The answer is \\boxed{{{v[k]}}}.")
        elif kind == "start":
            a = max(0, v[k] + rng.choice((-1, 1)) * rng.choice(_DELTAS))
            op, x = p.ops[k]
            out.append(f"{a} {op} {x} = {apply(a, op, x)}.")
        else:  # the wrong operation or operand, computed correctly
            op, x = p.ops[k]
            if kind == "skip" and m > 1:
                op, x = p.ops[rng.choice([j for j in range(m) if j != k])]
            if (op, x) == p.ops[k]:
                x = max(1, x + rng.choice((-1, 1)) * rng.choice((1, 2, 10)))
                if (op, x) == p.ops[k]:
                    x += 1
            out.append(f"{v[k]} {op} {x} = {apply(v[k], op, x)}.")
    return out, list(check_steps(p, out).correct)


@torch.no_grad()
def step_auc(model, head, tok, problems, seed, max_new_tokens):
    """AUC of the head on steps the LM samples itself (2 per problem, temperature 0.7)."""
    rows = sample(model, tok, problems, seed=seed, max_new_tokens=max_new_tokens, n=2, chunk=len(problems))
    model.eval()
    scores, labels = [], []
    for p, steps in rows:
        if not steps:
            continue
        ids, pos, lab = prm_example(tok, p.question, steps, check_steps(p, steps).correct)
        h = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        scores += head(h[pos])[:, 0].tolist()
        labels += [bool(x) for x in lab]
    model.train()
    return roc_auc(scores, labels), len(labels), len(labels) - sum(labels)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4x256")
    ap.add_argument("--ops", type=int, nargs=2, default=(1, 5))
    ap.add_argument("--digits", type=int, default=1)
    ap.add_argument("--start-digits", type=int, default=2)
    ap.add_argument("--operators", default="+-")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prm-batch", type=int, default=32)
    ap.add_argument("--prm-weight", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = Difficulty(min_ops=args.ops[0], max_ops=args.ops[1], digits=args.digits, start_digits=args.start_digits,
                   operators=tuple(args.operators))
    heldout = make_split(0, 500, d)
    tok = train_tokenizer(corpus(itertools.islice(training_problems(1, d, exclude=heldout), 4000)), 512)
    model = new_lm(shape(args.shape), tok, 1)
    head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
    lm_stream = training_problems(1001, d, exclude=heldout)
    prm_stream = training_problems(1002, d, exclude=heldout)
    rng = random.Random(0)
    sched = Schedule(steps=args.steps, batch_size=args.batch, lr=args.lr)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, sched.lr_factor)
    pad = tok.pad_token_id
    t0, eval_s, hist = time.perf_counter(), 0.0, []
    model.train()
    for step in range(args.steps):
        exs = [lm_example(tok, p.question, p.solution) for p in itertools.islice(lm_stream, args.batch)]
        width = max(len(i) for i, _ in exs)
        ids = torch.full((len(exs), width), pad)
        labels = torch.full((len(exs), width), -100)
        for r, (seq, start) in enumerate(exs):
            ids[r, :len(seq)] = torch.tensor(seq)
            labels[r, start:len(seq)] = torch.tensor(seq[start:])
        logits = model(input_ids=ids).logits
        loss_lm = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        pex = [prm_example(tok, p.question, *perturbed(p, rng)) for p in itertools.islice(prm_stream, args.prm_batch)]
        width = max(len(i) for i, _, _ in pex)
        pids = torch.full((len(pex), width), pad)
        rows, cols, target = [], [], []
        for r, (seq, pos, lab) in enumerate(pex):
            pids[r, :len(seq)] = torch.tensor(seq)
            rows += [r] * len(pos)
            cols += pos
            target += lab
        h = model.model(input_ids=pids).last_hidden_state
        v = head(h[torch.tensor(rows), torch.tensor(cols)])[:, 0]
        loss_prm = torch.nn.functional.binary_cross_entropy_with_logits(v, torch.tensor(target))
        (loss_lm + args.prm_weight * loss_prm).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), opt.zero_grad(set_to_none=True), lr.step()
        hist.append((loss_lm.item(), loss_prm.item()))
        done = step + 1
        if done % args.every == 0 or done == args.steps:
            e0 = time.perf_counter()
            acc, kinds = evaluate(model, tok, heldout[:128], done, args.max_new_tokens)
            auc, n, neg = step_auc(model, head, tok, heldout[128:384], done, args.max_new_tokens)
            eval_s += time.perf_counter() - e0
            last = hist[-10:]
            print(json.dumps({"step": done, "train_s": round(time.perf_counter() - t0 - eval_s),
                              "loss_lm": round(sum(a for a, _ in last) / len(last), 4),
                              "loss_prm": round(sum(b for _, b in last) / len(last), 4),
                              "accuracy": acc, "first_error": kinds, "auc": round(auc, 4), "steps": n,
                              "wrong": neg}), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "head": head.state_dict()}, Path(args.out) / "joint.pt")
    tok.save_pretrained(args.out)


if __name__ == "__main__":
    main()
