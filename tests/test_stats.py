"""ferbench.reports.stats: the intervals behind every "differs" / "tied" in a report."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ferbench.reports.stats import (
    MIN_PAIRS,
    corrected_resampled_t,
    format_difference,
    paired_difference,
    seeds_needed,
    sign_flip_p,
    t_interval,
    welch_interval,
)


def _claim_rate(n: int, shift_in_sd: float, draws: int = 2000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    claims = 0
    for _ in range(draws):
        b = rng.normal(0.6, 0.05, n)  # one arm's test accuracy per seed
        a = b + rng.normal(shift_in_sd * 0.02, 0.02, n)  # the other: paired noise of SD 0.02
        claims += paired_difference(a, b).claim
    return claims / draws


@pytest.mark.parametrize("n", [3, 5, 10])
def test_null_claim_rate_is_at_most_seven_percent(n):
    # No real difference: a 95% method claims one about 5% of the time; the old percentile
    # bootstrap claimed 25% at n = 3 and 15% at n = 5.
    assert _claim_rate(n, 0.0) <= 0.07


def test_real_shift_of_one_and_a_half_sd_is_found_at_ten_seeds():
    assert _claim_rate(10, 1.5) >= 0.90


def test_matches_scipy_paired_t():
    a = np.array([0.61, 0.64, 0.60, 0.66, 0.63])
    b = np.array([0.58, 0.60, 0.61, 0.62, 0.59])
    result = paired_difference(a, b)
    reference = scipy_stats.ttest_rel(a, b)
    ci = reference.confidence_interval(0.95)
    assert result.n == 5
    assert result.mean_diff == pytest.approx((a - b).mean())
    assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high))
    assert result.p_value == pytest.approx(reference.pvalue)
    assert result.method == "paired Student t"


def test_two_pairs_never_claim_however_large():
    result = paired_difference([0.9, 0.91], [0.1, 0.12])
    assert not result.claim
    assert result.note.startswith("too few seeds (n = 2): no claim")
    assert "too few seeds (n = 2): no claim" in format_difference(result)


def test_one_pair_has_no_interval_and_no_claim():
    result = paired_difference([0.7], [0.5])
    assert result.n == 1 and np.isnan(result.ci_low) and not result.claim
    assert "at least 3" in result.note


def test_nan_pairs_are_dropped():
    result = paired_difference([0.7, np.nan, 0.8, 0.75], [0.5, 0.6, np.nan, 0.55])
    assert result.n == 2


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="pair up"):
        paired_difference([1, 2, 3], [1, 2])


def test_identical_arms_give_a_point_interval_at_zero_and_no_claim():
    # An arm that never learned, compared with itself (or a copy): constant, no division by zero.
    result = paired_difference([0.25, 0.25, 0.25], [0.25, 0.25, 0.25])
    assert (result.mean_diff, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0)
    assert not result.claim


def test_constant_nonzero_difference_is_claimed():
    result = paired_difference([0.30, 0.40, 0.50], [0.25, 0.35, 0.45])
    assert result.claim and result.ci_low == pytest.approx(0.05)


def test_sign_flip_p_is_exact():
    assert sign_flip_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(2 / 8)  # all positive: 2 of 8 patterns
    assert sign_flip_p(np.array([1.0, -1.0])) == 1.0
    d = np.array([0.3, -0.1, 0.2, 0.4, 0.1, 0.25])
    patterns = np.array(np.meshgrid(*[[1, -1]] * 6)).reshape(6, -1).T
    brute = np.mean(np.abs(patterns @ d) >= abs(d.sum()) - 1e-12)
    assert sign_flip_p(d) == pytest.approx(brute)


def test_sign_flip_p_reported_up_to_ten_pairs_only():
    rng = np.random.default_rng(1)
    assert np.isfinite(paired_difference(rng.normal(1, 1, 10), np.zeros(10)).p_sign_flip)
    assert np.isnan(paired_difference(rng.normal(1, 1, 11), np.zeros(11)).p_sign_flip)


def test_claim_at_three_pairs_says_the_sign_flip_test_cannot_confirm():
    result = paired_difference([0.50, 0.52, 0.51], [0.40, 0.41, 0.40])
    assert result.claim
    assert "sign-flip" in result.note and "0.25" in result.note


def test_unclaimed_difference_says_how_many_seeds_it_would_take():
    result = paired_difference([0.62, 0.60, 0.66], [0.60, 0.61, 0.61])
    assert not result.claim
    needed = seeds_needed(result.mean_diff, np.std(np.array([0.02, -0.01, 0.05]), ddof=1))
    assert needed is not None and needed > MIN_PAIRS
    assert f"about {needed} seeds" in result.note


def test_seeds_needed_is_the_first_n_whose_interval_clears_zero():
    n = seeds_needed(0.02, 0.03)
    half = lambda k: scipy_stats.t.ppf(0.975, k - 1) * 0.03 / np.sqrt(k)  # noqa: E731
    assert half(n) < 0.02 <= half(n - 1)
    assert seeds_needed(0.0, 0.03) is None and seeds_needed(0.02, float("nan")) is None


def test_corrected_resampled_t_is_wider_than_the_naive_one():
    d = np.array([0.02, 0.05, 0.01, 0.04, 0.03, 0.06, 0.00, 0.02, 0.05, 0.03])
    naive = paired_difference(d, np.zeros_like(d))
    corrected = corrected_resampled_t(d, test_train_ratio=1 / 9)
    se = d.std(ddof=1) * np.sqrt(1 / 10 + 1 / 9)
    half = scipy_stats.t.ppf(0.975, 9) * se
    assert (corrected.ci_low, corrected.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert corrected.ci_high - corrected.ci_low > naive.ci_high - naive.ci_low
    assert "Nadeau" in corrected.method


def test_t_and_welch_intervals():
    low, high = t_interval(np.array([0.5]), np.array([0.1]), np.array([4]))
    assert high[0] - 0.5 == pytest.approx(scipy_stats.t.ppf(0.975, 3) * 0.05)
    assert np.isnan(t_interval(np.array([0.5]), np.array([0.1]), np.array([1]))[0][0])
    a, b = [0.5, 0.6, 0.55], [0.7, 0.72, 0.69, 0.71]
    ci = scipy_stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    got = welch_interval(np.mean(a), np.std(a, ddof=1), 3, np.mean(b), np.std(b, ddof=1), 4)
    assert got == pytest.approx((ci.low, ci.high))
