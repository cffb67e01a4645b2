"""`specs theory verify`: every claim of THEORY.md section 5 as PASS/FAIL.

Each claim is checked on a random instance (``--K --H --beta --draft-noise
--reward-kind --seed``) and printed with the measured number and the
tolerance it is held to; ``verify.json`` records them all. The exit status is
non-zero when any claim fails.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax.numpy as jnp

from specs_theory import bounds, exact, metrics
from specs_theory import experiments as E
from specs_theory.converge import run_experiments

__all__ = ["Claim", "check_claims", "run_verify"]

GOF_MIN = 1e-4  # pooled goodness-of-fit p-value floor (THEORY.md I14)


@dataclass(frozen=True)
class Claim:
    experiment: str
    claim: str
    measured: str
    tolerance: str
    passed: bool


def _claim(experiment, claim, measured, tolerance, passed) -> Claim:
    return Claim(experiment, claim, measured, tolerance, bool(passed))


def check_claims(mdp, facts: dict) -> list[Claim]:
    """The claims of THEORY.md section 5 from the experiments' facts."""
    out = []
    add = out.append
    if "E1" in facts:
        f = facts["E1"]
        add(_claim("E1", "Prop 1: prod_h pi*(y_h|s) equals pi_t exp(r/beta)/Z", f"{f['product_vs_gibbs']:.1e}",
                   "<= 1e-12", f["product_vs_gibbs"] <= 1e-12))
        err = max(abs(f["J_star"] - f["V0"]), abs(f["J_star"] - f["beta_logZ"]))
        add(_claim("E1", "Prop 2: J(pi*) = V*(s0) = beta log Z", f"{err:.1e}", "<= 1e-12", err <= 1e-12))
        add(_claim("E1", f"Prop 2: J(pi) < J(pi*) for {f['num_compared']} other policies",
                   f"max J - J* = {f['max_J_minus_J_star']:.2e}", "< 0", f["max_J_minus_J_star"] < 0))
        add(_claim("E1", "Prop 2: J(pi*) - J(pi) = beta KL(pi||pi*)", f"{f['identity_error']:.1e}", "<= 1e-12",
                   f["identity_error"] <= 1e-12))
    if "E2" in facts:
        f = facts["E2"]
        add(_claim("E2", f"Theorem A: log-t trapezoid = enumeration (n in {f['enumeration_ns']})",
                   f"{f['trapezoid_vs_enumeration']:.1e}", "<= 3e-13", f["trapezoid_vs_enumeration"] <= 3e-13))
        add(_claim("E2", f"Theorem A: trapezoid = rescaled quad (n in {f['quad_ns']})",
                   f"{f['trapezoid_vs_quad']:.1e}", "<= 1e-10", f["trapezoid_vs_quad"] <= 1e-10))
        add(_claim("E2", "Corollary A1: sum SIR_n = 1 - q0^n (with zero weights)", f"{f['mass_error']:.1e}",
                   "<= 1e-12", f["mass_error"] <= 1e-12))
    if "E3" in facts:
        f = facts["E3"]
        add(_claim("E3", f"exact SPECS law = Monte Carlo (n in {f['ns']})", f"min GOF p = {f['min_gof_pvalue']:.3f}",
                   f"> {GOF_MIN:g}", f["min_gof_pvalue"] > GOF_MIN))
    if "E4" in facts:
        f = facts["E4"]
        add(_claim("E4", "Theorem B pointwise lower bound, every state and n", f"max violation {f['theorem_b_max_violation']:.1e}",
                   "<= 1e-12", f["theorem_b_max_violation"] <= 1e-12))
        add(_claim("E4", "Theorem C1: KL(pi*||SPECS_n) <= sum_h E log(1 + chi2_h/n)", f"min slack {f['theorem_c_min_slack']:.2e}",
                   ">= -1e-12", f["theorem_c_min_slack"] >= -1e-12))
        s = f["bound_slope_large_n"]
        add(_claim("E4", "Theorem C1 bound slope once n >= 10 max chi2_h", "n/a" if s is None else f"{s:.3f}",
                   "in [-1.05, -0.95]", s is not None and -1.05 <= s <= -0.95))
        add(_claim("E4", "Prop D two-sided bounds hold at every n", str(f["prop_d_holds"]), "True", f["prop_d_holds"]))
        add(_claim("E4", f"Prop E: local KL slope at n = {f['ns'][-1]}", f"{f['final_local_slope']:.3f}",
                   "in [-2.1, -1.9]", -2.1 <= f["final_local_slope"] <= -1.9))
        add(_claim("E4", f"Prop E: n^2 KL / c at n = {f['ns'][-1]} (c = {f['c']:.4g})", f"{f['n2_kl_over_c_final']:.4f}",
                   "in [0.9, 1.1]", 0.9 <= f["n2_kl_over_c_final"] <= 1.1))
        add(_claim("E4", "objective gap = beta KL(SPECS_n || pi*) at every n", f"{f['max_identity_error']:.1e}",
                   "<= 1e-12", f["max_identity_error"] <= 1e-12))
        chain = _chain_rule_error(mdp)
        add(_claim("E4", "I13: KL chain rule (sum of per-depth terms = sequence KL)", f"{chain:.1e}", "<= 1e-12",
                   chain <= 1e-12))
    if "E5" in facts:
        f = facts["E5"]
        mc = f["monte_carlo"]
        pmin = min(m["gof_pvalue"] for m in mc)
        zmax = max(m["rho_z"] for m in mc)
        ex = max(mc, key=lambda m: m["rho_exact"] * (1 - m["rho_exact"]))
        add(_claim("E5", f"threshold/deferral law = Monte Carlo ({len(mc)} cases)", f"min GOF p = {pmin:.3f}",
                   f"> {GOF_MIN:g}", pmin > GOF_MIN))
        add(_claim("E5", "deferral probability rho_def = (1-a)^n matches Monte Carlo",
                   f"max |z| = {zmax:.2f} (e.g. n={ex['n']}: {ex['rho_exact']:.4f} vs {ex['rho_mc']:.4f})", "<= 4.5 SE",
                   zmax <= 4.5))
        add(_claim("E5", "I10: tau >= max g gives T_n exactly, rho_def = 1", f"{f['always_defer_error']:.1e}",
                   "<= 1e-12", f["always_defer_error"] <= 1e-12))
        add(_claim("E5", "I10: tau < min g gives SIR_n[pi_d, w] exactly", f"{f['never_defer_error']:.1e}",
                   "<= 1e-12", f["never_defer_error"] <= 1e-12))
        worst = max((abs(s["measured"] - s["predicted"]) for s in f["slopes"]), default=0.0)
        text = "; ".join(f"{s['predicted']:.4f} vs {s['measured']:.4f}" for s in f["slopes"])
        add(_claim("E5", "forward-KL slope under a threshold (n = 2048..4096) matches the prediction", text,
                   "|diff| <= 1e-3", worst <= 1e-3))
        tb = _threshold_bound_slack(mdp, f["taus"])
        add(_claim("E5", "threshold limit bound KL(pi*_tau || p_n) <= sum E log(1 + chi2_tau/n)",
                   f"min slack {tb:.2e}", ">= -1e-12", tb >= -1e-12))
    if "E6" in facts:
        f = facts["E6"]
        add(_claim("E6", "BoN with ties: hand case n = 2 -> (.07,.375,.075,.09,.3,.09)", f"{f['hand_case_error']:.1e}",
                   "<= 1e-12", f["hand_case_error"] <= 1e-12))
        add(_claim("E6", "BoN tends to q restricted to the top class", f"{f['limit_error']:.1e}", "<= 1e-12",
                   f["limit_error"] <= 1e-12))
        add(_claim("E6", "best-of-n exact law = Monte Carlo", f"min GOF p = {f['min_gof_pvalue']:.3f}",
                   f"> {GOF_MIN:g}", f["min_gof_pvalue"] > GOF_MIN))
    if "E7" in facts:
        f = facts["E7"]
        worst = max(abs(m - 1) / s for m, s in zip(f["Z_mean"], f["Z_se"]))
        add(_claim("E7", "SMC: E[Zhat] = 1 at every N", f"max |mean - 1| / SE = {worst:.2f}", "<= 4",
                   f["Z_within_4se"]))
        vs = f["var_slope"]
        add(_claim("E7", "SMC: Var(Zhat) = O(1/N) (slope over the largest N)", "n/a" if vs is None else f"slope {vs:.2f}", "in [-1.3, -0.7]",
                   vs is not None and -1.3 <= vs <= -0.7))
        add(_claim("E7", "SMC: chi2(p_N || pi*) decreases in N (Monte Carlo, debiased)",
                   ", ".join(f"{c:.2e}" for c in f["chi2"]), "decreasing", f["chi2_decreasing"]))
        add(_claim("E7", "SMC: N = 1 gives pi_d,seq", f"GOF p = {f['gof_N1']:.3f}", f"> {GOF_MIN:g}",
                   f["gof_N1"] > GOF_MIN))
        add(_claim("E7", "SMC: H = 1 gives SIR_N (Theorem A)", f"GOF p = {f['gof_H1']:.3f}", f"> {GOF_MIN:g}",
                   f["gof_H1"] > GOF_MIN))
    if "E8" in facts:
        f = facts["E8"]
        rel = abs(f["sequence_chi2"] - f["sequence_chi2_direct"]) / max(f["sequence_chi2_direct"], 1e-300)
        add(_claim("E8", "sequence-level chi2 recursion = direct value", f"rel. diff {rel:.1e}", "<= 1e-9", rel <= 1e-9))
        # Not universal at small n (sequence-level SIR can be closer at n = 4 on
        # some instances); the claim is about the regime n >= 64.
        rows = [r for r in f["rows"] if r["n"] >= 64]
        ok = all(r["block"] < r["sequence"] for r in rows)
        text = "; ".join(f"n={r['n']}: {r['block']:.2e} < {r['sequence']:.2e}" for r in rows[-2:])
        add(_claim("E8", "block-level SPECS KL < sequence-level SIR KL at equal n (n >= 64)", text, "all n", ok))
    if "E10" in facts:
        f = facts["E10"]
        add(_claim("E10", "hard PRM limit differs from pi*: KL(pi*||limit) > 0", f"{f['kl']:.2e}", "> 1e-10",
                   f["kl"] > 1e-10))
        add(_claim("E10", "hard PRM limit has a lower objective", f"J = {f['J_hard']:.6f} vs J* = {f['J_star']:.6f}",
                   "J < J*", f["J_hard"] < f["J_star"]))
    return out


def _chain_rule_error(mdp) -> float:
    lstar = exact.optimal_policy(mdp)
    err = 0.0
    for n in (1, 4, 64):
        pol = exact.specs_policy(mdp, n).logp
        err = max(err, abs(float(jnp.sum(metrics.chain_rule_kl(lstar, pol)) - metrics.sequence_kl(lstar, pol))))
    return err


def _threshold_bound_slack(mdp, taus) -> float:
    worst = math.inf
    for tau in taus:
        limit = exact.sequence_logprobs(mdp, bounds.threshold_limit_policy(mdp, tau))
        for n in (1, 4, 32):
            seq = exact.sequence_logprobs(mdp, exact.specs_policy(mdp, n, threshold=tau).logp)
            worst = min(worst, float(bounds.threshold_bound(mdp, tau, n)) - float(metrics.kl(limit, seq)))
    return worst


def run_verify(out_dir="out/verify", *, K=5, H=3, beta=0.5, draft_noise=1.0, reward_kind="uniform", seed=0,
               quick=False) -> dict:
    """Check every claim on ``random_mdp(K, H, beta, draft_noise, reward_kind)`` with ``seed``."""
    for name, value, ok in (("K", K, K >= 2), ("H", H, H >= 1), ("beta", beta, beta > 0 and math.isfinite(beta)),
                            ("draft_noise", draft_noise, draft_noise >= 0 and math.isfinite(draft_noise))):
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')} is out of range: {value!r}")
    if K**H > 4096:
        raise ValueError(f"K**H = {K**H} sequences is too many for exact laws and Monte Carlo histograms (max 4096)")
    instance = dict(K=K, H=H, beta=beta, reward_range=1.0, draft_noise=draft_noise, reward_kind=reward_kind, seed=seed)
    mdp = E.default_mdp(seed, K=K, H=H, beta=beta, draft_noise=draft_noise, reward_kind=reward_kind)
    print(f"specs theory verify: instance {instance}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    facts = {}
    for _, _, facts in run_experiments(mdp, quick=quick, seed=seed):
        pass
    # Prop E needs n past the crossover: extend the sweep for hard instances.
    c = facts["E4"]["c"]
    if c > 200:
        for top in (16384, 65536):
            _, facts["E4"] = E.e4_convergence(mdp, top=top)
            if -2.1 <= facts["E4"]["final_local_slope"] <= -1.9:
                break
    claims = check_claims(mdp, facts)
    passed = all(c.passed for c in claims)
    width = max(len(c.claim) for c in claims)
    for c in claims:
        print(f"{'PASS' if c.passed else 'FAIL'}  {c.experiment:4s} {c.claim:<{width}}  {c.measured}  ({c.tolerance})")
    n_fail = sum(not c.passed for c in claims)
    print(f"\n{len(claims) - n_fail}/{len(claims)} claims passed in {time.perf_counter() - t0:.0f} s")
    report = dict(instance=instance, passed=passed, claims=[asdict(c) for c in claims], facts=facts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verify.json").write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {out / 'verify.json'}")
    return report
