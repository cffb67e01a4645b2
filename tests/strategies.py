"""Hypothesis generators shared by the theory tests (THEORY.md section 5).

Shapes come from a small fixed set so jit reuses compiled code.
"""

import numpy as np
from hypothesis import strategies as st


@st.composite
def sir_cases(draw, max_n=64, ks=(2, 3, 5), zeros=True):
    """(log q, log w, n): q ~ Dirichlet(alpha), log w ~ N(0, sd^2), optional zero weights."""
    K = draw(st.sampled_from(ks))
    alpha = draw(st.sampled_from([0.3, 1.0, 3.0]))
    sd = draw(st.sampled_from([0.0, 0.5, 2.0, 4.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.dirichlet(alpha * np.ones(K)) + 1e-12
    q /= q.sum()
    log_w = rng.normal(0.0, sd, K)
    if zeros and draw(st.booleans()):
        n_zero = draw(st.integers(1, K - 1))
        log_w[rng.permutation(K)[:n_zero]] = -np.inf
    n = draw(st.integers(1, max_n))
    return np.log(q), log_w, n
