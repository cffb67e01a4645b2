"""Import rules: specs_theory never needs torch, transformers or vllm (STYLE.md rule 5); project
modules import one way (no cycles) and never reach into private names of another module."""

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


def _project_imports():
    """(module, imported module, names) for every import between project modules,
    at any depth of the code (function-level imports count too)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    edges = []
    for package in ("specs_theory", "specs_llm"):
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_init else parts)
            base = parts[:-1]  # the package a relative import starts from
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        target = base[: len(base) - node.level + 1] + (node.module.split(".") if node.module else [])
                        name = ".".join(target)
                    else:
                        name = node.module or ""
                    if name.split(".")[0] in ("specs_theory", "specs_llm"):
                        edges.append((module, name, [a.name for a in node.names]))
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name.split(".")[0] in ("specs_theory", "specs_llm"):
                            edges.append((module, a.name, []))
    return edges


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def test_no_module_imports_private_names_of_another():
    bad = [(m, t, n) for m, t, names in _project_imports() for n in names if _private(n) and t != m]
    assert not bad, bad


def test_no_module_reads_private_names_of_another_module():
    """``module._name`` through an imported project module (``from specs_theory import exact``)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = {".".join(p.relative_to(root).with_suffix("").parts) for pkg in ("specs_theory", "specs_llm")
               for p in (root / pkg).rglob("*.py")}
    bad = []
    for path in sorted(p for pkg in ("specs_theory", "specs_llm") for p in (root / pkg).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.asname and a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                aliases |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in modules}
        bad += [(str(path.relative_to(root)), node.lineno, f"{node.value.id}.{node.attr}") for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and _private(node.attr)]
    assert not bad, bad


def test_no_import_cycles_between_modules():
    """Imports go one way: no module reaches itself through the imports of others
    (a package's __init__ is a module like any other)."""
    graph = {}
    for m, t, names in _project_imports():
        targets = {t}
        # `from pkg import sub` imports the submodule pkg.sub when there is one
        targets |= {f"{t}.{n}" for n in names}
        graph.setdefault(m, set()).update(targets)
    modules = set(graph) | {t for ts in graph.values() for t in ts}
    graph = {m: {t for t in ts if t in modules and t != m and t in graph} for m, ts in graph.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
