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
