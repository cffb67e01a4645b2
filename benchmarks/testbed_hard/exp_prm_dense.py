"""PRM training with dense token labels vs step labels, on a built testbed's models.

    python benchmarks/testbed_hard/exp_prm_dense.py --testbed specs_llm/testbed/weights --labels dense --steps 1000

Data as the build makes it: 1024 training problems, 2 solutions each from the
draft and 1 from the target at temperature 1.0, plus the references; every
step labelled by `task.check_steps`. "step" labels: the value head is trained
at each step's last token on the step's verdict (the build's recipe).
"dense" labels: also at every token of a step, on whether the step so far is
still a prefix of the one right step at that point (the step's verdict at its
last token), so the head is taught where a step goes wrong, token by token.
Every --every steps: step AUC (`quality.roc_auc`) on 1 solution per model
per held-out problem (256 problems, temperature 0.7), as `specs testbed
evaluate` measures it."""

import argparse
import itertools
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from exp_target import sample

from specs_llm.backends.base import State
from specs_llm.backends.common import encode, prm_input
from specs_llm.testbed.quality import roc_auc
from specs_llm.testbed.task import apply, check_steps, read_jsonl, training_problems
from specs_llm.testbed.tokenizer import load_tokenizer
from specs_llm.testbed.train import Schedule, prm_from_lm, train_prm

DELIM = "\n\n"


def right_step(problem, steps, i) -> str | None:
    """The one step that `check_steps` accepts at position i after ``steps[:i]``."""
    stated = problem.start
    for j in range(i):
        head = steps[j].strip()
        if head.startswith("The answer"):
            return None
        try:
            stated = int(head.rsplit("=", 1)[1].strip().rstrip("."))
        except (IndexError, ValueError):
            return None
    if i < len(problem.ops):
        op, x = problem.ops[i]
        return f"{stated} {op} {x} = {apply(stated, op, x)}."
    return f"The answer is \\boxed{{{stated}}}." if i == len(problem.ops) else None


def example(tok, problem, steps, dense: bool):
    ids, positions = prm_input(tok, State(problem.question, tuple(steps)), convention="value_head", delimiter=DELIM)
    verdicts = check_steps(problem, steps).correct
    if not dense:
        return ids, positions, [float(v) for v in verdicts]
    cols, labels = [], []
    start = positions[0] - len(encode(tok, steps[0] + DELIM)) + 1
    for i, (step, end, ok) in enumerate(zip(steps, positions, verdicts)):
        seg = ids[start:end + 1]
        right = right_step(problem, steps, i)
        text = step + DELIM
        for k in range(len(seg) - 1):
            upto = len(tok.decode(seg[:k + 1]))
            cols.append(start + k)
            labels.append(float(right is not None and (right + DELIM).startswith(text[:upto])))
        cols.append(end)
        labels.append(float(ok))
        start = end + 1
    return ids, cols, labels


def perturbed(problem, rng: random.Random) -> list[str]:
    """The reference solution with one arithmetic step made wrong, as samplers err:
    its result off by 1, 2 or 10 (a carry or borrow), or an operand miscopied
    (another operation's, or off by 1); the steps after it go on correctly from
    the wrong value, so only that step is locally wrong (unlike
    `exp_joint.perturbed`, which cuts the solution after the wrong step)."""
    i = rng.randrange(len(problem.ops))
    value = problem.values[i]
    op, x = problem.ops[i]
    kind = rng.choice(("result", "result", "operand"))
    if kind == "operand":
        others = [b for o, b in problem.ops if (o, b) != (op, x)]
        x2 = rng.choice(others) if others and rng.random() < 0.5 else x + rng.choice((-1, 1))
        result = apply(value, op, x2)
        wrong = f"{value} {op} {x2} = {result}."
    else:
        result = problem.values[i + 1] + rng.choice((-10, -2, -1, 1, 2, 10))
        wrong = f"{value} {op} {x} = {result}."
    steps = list(problem.steps[:i]) + [wrong]
    for o, b in problem.ops[i + 1:]:
        steps.append(f"{result} {o} {b} = {apply(result, o, b)}.")
        result = apply(result, o, b)
    return steps + [f"The answer is \\boxed{{{result}}}."]


@torch.no_grad()
def auc(prm, tok, rows):
    prm.eval()
    scores, labels = [], []
    for p, steps in rows:
        ids, pos, lab = example(tok, p, steps, dense=False)
        logits = prm(input_ids=torch.tensor([ids])).logits[0, :, 0]
        scores += logits[pos].tolist()
        labels += [bool(x) for x in lab]
    prm.train()
    return roc_auc(scores, labels), len(labels), len(labels) - sum(labels)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--testbed", default="specs_llm/testbed/weights")
    ap.add_argument("--labels", choices=("step", "dense"), default="dense")
    ap.add_argument("--extra-layers", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--problems", type=int, default=1024)
    ap.add_argument("--perturb", type=int, default=0, help="perturbed reference solutions per training problem")
    ap.add_argument("--cache", default="/tmp/hard/prm_samples.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.testbed)
    tok = load_tokenizer(root / "target")
    heldout = read_jsonl(root / "heldout.jsonl")
    models = {r: AutoModelForCausalLM.from_pretrained(root / r, dtype=torch.float32).eval() for r in ("draft", "target")}
    cache = Path(args.cache)
    if cache.exists():
        data = json.loads(cache.read_text())
    else:
        t0 = time.perf_counter()
        from specs_llm.testbed.build import BuildSpec
        d = BuildSpec().difficulty if "hard" not in str(root) else BuildSpec.hard().difficulty
        train = list(itertools.islice(training_problems(3, d, exclude=heldout), args.problems))
        test = heldout[:256]
        data = {"train": [[p.to_json(), list(p.steps)] for p in train], "test": []}
        for role, n in (("draft", 2), ("target", 1)):
            for split, problems, k, temperature, seed in (("train", train, n, 1.0, 1), ("test", test, 1, 0.7, 2)):
                rows = sample(models[role], tok, problems, seed=seed, max_new_tokens=160, n=k,
                              temperature=temperature, chunk=128)
                data[split] += [[p.to_json(), s] for p, s in rows if s]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(data))
        print(json.dumps({"sampled_s": round(time.perf_counter() - t0)}), flush=True)
    from specs_llm.testbed.task import Problem

    def problem(row):
        return Problem(row["id"], row["start"], tuple((o, x) for o, x in row["ops"]), row["problem"], row["form"])

    train = [(problem(r), s) for r, s in data["train"]]
    test = [(problem(r), s) for r, s in data["test"]]
    rng = random.Random(0)
    references = {r["id"]: problem(r) for r, _ in data["train"]}
    train += [(p, perturbed(p, rng)) for p in references.values() if p.ops for _ in range(args.perturb)]
    rng.shuffle(train)
    examples = [example(tok, p, s, args.labels == "dense") for p, s in train]
    wrong = sum(1 for p, s in train for v in check_steps(p, s).correct if not v)
    print(json.dumps({"train_solutions": len(train), "train_wrong_steps": wrong,
                      "positions": sum(len(e[1]) for e in examples)}), flush=True)
    prm = prm_from_lm(models["target"], tok, extra_layers=args.extra_layers, seed=6)
    t0 = time.perf_counter()
    total = Schedule(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup=20)

    def on_step(step, loss):
        if (step + 1) % args.every == 0:
            a, n, neg = auc(prm, tok, test)
            print(json.dumps({"step": step + 1, "seconds": round(time.perf_counter() - t0), "loss": round(loss, 4),
                              "auc": round(a, 4), "steps": n, "wrong": neg}), flush=True)

    train_prm(prm, tok, examples, total, seed=4, on_step=on_step)


if __name__ == "__main__":
    main()
