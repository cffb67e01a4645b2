"""`specs theory converge`: experiments E1-E10 on the default instance, with plots.

Writes to ``out_dir``:

  converge.json   {"instance", "asymptotic_constant", "facts", "records"}; one
                  record per (experiment, method, n or N, tau) with at least
                  experiment, method, n, tau, kl_forward, kl_reverse, tv,
                  objective_gap, bound
  converge.csv    the records as a table
  kl_vs_n.png     KL(pi* || SPECS_n) with the Theorem C / C1 bounds and c/n^2
  objective_gap.png   J(pi*) - J(pi) vs n: SPECS, beam search, best-of-n,
                  sequence-level SIR (exact) and SMC (Monte Carlo)
  threshold.png   deferrals vs threshold, and the truncated-limit effect
  smc_vs_specs.png    chi2 to pi* of SMC (Monte Carlo) and SPECS (exact)
  multibeam.png   multi-beam SPECS (k > 1 beams, Monte Carlo): KL to pi* and
                  the objective gap vs n of a uniformly chosen and of the
                  best-reward final beam, and the gap vs k at a fixed total n
                  (docs/multibeam.md). By default a reduced sweep
                  (MULTIBEAM["default"], seconds); ``full_multibeam`` runs
                  the full one of docs/multibeam.md (minutes).

and prints a compact table. Results are written after each experiment, so
an interrupted run keeps what it finished.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from specs_theory import experiments as E

__all__ = ["run_converge", "run_experiments", "log_progress", "multibeam_setting", "SETTINGS", "MULTIBEAM"]

# (full, quick) sizes: full < 3 min, quick < 40 s on a 2-core machine (without MULTIBEAM below).
# E7 adds N beyond smc_Ns (doublings, at most E.SMC_EXTEND_FACTOR x the largest, within
# smc_budget_s seconds) where the 1/N regime of Var(Zhat) starts just above them.
SETTINGS = {
    False: dict(top=4096, mc_runs=200_000, mc_ns=(1, 4, 16, 64), enum_ns=(1, 2, 3, 4, 8, 16), quad_ns=(1, 8, 64),
                threshold_ns=E.powers_of_two(64), threshold_mc_runs=100_000, bon_ns=(1, 2, 4, 16, 64),
                smc_Ns=E.powers_of_two(256), smc_runs=100_000, smc_budget_s=120.0, gap_top=1024, seq_top=512,
                perturbations=2000),
    True: dict(top=4096, mc_runs=40_000, mc_ns=(4, 64), enum_ns=(1, 2, 4, 8), quad_ns=(8,),
               threshold_ns=(1, 4, 32, 64), threshold_mc_runs=40_000, bon_ns=(2, 16), smc_Ns=(1, 4, 16, 64),
               smc_runs=20_000, smc_budget_s=30.0, gap_top=256, seq_top=256, perturbations=500),
}


def log_progress(msg: str) -> None:
    """Print a progress line to stderr (the default ``log`` of `run_experiments`)."""
    print(msg, file=sys.stderr, flush=True)


# Multi-beam SPECS (k > 1, Monte Carlo; docs/multibeam.md), only in `specs theory converge`.
# Each simulated (k, n) compiles its own sampler (about 2 s) and costs
# num_runs x n candidates per block.
#   default: k = 2, 4 at n = 4, 16, 64 (50,000 runs each; six samplers), the
#            exact k = 1 law and the exact n -> inf limit of k = 2; no beam-search
#            Monte Carlo, no k = 1 Monte Carlo check (about 15 s on 2 cores).
#   full:    the sweep of docs/multibeam.md (`full_multibeam`): k = 2, 4 at
#            n = 4..128, k = 1..16 at totals 16 and 64, beam search with k beams
#            and k = 1 by Monte Carlo, 200,000 runs each (about 5 min on 2 cores).
#   quick:   k = 2 at n = 4, 16, 64 (20,000 runs), the exact k = 1 law and k = 2 limit.
MULTIBEAM = {
    "default": dict(ks=(2, 4), ns=(4, 16, 64), budgets=(64,), budget_ks=(1, 2, 4), num_runs=50_000,
                    beam=False, k1_monte_carlo=False, limit_ks=(2,)),
    "full": dict(ks=(2, 4), ns=(4, 8, 16, 32, 64, 128), budgets=(16, 64), budget_ks=(1, 2, 4, 8, 16),
                 num_runs=200_000, limit_ks=(2,)),
    "quick": dict(ks=(2,), ns=(4, 16, 64), budgets=(), budget_ks=(), num_runs=20_000, beam=False,
                  k1_monte_carlo=False, limit_ks=(2,)),
}


def multibeam_setting(quick: bool, full_multibeam: bool = False) -> str:
    """The MULTIBEAM key of a run: "full" with ``full_multibeam``, else "quick" or "default"."""
    return "full" if full_multibeam else ("quick" if quick else "default")


def run_experiments(mdp, *, quick: bool, seed: int, only=None, log=log_progress, multibeam: bool = False,
                    full_multibeam: bool = False):
    """Run the experiments (all, or the names in ``only``; "multibeam" only
    when ``multibeam``, its full sweep with ``full_multibeam``, see
    MULTIBEAM); yields (name, records, facts) after each."""
    s = SETTINGS[bool(quick)]
    plan = [
        ("E1", lambda: E.e1_gibbs(mdp, seed=seed, num_perturbations=s["perturbations"])),
        ("E2", lambda: E.e2_evaluators(mdp, ns=s["enum_ns"], quad_ns=s["quad_ns"], seed=seed)),
        ("E3", lambda: E.e3_monte_carlo(mdp, ns=s["mc_ns"], num_runs=s["mc_runs"], seed=seed)),
        ("E4", lambda: E.e4_convergence(mdp, top=s["top"])),
        ("E5", lambda: E.e5_threshold(mdp, ns=list(s["threshold_ns"]), num_runs=s["threshold_mc_runs"], seed=seed)),
        ("E6", lambda: E.e6_best_of_n(mdp, ns=s["bon_ns"], num_runs=s["mc_runs"], seed=seed)),
        ("E7", lambda: E.e7_smc(mdp, Ns=list(s["smc_Ns"]), num_runs=s["smc_runs"], seed=seed,
                                check_runs=s["smc_runs"], extend_factor=E.SMC_EXTEND_FACTOR,
                                budget_s=s["smc_budget_s"])),
        ("E8", lambda: E.e8_block_vs_sequence(mdp, ns=E.powers_of_two(s["seq_top"]))),
        ("E10", lambda: E.e10_hard_prm(mdp)),
        ("gaps", lambda: E.objective_gaps(mdp, ns=E.powers_of_two(s["gap_top"]))),
    ]
    if multibeam:
        plan.append(("multibeam", lambda: E.multibeam(mdp, seed=seed, **MULTIBEAM[multibeam_setting(quick, full_multibeam)])))
    records, facts = [], {}
    for name, fn in plan:
        if only is not None and name not in only:
            continue
        t0 = time.perf_counter()
        recs, f = fn()
        records += recs
        facts[name] = f
        log(f"[{name}] done in {time.perf_counter() - t0:.1f} s")
        yield name, records, facts


def run_converge(out_dir="out/converge", *, quick: bool = False, seed: int = 0, instance: dict | None = None,
                 full_multibeam: bool = False) -> dict:
    """Run E1-E10 and the multi-beam experiment on the default instance
    (THEORY.md section 8; ``instance`` overrides its K, H, beta, draft_noise,
    reward_kind) and write results.

    The multi-beam experiment is by default a reduced Monte Carlo sweep
    (MULTIBEAM["default"]: k = 2, 4 at n = 4, 16, 64, 50,000 runs each,
    with the exact k = 1 law and the exact n -> inf limit of k = 2; seconds);
    ``full_multibeam`` runs the sweep of docs/multibeam.md (n = 4..128, k up
    to 16 at totals 16 and 64, beam search with k beams and k = 1 by Monte
    Carlo, 200,000 runs each; minutes).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(instance or {})
    instance = dict(E.DEFAULT_INSTANCE, **overrides, seed=seed)
    mdp = E.default_mdp(seed, **overrides)
    setting = multibeam_setting(quick, full_multibeam)
    log_progress(f"specs theory converge: instance {instance}, {'quick' if quick else 'full'} run, "
                 f"{setting} multi-beam sweep -> {out}")
    t0 = time.perf_counter()
    result = {}
    for _, records, facts in run_experiments(mdp, quick=quick, seed=seed, multibeam=True, full_multibeam=full_multibeam):
        result = dict(instance=instance, quick=quick, multibeam_setting=setting,
                      asymptotic_constant=facts.get("E4", {}).get("c"), facts=facts, records=records)
        _write(out, result)
    result["seconds"] = time.perf_counter() - t0
    _write(out, result)
    plots = plot_all(result, out)
    print(table(result))
    print(f"\nwrote {out / 'converge.json'}, {out / 'converge.csv'}, " + ", ".join(str(p) for p in plots))
    print(f"total {result['seconds']:.1f} s")
    return result


def _write(out: Path, result: dict) -> None:
    tmp = out / "converge.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=float))
    tmp.replace(out / "converge.json")
    records = result["records"]
    fields = []
    for r in records:
        fields += [k for k in r if k not in fields and not isinstance(r[k], (list, dict))]
    with open(out / "converge.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)


def _fmt(x, spec=".3e"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(result: dict) -> str:
    """The compact table: SPECS convergence (E4), then one line per other experiment."""
    rows = [r for r in result["records"] if r["experiment"] == "E4" and r["method"] == "specs"]
    f = result["facts"]
    lines = [f"asymptotic constant c = {_fmt(result['asymptotic_constant'], '.4f')}",
             f"{'n':>6} {'KL(pi*||p_n)':>13} {'KL(p_n||pi*)':>13} {'TV':>9} {'n^2 KL/c':>9} "
             f"{'Thm C1':>10} {'Prop D':>10} {'gap J':>10}"]
    for r in rows:
        lines.append(f"{r['n']:>6} {_fmt(r['kl_forward']):>13} {_fmt(r['kl_reverse']):>13} {_fmt(r['tv'], '.4f'):>9} "
                     f"{_fmt(r['n2_kl_over_c'], '.3f'):>9} {_fmt(r['bound']):>10} {_fmt(r['prop_d_forward']):>10} "
                     f"{_fmt(r['objective_gap']):>10}")
    if "E4" in f:
        e4 = f["E4"]
        lines.append(f"local slope at n={e4['ns'][-1]}: {e4['final_local_slope']:.3f}; "
                     f"bound slope (large n): {_fmt(e4['bound_slope_large_n'], '.3f')}")
    if "E1" in f:
        lines.append(f"E1  J(pi*) = V*(s0) = {f['E1']['J_star']:.5f}; max J(pi) - J(pi*) over "
                     f"{f['E1']['num_compared']} policies = {f['E1']['max_J_minus_J_star']:.2e}")
    if "E2" in f:
        lines.append(f"E2  trapezoid vs enumeration {f['E2']['trapezoid_vs_enumeration']:.1e}, "
                     f"vs quad {f['E2']['trapezoid_vs_quad']:.1e}")
    if "E3" in f:
        lines.append(f"E3  MC vs exact GOF p-values {', '.join(f'{p:.2f}' for p in f['E3']['gof_pvalues'])}")
    if "E5" in f:
        for s in f["E5"]["slopes"]:
            lines.append(f"E5  tau={s['tau']:.3f}: forward-KL slope predicted {s['predicted']:.4f}, "
                         f"measured {s['measured']:.4f} (n = {s.get('n', 2048)}..{2 * s.get('n', 2048)})")
    if "E7" in f:
        lines.append(f"E7  SMC mean Zhat {', '.join(f'{z:.4f}' for z in f['E7']['Z_mean'])}; "
                     f"Var slope {_fmt(f['E7']['var_slope'], '.2f')}")
    if "multibeam" in f:
        for sl in f["multibeam"]["slopes"]:
            if sl["slope"] is not None and sl["divergence"] == "kl_forward":
                lines.append(f"multibeam k={sl['k']} {sl['method']}: KL(pi*||p) slope {sl['slope']:.2f} (n >= 16), "
                             f"KL = {sl['last'][1]:.2e} at n = {sl['last'][0]}")
        for lim in f["multibeam"].get("limits", []):
            if lim["method"] == "specs_best_limit":
                lines.append(f"multibeam k={lim['k']} specs_best, n -> inf (exact): KL(pi*||p) = {lim['kl_forward']:.2e}, "
                             f"gap J = {lim['objective_gap']:.4f}")
    if "E10" in f:
        lines.append(f"E10 hard PRM: KL(pi*||limit) = {f['E10']['kl']:.2e}, J = {f['E10']['J_hard']:.5f} "
                     f"< J* = {f['E10']['J_star']:.5f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# plots


def plot_all(result: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result["records"]
    paths = []

    def by(exp, method):
        return [r for r in recs if r["experiment"] == exp and r["method"] == method]

    def by_exp(exp):
        return [r for r in recs if r["experiment"] == exp]

    # 1. KL vs n with bounds
    rows = by("E4", "specs")
    if rows:
        n = np.array([r["n"] for r in rows], float)
        fig, ax = plt.subplots(figsize=(7, 5))
        ax.loglog(n, [r["kl_forward"] for r in rows], "o-", label="KL(pi* || SPECS_n) (exact)")
        ax.loglog(n, [r["kl_reverse"] for r in rows], "s--", ms=4, label="KL(SPECS_n || pi*) (exact)")
        ax.loglog(n, [r["bound"] for r in rows], "-", label="Theorem C1: sum E log(1 + chi2_h/n)")
        ax.loglog(n, [r["bound_coverage"] for r in rows], ":", label="H log(1 + (C-1)/n)")
        ax.loglog(n, [r["prop_d_forward"] for r in rows], "-.", label="Prop D (forward)")
        ax.loglog(n, [r["asymptote"] for r in rows], "k--", lw=1, label=f"c/n^2, c = {result['asymptotic_constant']:.3g}")
        ax.set_xlabel("n (draft candidates per block)")
        ax.set_ylabel("KL divergence (nats)")
        ax.set_title("SPECS converges to pi*: KL ~ c/n^2; bounds decay as 1/n")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / "kl_vs_n.png"))

    # 2. objective gap vs n
    gaps = [r for r in recs if r["experiment"] == "gaps"]
    smc = by("E7", "smc_mc")
    if gaps:
        fig, ax = plt.subplots(figsize=(7, 5))
        for method in dict.fromkeys(r["method"] for r in gaps):
            rr = [r for r in gaps if r["method"] == method]
            ax.loglog([r["n"] for r in rr], [max(r["objective_gap"], 1e-16) for r in rr], "o-", ms=4, label=method)
        if smc:
            ax.loglog([r["n"] for r in smc], [max(r["objective_gap"], 1e-16) for r in smc], "x--",
                      label="smc (Monte Carlo, N particles; flattens at its sampling noise)")
        ax.set_xlabel("n (candidates per block) or N (particles)")
        ax.set_ylabel("J(pi*) - J(pi)  (reward units)")
        ax.set_title("KL-regularised objective gap")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / "objective_gap.png"))

    # 3. threshold sweep
    thr = by("E5", "specs_threshold")
    if thr:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
        taus = sorted(set(r["tau"] for r in thr))
        for n in sorted(set(r["n"] for r in thr)):
            rr = sorted((r for r in thr if r["n"] == n), key=lambda r: r["tau"])
            a1.plot([r["tau"] for r in rr], [r["expected_deferrals"] for r in rr], "o-", ms=4, label=f"n={n}")
        a1.set_xlabel("threshold tau on Q*")
        a1.set_ylabel("expected deferred blocks per response")
        a1.set_title("Deferral rate")
        a1.legend(fontsize=8)
        a1.grid(alpha=0.3)
        for tau in taus:
            rr = sorted((r for r in thr if r["tau"] == tau), key=lambda r: r["n"])
            line = a2.semilogy([r["n"] for r in rr], [max(r["kl_forward"], 1e-16) for r in rr], "o-", ms=4,
                               label=f"tau={tau:.2f}: KL(pi*||p_n)")
            a2.semilogy([r["n"] for r in rr], [max(r["kl_limit"], 1e-16) for r in rr], "--",
                        color=line[0].get_color(), label=f"tau={tau:.2f}: KL(pi*_tau||p_n)")
        a2.set_xlabel("n")
        a2.set_ylabel("KL (nats)")
        a2.set_title("A threshold truncates: p_n -> pi*_tau, not pi*")
        a2.legend(fontsize=6, ncol=2)
        a2.grid(alpha=0.3)
        paths.append(_save(fig, out / "threshold.png"))

    # 4. SMC vs SPECS
    if smc:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
        N = [r["n"] for r in smc]
        a1.loglog(N, [max(r["chi2_to_pi_star"], 1e-6) for r in smc], "x--", label="SMC (Monte Carlo, debiased)")
        a1.loglog(N, [r["specs_chi2_to_pi_star"] for r in smc], "o-", label="SPECS, n = N (exact)")
        a1.loglog(N, [r["chi2_noise_floor"] for r in smc], ":", color="gray", label="MC noise level")
        a1.set_xlabel("N particles / n candidates")
        a1.set_ylabel("chi2(p || pi*)")
        a1.set_title("SMC and SPECS approach pi* alike")
        a1.legend(fontsize=8)
        a1.grid(True, which="both", alpha=0.3)
        a2.errorbar(N, [r["Z_mean"] for r in smc], yerr=[4 * r["Z_se"] for r in smc], fmt="o", capsize=3)
        a2.axhline(1.0, color="k", lw=1)
        a2.set_xscale("log")
        a2.set_xlabel("N particles")
        a2.set_ylabel("mean Zhat (+- 4 SE)")
        a2.set_title("Zhat is unbiased for Z = 1")
        a2.grid(alpha=0.3)
        paths.append(_save(fig, out / "smc_vs_specs.png"))
    mb = by_exp("multibeam")
    if mb:
        budgets = [b["total"] for b in result["facts"]["multibeam"]["budgets"]]
        paths.append(plot_multibeam(mb, out / "multibeam.png", budgets))
    return paths


def plot_multibeam(records, path: Path, budgets=()) -> Path:
    """KL(pi*||p) and the objective gap vs n at fixed k (with the exact
    n -> inf limit of the best-reward beam where recorded), and the gap vs k
    at a fixed total of candidates per block (docs/multibeam.md)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    styles = {"specs_k1_exact": ("k-o", "SPECS k=1 (exact)"), "beam_exact": ("C7-s", "beam k=1 (exact)")}
    # k > 1 swept over n (the budget-only k have two points: right panel)
    ks = sorted(k for k in {r["k"] for r in records if r["k"] > 1}
                if len({r["n"] for r in records if r["k"] == k and r["method"] == "specs_uniform"}) >= 3)
    for j, k in enumerate(ks):
        styles[f"specs_uniform/{k}"] = (f"C{j}-o", f"SPECS k={k}, uniform beam")
        styles[f"specs_best/{k}"] = (f"C{j}--^", f"SPECS k={k}, best-reward beam")
        styles[f"beam_best/{k}"] = (f"C{j}:x", f"beam k={k}, best beam")
    k_of = {k: [r for r in records if r["k"] == k] for k in {r["k"] for r in records}}
    for name, (fmt, label) in styles.items():
        method, _, k = name.partition("/")
        rr = [r for r in (k_of[int(k)] if k else k_of[1]) if r["method"] == method]
        by_n = {}
        for r in rr:
            by_n[r["n"]] = r
        rr = [by_n[n] for n in sorted(by_n)]
        if not rr:
            continue
        n = [r["n"] for r in rr]
        floor = 1e-7
        axes[0].loglog(n, [max(r["kl_forward"], floor) for r in rr], fmt, ms=4, label=label)
        axes[1].loglog(n, [max(r["objective_gap"], floor) for r in rr], fmt, ms=4, label=label)
    for j, k in enumerate(ks):  # exact n -> inf limit of the best-reward beam (experiments.multibeam_limit)
        for r in (r for r in k_of[k] if r["method"] == "specs_best_limit"):
            for a, name in zip(axes[:2], ("kl_forward", "objective_gap")):
                a.axhline(r[name], color=f"C{j}", lw=1, ls=(0, (1, 3)),
                          label=f"SPECS k={k}, best-reward beam, n -> inf (exact)" if name == "kl_forward" else None)
    axes[0].set_ylabel("KL(pi* || p)  (nats)")
    axes[1].set_ylabel("J(pi*) - J(p) = beta KL(p || pi*)")
    for a in axes[:2]:
        a.set_xscale("log", base=2)
        a.set_xlabel("n (candidates per block, all beams together)")
        a.grid(True, which="both", alpha=0.3)
    axes[0].set_title("Multi-beam SPECS: distance to pi* vs n")
    axes[1].set_title("KL-regularised objective gap vs n")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    for b_i, b in enumerate(budgets):
        for method, fmt in (("specs_uniform", "-o"), ("specs_best", "--^"), ("beam_best", ":x")):
            rr = sorted((r for r in records if r["n"] == b and (r["method"] == method or
                         (r["k"] == 1 and r["method"] == {"specs_uniform": "specs_k1_exact", "specs_best": "specs_k1_exact",
                                                          "beam_best": "beam_exact"}[method]))), key=lambda r: r["k"])
            if rr:
                axes[2].loglog([r["k"] for r in rr], [max(r["objective_gap"], 1e-7) for r in rr], f"C{b_i}{fmt}",
                               ms=4, label=f"{method} (n = {b} in total)")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("k beams (n // k candidates each)")
    axes[2].set_ylabel("J(pi*) - J(p)")
    axes[2].set_title("At a fixed total n per block")
    axes[2].grid(True, which="both", alpha=0.3)
    if budgets:
        axes[2].legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
