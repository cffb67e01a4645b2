"""Wall time of the exact SPECS policy (all states, Theorem A) on K=8, H=5.

    python benchmarks/bench_exact.py [--write]

4681 states (sum_h 8^h, h < 5) per call; n in {1, 2, 4, ..., 4096}.  One
warm-up call compiles; the sweep is then timed call by call (each result is
blocked on).  Also reports the forward KL to pi* and the worst row-sum error.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import jax
import jax.numpy as jnp

import specs_theory  # noqa: F401  (float64)
from specs_theory.exact import optimal_policy, specs_policy
from specs_theory.mdp import random_mdp, sequence_logp
from specs_theory.metrics import kl
from machine import cpu_model, write_section  # benchmarks/machine.py

NS = [2**k for k in range(13)]
HEADING = "## Exact SPECS policy sweep (K=8, H=5)"


def run(threshold=None):
    mdp = random_mdp(jax.random.key(0), K=8, H=5, beta=0.5)
    star = sequence_logp(optimal_policy(mdp))
    t0 = time.perf_counter()
    jax.block_until_ready(specs_policy(mdp, 3, threshold=threshold).logp)  # warm-up / compile
    warm = time.perf_counter() - t0
    rows = []
    for n in NS:
        t0 = time.perf_counter()
        pol = specs_policy(mdp, n, threshold=threshold)
        jax.block_until_ready(pol.logp)
        dt = time.perf_counter() - t0
        err = max(float(jnp.max(jnp.abs(jnp.exp(lp).sum(-1) - 1))) for lp in pol.logp)
        rows.append((n, dt, float(kl(star, sequence_logp(pol.logp))), err))
    return warm, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of RESULTS.md")
    args = parser.parse_args()
    lines = []
    for label, tau in (("no threshold", None), ("threshold tau = 0.5 (soft target)", 0.5)):
        warm, rows = run(tau)
        total = sum(r[1] for r in rows)
        lines += [
            f"{label}: warm-up (compile) {warm:.2f} s; sweep total {total:.2f} s",
            "",
            "|     n | seconds | KL(pi* || SPECS_n) | max row-sum error |",
            "|------:|--------:|-------------------:|------------------:|",
        ]
        lines += [f"| {n:5d} | {dt:7.3f} | {k:18.4e} | {e:17.1e} |" for n, dt, k, e in rows]
        lines.append("")
    machine = (
        f"Machine: {os.cpu_count()} cores (nproc), {cpu_model()}, "
        f"jax {jax.__version__}, {datetime.date.today().isoformat()}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"load average {os.getloadavg()[0]:.1f} at start (shared machine); "
        "4681 states per call, random_mdp(key 0, K=8, H=5, beta=0.5)."
    )
    text = "\n".join([HEADING, "", machine, ""] + lines)
    print(text)
    if args.write:
        write_section(HEADING, text)


if __name__ == "__main__":
    main()
