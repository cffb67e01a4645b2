"""A vLLM OpenAI-compatible server in a subprocess, for tests (started and stopped by fixtures)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specs_llm.backends.base import BackendError
from specs_llm.backends.openai_server import wait_until_ready

STARTUP_TIMEOUT = 300.0  # seconds for a server to answer /health (about 30 s on 2 busy cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ``python -m vllm.entrypoints.openai.api_server`` in its own process group."""

    def __init__(self, model_dir: str, log: Path, *extra: str, env: dict | None = None):
        self.model_dir, self.log, self.extra, self.env = model_dir, log, extra, dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # one engine process instead of two (the worker runs inside the engine core): faster start-up
        env = dict(os.environ, OMP_NUM_THREADS="1", VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1",
                   VLLM_ENABLE_V1_MULTIPROCESSING="0", **self.env)
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
            "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
            "--max-model-len", "256", "--enforce-eager", *self.extra,
        ]
        with open(self.log, "ab") as log:
            log.write(f"\n=== {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server {self.url} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                wait_until_ready(self.url, timeout=2.0, poll=0.5)
                return
            except BackendError:
                pass
        pytest.fail(f"server {self.url} not ready after {STARTUP_TIMEOUT:.0f} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the server and its engine processes (the process group we created)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
