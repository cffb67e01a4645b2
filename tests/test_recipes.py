"""Recipes: every shipped recipe parses; bad recipes fail naming the key and the file."""

from pathlib import Path

import pytest
import yaml

from specs_llm.config import SearchConfig
from specs_llm.recipes import RecipeError, cache_dir, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "recipes").rglob("*.yaml"))

BASE = {
    "datasets": ["math500"],
    "backend": {"kind": "hf", "draft": "tiny:draft", "target": "tiny:target", "prm": "tiny:prm"},
    "methods": [{"name": "specs", "config": {"strategy": "specs"}}],
}


def write(tmp_path, data, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def with_(**changes):
    return {**BASE, **changes}


def test_shipped_recipes_exist():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in SHIPPED}
    assert {"tiny/compare.yaml", "tiny/threshold_sweep.yaml", "tiny/mdp.yaml"} <= names
    for d in ("math500", "amc23", "olympiadbench"):
        assert {f"paper/{d}.yaml", f"paper/{d}_server.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_every_shipped_recipe_parses(path):
    recipe = load_recipe(path)
    settings = recipe.settings()
    assert settings and all(isinstance(s.config, SearchConfig) for s in settings)
    assert len({(s.method, s.key) for s in settings}) == len(settings)
    assert recipe.text == path.read_text()


@pytest.mark.parametrize("dataset", ["math500", "amc23", "olympiadbench"])
@pytest.mark.parametrize("variant", ["", "_server"])
def test_paper_recipes_have_the_papers_settings(dataset, variant):
    r = load_recipe(ROOT / "recipes" / "paper" / f"{dataset}{variant}.yaml")
    assert [d.name for d in r.datasets] == [dataset]
    assert r.backend.kind == ("openai_server" if variant else "vllm")
    models = {role: getattr(r.backend, role).path or getattr(r.backend, role).model
              for role in ("draft", "target", "prm")}
    assert models == {"draft": "Qwen/Qwen2.5-Math-1.5B-Instruct", "target": "Qwen/Qwen2.5-Math-7B-Instruct",
                      "prm": "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-7B"}
    assert r.backend.prm.convention == "value_head"
    by_method = {}
    for s in r.settings():
        by_method.setdefault(s.method, []).append(s.config)
    assert set(by_method) == {"specs", "target_beam", "draft_beam", "rsd", "best_of_n"}
    for cfgs in by_method.values():
        assert sorted(c.n for c in cfgs) == [4, 8, 16]
        assert all(c.k == 1 and c.max_steps == 30 and c.step_delimiter == "\n\n" for c in cfgs)
    for c in by_method["specs"]:
        assert (c.strategy, c.threshold, c.switch_back_threshold, c.reward_weight) == ("specs", 7.0, 0.7, 10.0)
        assert 0.2 <= c.temperature <= 0.3
    assert {c.generator for c in by_method["target_beam"]} == {"target"}
    assert {c.generator for c in by_method["draft_beam"]} == {"draft"}
    assert {c.strategy for c in by_method["rsd"]} == {"rsd"}
    assert {c.strategy for c in by_method["best_of_n"]} == {"bon"}


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    path = write(tmp_path, with_(batchsize=4))
    with pytest.raises(RecipeError, match=r"r\.yaml.*batchsize"):
        load_recipe(path)


def test_unknown_search_setting_names_it_method_and_file(tmp_path):
    path = write(tmp_path, with_(methods=[{"name": "specs", "config": {"strategy": "specs", "treshold": 3}}]))
    with pytest.raises(RecipeError, match=r"r\.yaml.*specs.*treshold"):
        load_recipe(path)


@pytest.mark.parametrize("where,data,pattern", [
    ("backend key", {"backend": {**BASE["backend"], "gpu": 1}}, r"backend.*gpu"),
    ("model key", {"backend": {**BASE["backend"], "prm": {"path": "x", "conv": "value_head"}}}, r"backend\.prm.*conv"),
    ("dataset key", {"datasets": [{"name": "math500", "limt": 3}]}, r"datasets\[0\].*limt"),
    ("output key", {"output": {"dir": "x", "every": 2}}, r"output.*every"),
    ("method key", {"methods": [{"name": "a", "configs": {}}]}, r"methods\[0\].*configs"),
])
def test_unknown_nested_keys(tmp_path, where, data, pattern):
    with pytest.raises(RecipeError, match=r"r\.yaml.*" + pattern):
        load_recipe(write(tmp_path, with_(**data)))


@pytest.mark.parametrize("data,pattern", [
    ({"methods": [{"name": "a", "config": {"strategy": "specs", "n": 0}}]}, r"method 'a'.*n must be"),
    ({"methods": [{"name": "a", "config": {"strategy": "greedy"}}]}, r"strategy must be one of"),
    ({"methods": [{"name": "a", "config": {"n": 6, "k": 4}}]}, r"multiple of k"),
    ({"methods": [{"name": "a", "config": {"seed": 3}}]}, r"seed.*seeds"),
    ({"methods": [{"name": "a"}, {"name": "a"}]}, r"duplicate method name"),
    ({"methods": [{"name": "a", "sweep": {"n": 4}}]}, r"sweep\.n.*list"),
    ({"methods": [{"name": "a", "sweep": {"n": [4, 4]}}]}, r"duplicate values"),
    ({"methods": []}, r"methods.*non-empty"),
    ({"backend": {**BASE["backend"], "kind": "tgi"}}, r"backend\.kind"),
    ({"backend": {**BASE["backend"], "prm": {"path": "x", "convention": "softmax"}}}, r"convention"),
    ({"backend": {**BASE["backend"], "draft": "tiny:drafty"}}, r"tiny models"),
    ({"backend": {"kind": "openai_server", "target": "localhost:8000", "prm": "http://h:1"}}, r"http"),
    ({"backend": {"kind": "hf", "target": "x", "prm": "y"}}, r"needs the draft model"),
    ({"seeds": [0, 0]}, r"duplicate seeds"),
    ({"seeds": []}, r"seeds"),
    ({"batch_size": 0}, r"batch_size"),
    ({"cohorts": 0}, r"cohorts"),
    ({"output": {"grade_timeout": -1}}, r"grade_timeout"),
    ({"datasets": [{"name": "synthetic", "limit": 3}]}, r"synthetic"),
    ({"methods": [{"name": "a", "config": {"step_delimiter": "\n"}}, {"name": "b"}]}, r"step_delimiter"),
])
def test_bad_values_fail_clearly(tmp_path, data, pattern):
    with pytest.raises(RecipeError, match=r"r\.yaml.*" + pattern):
        load_recipe(write(tmp_path, with_(**data)))


def test_missing_required_and_bad_yaml(tmp_path):
    data = dict(BASE)
    del data["methods"]
    with pytest.raises(RecipeError, match=r"missing required key.*methods"):
        load_recipe(write(tmp_path, data))
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [math500\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml.*YAML"):
        load_recipe(bad)
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "none.yaml")


def test_sweeps_expand_and_settings_are_keyed_by_resolved_config():
    r = parse_recipe(with_(
        defaults={"max_steps": 5},
        methods=[{"name": "specs", "config": {"strategy": "specs"}, "sweep": {"threshold": [5.0, 7.0], "n": [4, 8]}},
                 {"name": "beam", "config": {"strategy": "beam", "n": 4}}],
        seeds=[0, 1],
    ))
    settings = r.settings()
    assert [s.label for s in settings] == [
        "specs (threshold=5.0, n=4)", "specs (threshold=5.0, n=8)", "specs (threshold=7.0, n=4)",
        "specs (threshold=7.0, n=8)", "beam"]
    assert all(s.config.max_steps == 5 for s in settings)
    assert settings[2].config == SearchConfig(strategy="specs", threshold=7.0, n=4, max_steps=5)
    assert settings[2].search_config(1).seed == 1
    # the same resolved configuration has the same key however it is spelled
    explicit = parse_recipe(with_(defaults={"max_steps": 5, "k": 1},
                                  methods=[{"name": "beam", "config": {"strategy": "beam", "n": 4, "top_p": 1.0}}]))
    assert explicit.settings()[0].key == settings[-1].key
    # a different configuration has a different key
    assert len({s.key for s in settings}) == len(settings)


def test_mdp_backend_and_bon_rejected(tmp_path):
    data = {"datasets": [{"name": "synthetic", "limit": 4}], "backend": {"kind": "mdp", "mdp": {"K": 3}},
            "methods": [{"name": "beam", "config": {"strategy": "beam"}}]}
    r = parse_recipe(data)
    assert r.backend.mdp["K"] == 3 and r.backend.mdp["H"] == 4
    with pytest.raises(RecipeError, match="best-of-n"):
        parse_recipe({**data, "methods": [{"name": "b", "config": {"strategy": "bon"}}]})
    with pytest.raises(RecipeError, match=r"backend\.mdp.*Kk"):
        parse_recipe({**data, "backend": {"kind": "mdp", "mdp": {"Kk": 3}}})
    with pytest.raises(RecipeError, match="needs a limit"):
        parse_recipe({**data, "datasets": ["synthetic"]})


def test_cache_dir_honours_specs_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECS_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("SPECS_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "specs"
