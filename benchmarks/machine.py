"""The machine description every benchmark writes beside its numbers."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    """CPU model, core count, Python, numpy and jax versions, load average."""
    import jax
    import numpy as np

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu_model()}, nproc {os.cpu_count()}, Python {platform.python_version()}, "
            f"numpy {np.__version__}, jax {jax.__version__} (CPU), load average {load:.2f}")
