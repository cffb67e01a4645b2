"""Exact theory and Monte Carlo simulation of SPECS on synthetic block MDPs.

Imports only jax, numpy and scipy. Float64 is switched on at import: the
theory needs it (THEORY.md section 7, P8).
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
