"""The recipe runner: records, summary, resume after SIGKILL, error records, truncated lines."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from specs_llm.runner import RECORD_FIELDS, ResultsFile, RunError, record_key, run_recipe, shard_of

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "recipes" / "tiny" / "compare.yaml"
OK_ID = "1606"  # a short OlympiadBench problem (fits the tiny models)


@pytest.fixture(scope="session")
def specs_cache(tiny_model_dir, tiny_models, tmp_path_factory):
    """SPECS_CACHE pointing at the session's tiny models (the recipe's "tiny:" paths)."""
    cache = tmp_path_factory.mktemp("specs_cache")
    (cache / "tiny-models").symlink_to(tiny_model_dir, target_is_directory=True)
    old = os.environ.get("SPECS_CACHE")
    os.environ["SPECS_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("SPECS_CACHE", None)
    else:
        os.environ["SPECS_CACHE"] = old


def lines(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


def mdp_recipe(tmp_path, *, limit=12, seeds=(0, 1), batch_size=2, name="mdp.yaml"):
    data = {
        "name": "mdp-test",
        "datasets": [{"name": "synthetic", "limit": limit}],
        "backend": {"kind": "mdp", "mdp": {"K": 3, "H": 3, "beta": 0.5, "tokens_per_block": 8}},
        "defaults": {"sampling_temperature": 1.0, "n": 4},
        "methods": [
            {"name": "specs", "config": {"strategy": "specs"}},
            {"name": "target_beam", "config": {"strategy": "beam", "generator": "target"}},
            {"name": "rsd", "config": {"strategy": "rsd", "threshold": 0.5, "n": 1}},
        ],
        "seeds": list(seeds),
        "batch_size": batch_size,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_compare_recipe_runs_every_method(specs_cache, tmp_path):
    out = run_recipe(COMPARE, tmp_path / "run", limit=2, progress=False)
    records = lines(out / "results.jsonl")
    methods = ["specs", "target_beam", "draft_beam", "rsd", "best_of_n"]
    assert sorted(r["method"] for r in records) == sorted(methods * 2)
    assert len({r["key"] for r in records}) == len(records)
    for r in records:
        assert set(r) == set(RECORD_FIELDS)
        assert r["status"] == "ok", r["error"]
        assert r["dataset"] == "math500" and r["id"] in ("math500-0", "math500-1")
        assert r["gold"] and r["grade_status"] in ("ok", "no_answer", "timeout", "error")
        assert isinstance(r["correct"], bool) and r["score"] in (0.0, 1.0)
        assert r["latency_s"] > 0 and r["batch_wall_s"] >= r["latency_s"] * 0.5
        assert r["steps"] == len(r["step_sources"]) == len(r["step_deferred"]) >= 1
        assert r["steps_by_source"]["draft"] + r["steps_by_source"]["target"] == r["steps"]
        assert r["models"]["prm"]["tokens"] > 0
        assert r["key"] == record_key(r["dataset"], r["id"], r["method"], r["setting_key"], r["seed"])
        phases = r["phases"]
        # Target scoring and PRM scoring run concurrently: per step a problem
        # waits for the longer of the two, so the latency lies between these.
        a = phases.get("target_scoring", {}).get("seconds", 0.0)
        b = phases.get("prm_scoring", {}).get("seconds", 0.0)
        rest = sum(p["seconds"] for p in phases.values()) - a - b
        assert rest + max(a, b) - 1e-6 <= r["latency_s"] <= rest + a + b + 1e-6
        if r["method"] in ("specs", "rsd"):
            assert phases["draft_generation"]["tokens"] > 0
        if r["method"] == "specs":
            assert "target_scoring" in phases
        if r["method"] in ("target_beam", "best_of_n"):
            assert "draft" not in r["models"] and phases["target_generation"]["tokens"] > 0
        if r["method"] == "draft_beam":
            assert "target" not in r["models"] and set(r["step_sources"]) == {"d"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == 10 and summary["errors"] == 0
    assert sorted(g["method"] for g in summary["groups"]) == sorted(methods)
    for g in summary["groups"]:
        assert g["ok"] == 2 and g["accuracy"] is not None and g["latency_mean"] > 0
    assert (out / "recipe.yaml").read_text() == COMPARE.read_text()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["package_version"] and meta["python"] and "torch" in meta["versions"]
    assert meta["backend"]["target"] == {"path": "tiny:target"}
    # re-running skips every finished record
    before = (out / "results.jsonl").read_bytes()
    t0 = time.perf_counter()
    run_recipe(COMPARE, out, limit=2, progress=False)
    assert (out / "results.jsonl").read_bytes() == before
    assert time.perf_counter() - t0 < 20
    assert len(json.loads((out / "meta.json").read_text())["invocations"]) == 2


def test_failed_model_calls_are_error_records_and_are_retried(specs_cache, tmp_path):
    # OlympiadBench 2625/2626 have > 4000 characters: over the tiny models' 1024 tokens
    data = yaml.safe_load(COMPARE.read_text())
    data.update(datasets=[{"name": "olympiadbench", "ids": ["2625", "2626", OK_ID]}], batch_size=1,
                methods=[{"name": "draft_beam", "config": {"strategy": "beam", "generator": "draft", "n": 2,
                                                            "max_steps": 1}}])
    data.pop("limit")
    recipe = tmp_path / "long.yaml"
    recipe.write_text(yaml.safe_dump(data))
    out = run_recipe(recipe, tmp_path / "run", progress=False)
    records = {r["id"]: r for r in lines(out / "results.jsonl")}
    assert records["2625"]["status"] == records["2626"]["status"] == "error"
    assert "maximum length" in records["2625"]["error"]
    assert records["2625"]["correct"] is None and records["2625"]["score"] is None
    assert records[OK_ID]["status"] == "ok"
    summary = json.loads((out / "summary.json").read_text())
    (g,) = summary["groups"]
    assert (g["errors"], g["ok"], summary["errors"]) == (2, 1, 2)
    # a re-run retries the error records, never the finished one; each key stays recorded once
    run_recipe(recipe, out, progress=False)
    again = lines(out / "results.jsonl")
    assert sorted(r["id"] for r in again) == sorted([OK_ID, "2625", "2626"])
    assert [r for r in again if r["id"] == OK_ID] == [records[OK_ID]]
    assert len(lines(out / "retried_errors.jsonl")) == 2


def test_consecutive_failed_batches_stop_the_run(specs_cache, tmp_path):
    data = yaml.safe_load(COMPARE.read_text())
    data.update(datasets=[{"name": "olympiadbench", "ids": ["2614", "2615", "2625", "2626"]}], batch_size=1,
                methods=[{"name": "draft_beam", "config": {"strategy": "beam", "generator": "draft", "n": 2,
                                                            "max_steps": 1, "max_step_tokens": 4}}])
    data.pop("limit")
    data["backend"]["options"]["max_length"] = 256  # every one of these prompts is longer
    recipe = tmp_path / "down.yaml"
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(RunError, match="3 consecutive batches failed.*re-run"):
        run_recipe(recipe, tmp_path / "run", progress=False)
    recs = lines(tmp_path / "run" / "results.jsonl")
    assert len(recs) == 3 and all(r["status"] == "error" for r in recs)


def test_truncated_last_line_is_tolerated(tmp_path):
    recipe = mdp_recipe(tmp_path, limit=4, seeds=(0,))
    out = run_recipe(recipe, tmp_path / "run", progress=False)
    path = out / "results.jsonl"
    full = lines(path)
    assert len(full) == 12
    # drop the last two records, leave half of the last one behind (a kill mid-write)
    raw = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(raw[:-2]) + raw[-1][: len(raw[-1]) // 2])
    assert len(ResultsFile(path).load()) == 10
    assert path.read_bytes().endswith(b"\n")  # the partial line was truncated away
    run_recipe(recipe, out, progress=False)
    again = lines(path)
    assert sorted(r["key"] for r in again) == sorted(r["key"] for r in full)


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a"}\n{"key": \n{"key": "b"}\n')
    with pytest.raises(RunError, match="line 2: corrupt"):
        ResultsFile(path).load()


def test_other_models_in_the_same_directory_are_refused(tmp_path):
    recipe = mdp_recipe(tmp_path, limit=2, seeds=(0,))
    out = run_recipe(recipe, tmp_path / "run", progress=False)
    data = yaml.safe_load(recipe.read_text())
    data["backend"]["mdp"]["seed"] = 5
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    with pytest.raises(RunError, match="another backend or other models"):
        run_recipe(other, out, progress=False)


def test_problem_filter_and_limit(tmp_path):
    recipe = mdp_recipe(tmp_path, limit=6, seeds=(0,))
    out = run_recipe(recipe, tmp_path / "run", problems=["synthetic-1", "synthetic:synthetic-4"], progress=False)
    assert sorted({r["id"] for r in lines(out / "results.jsonl")}) == ["synthetic-1", "synthetic-4"]
    out2 = run_recipe(recipe, tmp_path / "run2", limit=2, progress=False)
    assert sorted({r["id"] for r in lines(out2 / "results.jsonl")}) == ["synthetic-0", "synthetic-1"]
    with pytest.raises(ValueError, match="synthetic-9"):
        run_recipe(recipe, tmp_path / "run3", problems=["synthetic-9"], progress=False)


def test_resume_after_sigkill_records_everything_exactly_once(tmp_path):
    """Kill a run (SIGKILL) at random points several times, then finish it."""
    recipe = mdp_recipe(tmp_path, limit=8, seeds=(0, 1), batch_size=2)
    out = tmp_path / "run"
    expected = 8 * 3 * 2
    results = out / "results.jsonl"
    code = f"from specs_llm.runner import run_recipe; run_recipe({str(recipe)!r}, {str(out)!r}, progress=False)"
    # a persistent compilation cache spares each restarted process most of JAX's compiling
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    rng = random.Random(1234)
    kills = 0
    for attempt in range(4):
        done = len(results.read_bytes().splitlines()) if results.exists() else 0
        target = done + rng.randint(3, 12)
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            n = len(results.read_bytes().splitlines()) if results.exists() else 0
            if n >= target:
                break
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        proc.stderr.close()
        if proc.returncode == 0:
            break
    assert kills >= 2
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    raw = results.read_bytes()
    assert raw.endswith(b"\n")
    records = [json.loads(l) for l in raw.splitlines()]  # no corrupt line
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == expected
    assert all(r["status"] == "ok" for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == expected


def test_shards_split_a_run_exactly_and_the_report_merges_them(tmp_path):
    """Three shards run separately hold every key of the unsharded run exactly once;
    `specs report` merges them into the unsharded run's table, and refuses shards of
    another recipe or a key found twice."""
    import shutil

    from specs_llm.report import make_report, merge_shards
    from specs_llm.runner import parse_shard

    recipe = mdp_recipe(tmp_path, limit=6, seeds=(0, 1))
    whole = run_recipe(recipe, tmp_path / "whole", progress=False)
    shards = [run_recipe(recipe, tmp_path / f"shard{i}", shard=(i, 3), progress=False) for i in (1, 2, 3)]
    keys = [r["key"] for d in shards for r in lines(d / "results.jsonl")]
    assert sorted(keys) == sorted(r["key"] for r in lines(whole / "results.jsonl"))  # each once
    assert all(lines(d / "results.jsonl") for d in shards)  # 36 keys: no shard is empty
    run_recipe(recipe, shards[0], shard=(1, 3), progress=False)  # resumes: nothing to add
    assert len(lines(shards[0] / "results.jsonl")) == sum(1 for k in keys if shard_of(k, 3) == 1)
    with pytest.raises(RunError, match="one directory per shard"):
        run_recipe(recipe, shards[0], shard=(2, 3), progress=False)

    merged = json.loads(make_report(shards, tmp_path / "merged")[-1].read_text())
    alone = json.loads(make_report([whole], tmp_path / "alone")[-1].read_text())
    assert merged["records"] == alone["records"] == len(keys)
    assert [(g["label"], g["ok"]) for g in merged["groups"]] == [(g["label"], g["ok"]) for g in alone["groups"]]
    with pytest.raises(ValueError, match="in two shards"):
        merge_shards([(d, lines(d / "results.jsonl")) for d in (shards[0], shards[0])])
    other = tmp_path / "other"
    shutil.copytree(shards[1], other)
    (other / "recipe.yaml").write_text((other / "recipe.yaml").read_text() + "# changed\n")
    with pytest.raises(ValueError, match="different recipes"):
        make_report([shards[0], other], tmp_path / "bad")
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3", "0/3", "4/3", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_cohorts_change_the_timing_not_the_records(tmp_path):
    """`cohorts: 2` pipelines each batch; every record but its timing is that of the lockstep run."""
    same = ("key", "status", "prediction", "correct", "score", "reward", "steps", "steps_by_source",
            "deferrals", "step_sources", "step_deferred", "step_rewards", "finish", "text")
    lockstep = run_recipe(mdp_recipe(tmp_path, limit=6, seeds=(0,), batch_size=4), tmp_path / "lockstep",
                          progress=False)
    path = mdp_recipe(tmp_path, limit=6, seeds=(0,), batch_size=4, name="cohorts.yaml")
    data = yaml.safe_load(path.read_text())
    data["cohorts"] = 2
    path.write_text(yaml.safe_dump(data))
    piped = run_recipe(path, tmp_path / "cohorts", progress=False)
    a, b = lines(lockstep / "results.jsonl"), lines(piped / "results.jsonl")
    assert len(a) == len(b) == 18
    assert [{f: r.get(f) for f in same} for r in a] == [{f: r.get(f) for f in same} for r in b]
