"""specs_theory must never need torch, transformers or vllm (STYLE.md rule 5)."""

import subprocess
import sys

BLOCKER = """
import sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "vllm", "specs_llm"}:
            raise ImportError(f"blocked import of {name}")
        return None

sys.meta_path.insert(0, _Block())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=300)


def test_blocker_really_blocks():
    out = _run("import torch")
    assert out.returncode != 0 and "blocked import of torch" in out.stderr


def test_theory_core_imports_without_torch_transformers_vllm():
    out = _run(
        "import pkgutil, importlib, specs_theory\n"
        "for m in pkgutil.iter_modules(specs_theory.__path__):\n"
        "    importlib.import_module('specs_theory.' + m.name)\n"
        "import specs_theory.select as s, jax.numpy as jnp, jax\n"
        "print(s.subsample(jax.random.key(0), jnp.array([0.0, 1.0]), 1))\n"
    )
    assert out.returncode == 0, out.stderr
