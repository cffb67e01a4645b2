"""Shared test configuration: deterministic hypothesis profile, thread limits."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=30)
settings.load_profile(
    os.environ.get("SPECS_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)


# ---------------------------------------------------------------------------
# Tiny random models (specs_llm.testing), built once per session.

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """Where the tiny models live: ``$SPECS_TINY_MODELS_DIR`` if set (the vLLM
    child process reuses its parent's build), else a session temp dir."""
    return os.environ.get("SPECS_TINY_MODELS_DIR") or str(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir) -> dict:
    """Paths of the tiny draft, target, value-head PRM ("prm") and step-tag PRM ("prm_step_tag")."""
    from specs_llm.testing import build_tiny_model, build_tiny_models

    paths = build_tiny_models(tiny_model_dir, prm_kind="value_head")
    paths["prm_step_tag"] = build_tiny_model(tiny_model_dir, "prm_step_tag")
    return paths


@pytest.fixture(scope="session")
def hf_draft(tiny_models):
    from specs_llm.backends.hf import HFLanguageModel

    return HFLanguageModel(tiny_models["draft"])


@pytest.fixture(scope="session")
def hf_target(tiny_models):
    from specs_llm.backends.hf import HFLanguageModel

    return HFLanguageModel(tiny_models["target"])


@pytest.fixture(scope="session")
def hf_prm(tiny_models):
    from specs_llm.backends.hf import HFRewardModel

    return HFRewardModel(tiny_models["prm"], convention="value_head")


@pytest.fixture(scope="session")
def hf_prm_step_tag(tiny_models):
    from specs_llm.backends.hf import HFRewardModel

    return HFRewardModel(tiny_models["prm_step_tag"], convention="step_tag")
