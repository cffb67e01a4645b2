"""`specs theory verify`: every claim of THEORY.md section 5 as PASS, FAIL or NOT REACHED.

Each claim is checked on a random instance (``--K --H --beta --draft-noise
--reward-kind --seed``) and printed with the measured number and the
tolerance it is held to; ``verify.json`` records them all.

Three verdicts:

* PASS: the measured number meets the tolerance.
* FAIL: it does not, and the claim applies where it was measured: an exact
  identity or inequality, or an asymptotic claim measured inside its regime.
* NOT REACHED: an asymptotic claim whose measured number misses the
  tolerance at the largest n (or N) tried, which is still outside the
  claim's regime; the line gives the regime's entry condition and the n it
  needs, computed from the instance's own constants. Not a failure.

The exit status is non-zero only on FAIL. The regime rules (README,
"Checking the theorems"): Prop E needs n >= 1000 C (C = max pi*/pi_d) and the
exact law is evaluated there directly, up to n = 2^40 within a time budget
(`experiments.e4_asymptotics`); the threshold slope (E5) is measured at
n = max(2048, 1000 C); the Theorem C1 bound's slope is taken over
[n_C, 16 n_C], n_C = 10 max chi2_h, in closed form; the SMC variance slope
and N Var(Zhat) / sigma2 (sigma2 = sum_h E_{pi*} chi2_h, the limit of
N Var(Zhat)) use the N >= 10 sigma2, the slope needs two of them (when
they lie within 4x of the largest N of the grid, the grid is extended by
doublings, within a time budget: `experiments.e7_smc`); the E[Zhat] = 1
z-test uses the N >= sigma2.
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
from specs_theory.converge import log_progress, run_experiments

__all__ = ["Claim", "PASS", "FAIL", "NOT_REACHED", "collect_facts", "check_claims", "run_verify"]

GOF_MIN = 1e-4  # pooled goodness-of-fit p-value floor (THEORY.md I14)
PASS, FAIL, NOT_REACHED = "PASS", "FAIL", "NOT REACHED"
ASYMPTOTIC_BUDGET_S = 120.0  # seconds for extending n towards Prop E's regime


@dataclass(frozen=True)
class Claim:
    experiment: str
    claim: str
    measured: str
    tolerance: str
    verdict: str
    needed: str | None = None  # NOT REACHED: the regime's entry condition and the n or N it needs

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    @property
    def failed(self) -> bool:
        return self.verdict == FAIL


def _claim(experiment, claim, measured, tolerance, passed) -> Claim:
    return Claim(experiment, claim, measured, tolerance, PASS if passed else FAIL)


def _asymptotic(experiment, claim, measured, tolerance, ok, reached, needed) -> Claim:
    """An asymptotic claim: PASS if ``ok``; else FAIL inside the regime
    (``reached``) and NOT REACHED outside it, with ``needed``."""
    if ok:
        return Claim(experiment, claim, measured, tolerance, PASS)
    if reached:
        return Claim(experiment, claim, measured, tolerance, FAIL)
    return Claim(experiment, claim, measured, tolerance, NOT_REACHED, needed)


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
        far = facts.get("E4_asymptotic")
        slack = f["theorem_c_min_slack"] if far is None else min(f["theorem_c_min_slack"], far["min_bound_slack"])
        top = f["ns"][-1] if far is None else far["n_final"]
        add(_claim("E4", f"Theorem C1: KL(pi*||SPECS_n) <= sum_h E log(1 + chi2_h/n), n <= {top:.3g}",
                   f"min slack {slack:.2e}", ">= -1e-12", slack >= -1e-12))
        if far is None:
            s_ = f["bound_slope_large_n"]
            add(_asymptotic("E4", "Theorem C1 bound slope once n >= 10 max chi2_h", "n/a" if s_ is None else f"{s_:.3f}",
                            "in [-1.05, -0.95]", s_ is not None and -1.05 <= s_ <= -0.95, s_ is not None,
                            "n >= 10 max chi2_h"))
        else:
            s_ = far["bound_slope"]
            ns_ = far["bound_ns"]
            add(_claim("E4", "Theorem C1 bound slope once n >= 10 max chi2_h",
                       f"{s_:.3f} over n = {ns_[0]:.3g}..{ns_[-1]:.3g}", "in [-1.05, -0.95]", -1.05 <= s_ <= -0.95))
        add(_claim("E4", "Prop D two-sided bounds hold at every n", str(f["prop_d_holds"]), "True", f["prop_d_holds"]))
        if far is None:
            n_, slope, ratio, reached, need = f["ns"][-1], f["final_local_slope"], f["n2_kl_over_c_final"], False, "?"
        else:
            n_, slope, ratio = far["n_final"], far["final_local_slope"], far["n2_kl_over_c_final"]
            reached = far["reached"]
            need = f"regime n >= {far['entry_factor']:g} C = {far['n_entry']:.3g} (C = max pi*/pi_d = {far['C']:.3g})"
            add(_claim("E4", f"Corollary A1: every state's SPECS law sums to 1 (n <= {n_:.3g})",
                       f"{far['max_mass_error']:.1e}", "<= 1e-12", far["max_mass_error"] <= 1e-12))
        add(_asymptotic("E4", f"Prop E: local KL slope at n = {n_:.3g}", f"{slope:.3f}", "in [-2.1, -1.9]",
                        -2.1 <= slope <= -1.9, reached, need))
        add(_asymptotic("E4", f"Prop E: n^2 KL / c at n = {n_:.3g} (c = {f['c']:.4g})", f"{ratio:.4f}", "in [0.9, 1.1]",
                        0.9 <= ratio <= 1.1, reached, need))
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
        n1 = f["slopes"][0].get("n", 2048) if f["slopes"] else 2048
        reached = all(s_.get("reached", True) for s_ in f["slopes"])
        need = (f"regime n >= {E.PROP_E_ENTRY:g} C = {f['slopes'][0].get('n_entry', 0):.3g}" if f["slopes"] else None)
        add(_asymptotic("E5", f"forward-KL slope under a threshold (n = {n1:.3g}..{2 * n1:.3g}) matches the prediction",
                        text, "|diff| <= 1e-3", worst <= 1e-3, reached, need))
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
        # The z-test needs a trustworthy standard error: for N << sigma2 Zhat is
        # heavy-tailed (rare huge values carry the mean), the sample mean sits
        # below 1 and its SE is underestimated. Test the N >= sigma2
        # (Var(Zhat) ~ sigma2/N <= ~1).
        zs = [(N, abs(m - 1) / s) for N, m, s in zip(f["Ns"], f["Z_mean"], f["Z_se"]) if N >= f["sigma2"]]
        if zs:
            worst = max(z for _, z in zs)
            add(_claim("E7", "SMC: E[Zhat] = 1 at every N (z-test at N >= sigma2)",
                       f"max |mean - 1| / SE = {worst:.2f} over N = {zs[0][0]}..{zs[-1][0]}", "<= 4", worst <= 4))
        else:
            worst = max(abs(m - 1) / s for m, s in zip(f["Z_mean"], f["Z_se"]))
            add(_asymptotic("E7", "SMC: E[Zhat] = 1 at every N (z-test at N >= sigma2)",
                            f"max |mean - 1| / SE = {worst:.2f} at N < sigma2 (heavy tails: SE too small)", "<= 4", worst <= 4, False,
                            f"N >= sigma2 = {f['sigma2']:.3g} for a valid standard error"))
        vs = f["var_slope"]
        if vs is None:
            measured = f"slope {E.loglog_slope(f['Ns'][-2:], f['Z_var'][-2:]):.2f} over N = {f['Ns'][-2]}..{f['Ns'][-1]} (outside the regime)"
        else:
            Ns_ = f["var_slope_Ns"]
            measured = (f"slope {vs:.2f} over N = {Ns_[0]}..{Ns_[-1]}; N Var = {Ns_[-1] * f['Z_var'][-1]:.3g} "
                        f"(limit sigma2 = {f['sigma2']:.3g})")
        skipped = f.get("skipped_Ns") or []
        left_out = f"; N = {', '.join(map(str, skipped))} left out for the time budget" if skipped else ""
        add(_asymptotic("E7", "SMC: Var(Zhat) = O(1/N) (fit over N >= 10 sigma2)", measured, "in [-1.3, -0.7]",
                        vs is not None and -1.3 <= vs <= -0.7, vs is not None,
                        f"two N >= 10 sigma2 = {f['N_entry']:.3g} (sigma2 = sum_h E chi2_h = {f['sigma2']:.3g})"
                        + left_out))
        # The constant: N Var(Zhat) -> sigma2 (asymptotic variance of a perfectly
        # twisted SMC with multinomial resampling every block: Q_{p,H}(1) = G_p).
        big = [(N, v) for N, v in zip(f["Ns"], f["Z_var"]) if N >= f["N_entry"]]
        ratio = big[-1][0] * big[-1][1] / f["sigma2"] if big else f["Ns"][-1] * f["Z_var"][-1] / f["sigma2"]
        add(_asymptotic("E7", "SMC: N Var(Zhat) / sigma2 -> 1, sigma2 = sum_h E_{pi*} chi2_h",
                        f"{ratio:.3f} at N = {big[-1][0] if big else f['Ns'][-1]}", "in [0.8, 1.25]",
                        0.8 <= ratio <= 1.25, bool(big), f"N >= 10 sigma2 = {f['N_entry']:.3g}" + left_out))
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
        # THEORY.md 3.6: C_h(s) = sum_y pi*^2/pi_d C_{h+1}(s o y) >= (1 + chi2_h(s)) min C_{h+1},
        # so 1 + chi2_seq >= prod_h min_s (1 + chi2_h(s)): sequence-level coverage
        # is exponentially worse in H. (That block-level SPECS has the smaller KL
        # at equal n is only an observation: on some instances sequence-level
        # SIR is closer at n = 64, so it is reported, not asserted.)
        cov = bounds.coverage(mdp)
        log_prod = sum(math.log1p(float(jnp.min(x))) for x in cov.chi2_states)
        lhs = math.log1p(f["sequence_chi2"])
        rows = [r for r in f["rows"] if r["n"] >= 64]
        text = "; ".join(f"n={r['n']}: block {r['block']:.2e} vs sequence {r['sequence']:.2e}" for r in rows[-2:])
        add(_claim("E8", "1 + chi2_seq >= prod_h min_s (1 + chi2_h(s)) (sequence coverage, THEORY 3.6)",
                   f"log: {lhs:.4g} >= {log_prod:.4g}; KL {text}", ">= -1e-12", lhs - log_prod >= -1e-12 * max(1.0, lhs)))
    if "E10" in facts:
        f = facts["E10"]
        if mdp.H == 1:  # one block: Q^{pi_t} = r = Q*, the two limits coincide
            add(_claim("E10", "H = 1: hard PRM limit equals pi*", f"KL {f['kl']:.1e}", "<= 1e-12", f["kl"] <= 1e-12))
        else:
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


def collect_facts(mdp, *, quick=False, seed=0, only=None, budget_s=ASYMPTOTIC_BUDGET_S, log=None) -> dict:
    """Run the experiments (all, or those named in ``only``) and, with E4,
    extend n into Prop E's regime (`experiments.e4_asymptotics`)."""
    facts = {}
    kwargs = {} if log is None else dict(log=log)
    for _, _, facts in run_experiments(mdp, quick=quick, seed=seed, only=only, **kwargs):
        pass
    if "E4" in facts:
        t0 = time.perf_counter()
        _, facts["E4_asymptotic"] = E.e4_asymptotics(mdp, start=4 * facts["E4"]["ns"][-1], budget_s=budget_s)
        if log is not None:
            log(f"[E4 asymptotic] n up to {facts['E4_asymptotic']['n_final']:.3g} in {time.perf_counter() - t0:.1f} s")
    return facts


def run_verify(out_dir="out/verify", *, K=5, H=3, beta=0.5, draft_noise=1.0, reward_kind="uniform", seed=0,
               quick=False) -> dict:
    """Check every claim on ``random_mdp(K, H, beta, draft_noise, reward_kind)`` with ``seed``.

    Returns the report; ``report["passed"]`` is True when no claim FAILs
    (NOT REACHED is not a failure) and decides the exit status.
    """
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

    facts = collect_facts(mdp, quick=quick, seed=seed, log=log_progress)
    claims = check_claims(mdp, facts)
    width = max(len(c.claim) for c in claims)
    for c in claims:
        need = f"  -> needs {c.needed}" if c.needed else ""
        print(f"{c.verdict:<11} {c.experiment:4s} {c.claim:<{width}}  {c.measured}  ({c.tolerance}){need}")
    counts = {v: sum(c.verdict == v for c in claims) for v in (PASS, FAIL, NOT_REACHED)}
    print(f"\n{counts[PASS]}/{len(claims)} claims passed, {counts[FAIL]} failed, {counts[NOT_REACHED]} not reached "
          f"in {time.perf_counter() - t0:.0f} s")
    report = dict(instance=instance, passed=counts[FAIL] == 0, counts=counts,
                  claims=[dict(asdict(c), passed=c.passed) for c in claims], facts=facts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verify.json").write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {out / 'verify.json'}")
    return report
