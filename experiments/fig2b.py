"""The paper's Figure 2(b): target-started partial traces completed by the draft vs the target,
bucketed by the PRM score of the partial trace.

    python experiments/fig2b.py [--out runs/fig2b] [--recipe RECIPE] [--quick]

Without --recipe: a random MDP (sparse 0/1 reward; PRM = the target's success
probability). With a recipe (e.g. recipes/tiny/compare.yaml, or a paper
recipe on a GPU): its backend, first dataset and first method's step settings.
Writes fig2b.png, fig2b.json, fig2b.csv (see `specs_llm.synthetic.fig2b`).
"""

import argparse

from specs_llm.synthetic import fig2b


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/fig2b")
    p.add_argument("--recipe", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--prefix-steps", type=int, default=None)
    p.add_argument("--samples", type=int, default=None, help="partial traces per problem")
    p.add_argument("--buckets", type=int, default=5)
    p.add_argument("--limit", type=int, default=None, help="number of problems")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    result = fig2b(args.out, args.recipe, quick=args.quick, prefix_steps=args.prefix_steps, samples=args.samples,
                   buckets=args.buckets, limit=args.limit, seed=args.seed)
    print(f"{result['traces']} partial traces ({result['dropped_ended_in_prefix']} ended within the prefix, dropped)")
    print(f"{'PRM score':>15} {'count':>6} {'draft':>7} {'target':>7}   ({result['outcome']})")
    for r in result["rows"]:
        fmt = lambda v: "   -   " if v is None else f"{v:7.3f}"  # noqa: E731
        print(f"{r['score_lo']:7.3f}-{r['score_hi']:<7.3f} {r['count']:>6} {fmt(r['draft_accuracy'])} "
              f"{fmt(r['target_accuracy'])}")
    print(f"wrote {args.out}/fig2b.png, fig2b.json, fig2b.csv")


if __name__ == "__main__":
    main()
