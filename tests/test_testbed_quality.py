"""The testbed's quality measures: ROC AUC and labelled steps."""

import pytest

from specs_llm.testbed.quality import LabelledSteps, roc_auc
from specs_llm.testbed.task import Problem


def test_roc_auc_is_the_mann_whitney_probability():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert roc_auc([0.5, 0.5], [False, True]) == 0.5  # a tie counts half
    # brute force over all (positive, negative) pairs
    scores, labels = [0.3, 0.7, 0.7, 0.1, 0.9, 0.4], [True, False, True, False, True, False]
    pairs = [(p, n) for p, lp in zip(scores, labels) if lp for n, ln in zip(scores, labels) if not ln]
    assert roc_auc(scores, labels) == pytest.approx(sum((p > n) + 0.5 * (p == n) for p, n in pairs) / len(pairs))
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([float("nan"), 0.2], [True, False])


def test_labelled_steps_follow_the_checker():
    p = Problem("x", 23, (("+", 58), ("-", 17)), "Compute 23 + 58 - 17.")
    text = "23 + 58 = 80.\n\n80 - 17 = 63.\n\nThe answer is \\boxed{63}."
    data = LabelledSteps.of([(p, text, "draft"), (p, p.solution, "target")])
    assert data.labels == [False, True, True, True, True, True]
    assert data.prefix_labels == [False, False, False, True, True, True]
    assert data.sources == ["draft"] * 3 + ["target"] * 3
    assert data.states[1].steps == ("23 + 58 = 80.", "80 - 17 = 63.")


def test_judges_rank_the_shipped_models_steps():
    """The PRM and the target's log-probability, as judges of sampled steps of the
    shipped models (HF, 40 held-out problems): both better than chance, and per
    source and label kind every count adds up."""
    from specs_llm.backends.hf import HFLanguageModel, HFRewardModel
    from specs_llm.testbed import heldout_path, model_path
    from specs_llm.testbed.quality import logprob_auc, prm_auc, sample_labelled_steps
    from specs_llm.testbed.task import read_jsonl

    problems = read_jsonl(heldout_path())[:40]
    target = HFLanguageModel(model_path("target"))
    data = sample_labelled_steps(problems, {"draft": HFLanguageModel(model_path("draft")), "target": target},
                                 temperature=1.0, seed=3)
    prm = prm_auc(HFRewardModel(model_path("prm"), convention="value_head"), data)
    judge = logprob_auc(target, data)
    assert prm["all"]["steps"] == judge["all"]["steps"] == len(data.states)
    assert prm["draft"]["steps"] + prm["target"]["steps"] == len(data.states)
    assert prm["all"]["negative"] > 10  # the draft makes mistakes to judge
    assert prm["all"]["auc"] > 0.6 and judge["all"]["auc"] > 0.6, (prm, judge)
