"""E7 (SMC): the N grid is extended by doublings when the 1/N regime of
Var(Zhat) (N >= 10 sigma2) starts just above it (issue 18), so the variance
claims are measured instead of reported NOT REACHED."""

import pytest

from specs_theory import experiments as E
from specs_theory.verify import NOT_REACHED, PASS, check_claims

GRID = E.powers_of_two(256)


@pytest.mark.parametrize("N_entry, factor, expected", [
    (267.5, 4, [512, 1024]),  # two N >= entry needed: 512 and 1024 = 4 x 256
    (200.0, 4, [512]),  # 256 is one already
    (100.0, 4, []),  # 128 and 256 are two
    (600.0, 4, []),  # needs 1024 and 2048 > 4 x 256: NOT REACHED stays
    (600.0, 8, [512, 1024, 2048]),  # every doubling up to the second N >= entry
    (267.5, 1, []),  # factor 1: no extension
])
def test_smc_extension(N_entry, factor, expected):
    assert E.smc_extension(GRID, N_entry, factor=factor) == expected


def test_smc_extension_from_a_grid_that_is_not_powers_of_two():
    assert E.smc_extension([1, 4, 16, 64], 100.0, factor=4) == [128, 256]


VARIANCE_CLAIMS = ("SMC: Var(Zhat) = O(1/N) (fit over N >= 10 sigma2)",
                   "SMC: N Var(Zhat) / sigma2 -> 1, sigma2 = sum_h E_{pi*} chi2_h")


@pytest.fixture(scope="module")
def issue_instance():
    # `specs theory verify --K 4 --H 5 --beta 0.3 --draft-noise 1.5 --reward-kind sparse --seed 37`:
    # sigma2 = 26.7, so the variance claims need two N >= 267 and the grid stops at 256.
    return E.default_mdp(37, K=4, H=5, beta=0.3, draft_noise=1.5, reward_kind="sparse")


def _e7(mdp, **kw):
    # the verify grid's last two N (cheaper than all nine), fewer runs than verify's 100,000
    return E.e7_smc(mdp, Ns=[128, 256], num_runs=20_000, check_runs=20_000, seed=37,
                    extend_factor=E.SMC_EXTEND_FACTOR, **kw)


def _verdicts(mdp, facts):
    return {c.claim: c for c in check_claims(mdp, {"E7": facts}) if c.claim in VARIANCE_CLAIMS}


def test_issue_instance_variance_claims_pass_after_extension(issue_instance):
    _, f = _e7(issue_instance)
    assert f["N_entry"] == pytest.approx(267.46, abs=0.01)
    assert f["extended_Ns"] == [512, 1024] and f["skipped_Ns"] == []
    assert f["Ns"] == [128, 256, 512, 1024] and f["var_slope_Ns"] == [512, 1024]
    claims = _verdicts(issue_instance, f)
    assert set(claims) == set(VARIANCE_CLAIMS)
    assert all(c.verdict == PASS for c in claims.values()), claims


def test_extension_respects_the_time_budget(issue_instance):
    _, f = _e7(issue_instance, budget_s=0.0)
    assert f["extended_Ns"] == [] and f["skipped_Ns"] == [512, 1024] and f["Ns"] == [128, 256]
    slope = _verdicts(issue_instance, f)[VARIANCE_CLAIMS[0]]
    assert slope.verdict == NOT_REACHED and "512, 1024 left out for the time budget" in slope.needed
