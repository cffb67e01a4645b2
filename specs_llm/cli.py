"""The `specs` command.

    specs theory converge   exact convergence experiments E1-E10 (THEORY.md), plots
    specs theory verify     every claim of THEORY.md section 5 as PASS/FAIL
    specs generate          one question through SPECS or a baseline, with a trace
    specs run RECIPE        a resumable benchmark run from a YAML recipe
    specs report DIR...     plots and tables from results files
    specs synthetic         objective-latency Pareto and Figure 2(b) on an MDP
    specs testbed build     train the testbed's tokenizer, draft, target and PRM (CPU)
    specs testbed evaluate  the testbed's quality: accuracies, PRM AUC, decode cost ratio
    specs testbed serve     the testbed's three models behind local OpenAI-compatible servers

Each subcommand imports what it needs when it runs, so `specs theory ...`
never loads torch or vllm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from .backends.vllm_env import VLLM_ENV_HELP, apply_vllm_env
from .config import AGGREGATIONS, RESAMPLING, STRATEGIES

__all__ = ["main", "build_parser"]


# ---------------------------------------------------------------------------
# theory


def _theory_converge(args) -> int:
    from specs_theory.converge import run_converge

    run_converge(out_dir=args.out, quick=args.quick, seed=args.seed, full_multibeam=args.full_multibeam)
    return 0


def _theory_verify(args) -> int:
    from specs_theory.verify import run_verify

    report = run_verify(
        out_dir=args.out, K=args.K, H=args.H, beta=args.beta, draft_noise=args.draft_noise,
        reward_kind=args.reward_kind, seed=args.seed, quick=args.quick,
    )
    return 0 if report["passed"] else 1


# ---------------------------------------------------------------------------
# LLM


def _generate(args) -> int:
    from .backends import load_models
    from .config import SearchConfig
    from .search import run_search
    from .timing import Ledger

    overrides = {k: v for k, v in {
        "strategy": args.strategy, "n": args.n, "k": args.k, "temperature": args.temperature,
        "sampling_temperature": args.sampling_temperature, "reward_weight": args.reward_weight,
        "ratio_weight": args.ratio_weight, "threshold": args.threshold, "target_mode": args.target_mode,
        "switch_back_threshold": args.switch_back_threshold, "first_step": args.first_step,
        "generator": args.generator, "max_steps": args.max_steps, "max_step_tokens": args.max_step_tokens,
        "aggregation": args.aggregation, "seed": args.seed, "resampling": args.resampling,
        "ess_threshold": args.ess_threshold,
    }.items() if v is not None}
    if args.no_threshold:
        overrides["threshold"] = None
    if args.length_normalize:
        overrides["length_normalize"] = True
    config = SearchConfig(**overrides)
    needs_draft = "draft" in config.roles
    if needs_draft and not args.draft:
        raise SystemExit(f"error: --draft is required for strategy {config.strategy!r} "
                         f"(generator {config.generator!r})")
    options = json.loads(args.backend_options) if args.backend_options else {}
    if args.backend == "vllm":
        apply_vllm_env()
    # With --json, stdout carries the JSON object alone: anything else printed meanwhile goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        models = load_models(
            args.backend, draft=args.draft if needs_draft else None, target=args.target, prm=args.prm,
            prm_convention=args.prm_convention, step_delimiter=config.step_delimiter, options=options,
        )
        ledger = Ledger()
        (result,) = run_search([args.question], models, config, ledger=ledger)
    out = result.to_dict()
    out["config"] = config.__dict__
    out["run_timing"] = ledger.summary()
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        _print_trace(out)
    return 0 if result.error is None else 2


def _print_trace(out: dict) -> None:
    if out["error"]:
        print(f"ERROR: {out['error']}")
    print("step  source  deferred     score    reward  tokens  text")
    for i, s in enumerate(out["steps"]):
        score = "nan" if s["score"] is None else f"{s['score']:9.3f}"
        reward = "nan" if s["reward"] is None else f"{s['reward']:8.4f}"
        text = s["text"].replace("\n", "\\n")
        print(f"{i:4d}  {s['source']:6s}  {str(s['deferred']):8s}  {score:>9s}  {reward:>8s}  {s['num_tokens']:6d}  {text[:60]}")
    if out["smc"]:
        print("\nSMC  step  moving      ESS  resampled     log Zhat")
        for t in out["smc"]:
            print(f"     {t['step']:4d}  {t['active']:6d}  {t['ess']:7.2f}  {str(t['resampled']):9s}  {t['log_Z']:11.4f}")
        print(f"     {out['counts']['resamplings']} resampling event(s); {out['num_finished_beams']} particles at the end")
    print(f"\nanswer: {out['answer']}")
    t = out["run_timing"]
    print(f"\nlatency {t['wall_seconds']:.3f} s (loop overhead {t['loop_overhead_seconds']:.3f} s)")
    for group in ("by_model", "by_phase"):
        for name, v in t[group].items():
            print(f"  {name:18s} {v['seconds']:8.3f} s  {v['calls']:4d} calls  {v['tokens']:7d} tokens")


def _run(args) -> int:
    from .runner import parse_shard, run_recipe

    problems = args.problems.split(",") if args.problems else None
    shard = parse_shard(args.shard) if args.shard else None
    run_recipe(args.recipe, out_dir=args.out, limit=args.limit, problems=problems, shard=shard)
    return 0


def _report(args) -> int:
    from pathlib import Path

    from .report import make_report

    out = args.out or (str(Path(args.dirs[0]) / "report") if len(args.dirs) == 1 else "out/report")
    paths = make_report(args.dirs, out)
    for path in paths:
        print(path)
    print(f"wrote the report to {out}", file=sys.stderr)
    return 0


def _synthetic(args) -> int:
    from . import synthetic

    if args.which == "pareto":
        synthetic.synthetic_pareto(args.out, quick=args.quick)
    else:
        synthetic.fig2b(args.out, quick=args.quick)
    return 0


def _testbed_build(args) -> int:
    from .testbed.build import BuildSpec, build

    build(args.out or f"out/{args.name}", BuildSpec.named(args.name, seed=args.seed))
    return 0


def _testbed_serve(args) -> int:
    from .testbed.serve import serve

    try:
        serve(args.port, args.logs, testbed=args.name)
    except KeyboardInterrupt:
        print("[testbed] servers stopped", file=sys.stderr)
    return 0


def _testbed_evaluate(args) -> int:
    import os

    from .testbed import TESTBEDS
    from .testbed.quality import evaluate, format_report

    if args.models:
        os.environ[TESTBEDS[args.name][1]] = args.models
    out = args.out or f"out/{args.name}-quality"
    report = evaluate(out, backend=args.backend, limit=args.limit, seed=args.seed, testbed=args.name)
    print(format_report(report))
    print(f"wrote {out}/quality.json")
    return 0


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specs", description="SPECS: exact theory and LLM experiments.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    theory = sub.add_parser("theory", help="exact theory: convergence experiments and claim checks")
    tsub = theory.add_subparsers(dest="theory_command", required=True, metavar="THEORY_COMMAND")
    conv = tsub.add_parser("converge", help="run experiments E1-E10 and plot convergence in n")
    conv.add_argument("--quick", action="store_true", help="smaller sweep (under 40 s)")
    conv.add_argument("--out", default="out/converge", help="output directory (default: out/converge)")
    conv.add_argument("--seed", type=int, default=0)
    conv.add_argument("--full-multibeam", action="store_true", dest="full_multibeam",
                      help="the full multi-beam Monte Carlo sweep of docs/multibeam.md (about 5 min more)")
    conv.set_defaults(func=_theory_converge)
    ver = tsub.add_parser("verify", help="check every claim of THEORY.md section 5 (PASS/FAIL)")
    ver.add_argument("--out", default="out/verify")
    ver.add_argument("--K", type=int, default=5, help="blocks per step (default 5)")
    ver.add_argument("--H", type=int, default=3, help="horizon in blocks (default 3)")
    ver.add_argument("--beta", type=float, default=0.5)
    ver.add_argument("--draft-noise", type=float, default=1.0, dest="draft_noise")
    ver.add_argument("--reward-kind", choices=("uniform", "sparse"), default="uniform", dest="reward_kind")
    ver.add_argument("--seed", type=int, default=0)
    ver.add_argument("--quick", action="store_true", help="fewer Monte Carlo draws")
    ver.set_defaults(func=_theory_verify)

    gen = sub.add_parser("generate", help="solve one question with SPECS or a baseline; print the trace",
                         epilog=VLLM_ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("--backend", choices=("hf", "vllm", "openai_server"), default="hf")
    gen.add_argument("--draft", help="draft model directory (or server URL)")
    gen.add_argument("--target", required=True, help="target model directory (or server URL)")
    gen.add_argument("--prm", required=True, help="PRM directory (or server URL)")
    gen.add_argument("--prm-convention", choices=("value_head", "step_tag"), default="value_head")
    gen.add_argument("--question", required=True)
    gen.add_argument("--strategy", choices=STRATEGIES)
    for name, typ in (("n", int), ("k", int), ("temperature", float), ("sampling-temperature", float),
                      ("reward-weight", float), ("ratio-weight", float), ("threshold", float),
                      ("switch-back-threshold", float), ("max-steps", int), ("max-step-tokens", int),
                      ("seed", int), ("ess-threshold", float)):
        gen.add_argument(f"--{name}", type=typ, dest=name.replace("-", "_"))
    gen.add_argument("--no-threshold", action="store_true", help="never defer on the score")
    gen.add_argument("--length-normalize", action="store_true")
    gen.add_argument("--target-mode", choices=("greedy", "soft"))
    gen.add_argument("--first-step", choices=("target", "draft"))
    gen.add_argument("--generator", choices=("target", "draft"), help="proposer for beam/bon/smc")
    gen.add_argument("--aggregation", choices=AGGREGATIONS)
    gen.add_argument("--resampling", choices=RESAMPLING, help="SMC resampling scheme")
    gen.add_argument("--backend-options", help='JSON dict passed to each model, e.g. \'{"max_model_len": 256}\'')
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    gen.set_defaults(func=_generate)

    run = sub.add_parser("run", help="run a YAML recipe (resumable) and write results.jsonl",
                         epilog=VLLM_ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("recipe")
    run.add_argument("--out", help="output directory (default: from the recipe)")
    run.add_argument("--limit", type=int, help="first N problems of each dataset")
    run.add_argument("--problems", help="comma-separated problem ids")
    run.add_argument("--shard", help="I/N: run only shard I of N of the records (one directory per shard; "
                     "`specs report` merges them)")
    run.set_defaults(func=_run)

    rep = sub.add_parser("report", help="plots and tables from one or more run directories")
    rep.add_argument("dirs", nargs="+")
    rep.add_argument("--out", default=None,
                     help="output directory (default: DIR/report for one directory, else out/report)")
    rep.set_defaults(func=_report)

    syn = sub.add_parser("synthetic", help="MDP experiments with a latency cost model")
    syn.add_argument("which", choices=("pareto", "fig2b"))
    syn.add_argument("--out", default="out/synthetic")
    syn.add_argument("--quick", action="store_true")
    syn.set_defaults(func=_synthetic)

    tb = sub.add_parser("testbed", help="the trained CPU testbed: build its models, measure their quality")
    tsub = tb.add_subparsers(dest="testbed_command", required=True, metavar="TESTBED_COMMAND")
    tbb = tsub.add_parser("build", help="train tokenizer, target, draft and PRM from scratch (about 12 min on 2 cores)")
    from .testbed import TESTBEDS

    names = dict(choices=tuple(TESTBEDS), default="testbed",
                 help="which testbed: the shipped one, or the harder one of the paper's regime (issue 17)")
    tbb.add_argument("--name", **names)
    tbb.add_argument("--out", help="output directory (default: out/<name>)")
    tbb.add_argument("--seed", type=int, default=0)
    tbb.set_defaults(func=_testbed_build)
    tbe = tsub.add_parser("evaluate", help="accuracies (runner), PRM step AUC, decode cost ratio")
    tbe.add_argument("--name", **names)
    tbe.add_argument("--models", help="a build directory (default: $SPECS_TESTBED_DIR, or $SPECS_TESTBED_HARD_DIR "
                                      "for testbed-hard, else the shipped models)")
    tbe.add_argument("--out", help="output directory (default: out/<name>-quality)")
    tbe.add_argument("--backend", choices=("vllm", "hf"), default="vllm")
    tbe.add_argument("--limit", type=int, default=500, help="held-out problems (default 500)")
    tbe.add_argument("--seed", type=int, default=0)
    tbe.set_defaults(func=_testbed_evaluate)
    tbs = tsub.add_parser("serve", help="serve draft, target and PRM with three local vLLM servers (ports P..P+2)")
    tbs.add_argument("--name", **names)
    tbs.add_argument("--port", type=int, default=8101)
    tbs.add_argument("--logs", default="out/testbed-servers")
    tbs.set_defaults(func=_testbed_serve)
    return p


def main(argv=None) -> int:
    from .backends.base import BackendError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, BackendError) as exc:  # bad input, a model that failed to load
        print(f"specs: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # e.g. runner.RunError: a run that cannot go on (its results are kept)
        print(f"specs: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
