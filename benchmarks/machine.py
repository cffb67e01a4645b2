"""What every benchmark shares: the machine description written beside its
numbers, and the writer of its section of RESULTS.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


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


def write_section(heading: str, text: str, path: Path = RESULTS) -> None:
    """Replace the section of ``path`` whose heading line starts with
    ``heading`` (up to the next ``## `` heading) by ``text``, keeping every
    other section; append it if there is none."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}[^\n]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    path.write_text(new.rstrip("\n") + "\n")
    print(f"updated {path}")
