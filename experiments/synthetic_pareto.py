"""Objective-latency Pareto curves of SPECS vs target/draft beam search vs RSD on a random MDP.

    python experiments/synthetic_pareto.py [--out runs/synthetic-pareto] [--quick]

Writes pareto.png, pareto.json, pareto.csv (see `specs_llm.synthetic.synthetic_pareto`)
and prints the cost model and SPECS's latency at matched objective relative to
target beam search.
"""

import argparse
import json

from specs_llm.synthetic import synthetic_pareto


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/synthetic-pareto")
    p.add_argument("--quick", action="store_true", help="a small grid and 64 problems per point (tests)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    result = synthetic_pareto(args.out, quick=args.quick, seed=args.seed)
    print("cost model:", result["cost_model"]["derivation"])
    print("seconds per token:", json.dumps(result["cost_model"]["seconds_per_token"]))
    for regime, m in result["matched"].items():
        print(f"[{regime}] SPECS latency at matched objective / target beam search:")
        for row in m["per_beam_n"]:
            r = row["specs_latency_ratio"]
            print(f"  beam n={row['beam_n']:>2}  objective {row['objective']:.4f}  beam {row['beam_latency_s']:.3f} s"
                  f"  SPECS/beam {'not reached' if r is None else f'{r:.3f}'}")
    print(f"wrote {args.out}/pareto.png, pareto.json, pareto.csv in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
