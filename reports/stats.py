"""Every interval the reports use, in one place: when may a report say "A differs from B"?

Why these methods: FERBench studies have few seeds (often 3–5). A percentile bootstrap over so few
values excludes 0 whenever all differences share a sign (half the time at n = 2 with no real
difference), so it is not used. Instead:

- ``paired_difference``: the paired Student-t interval of the mean difference (seeds of two arms
  share the split and the seed), with the exact sign-flip permutation p-value beside it for
  n ≤ 10, which needs no normality. With fewer than ``MIN_PAIRS`` pairs nothing is claimed.
- ``corrected_resampled_t``: folds of a k-fold study share training data, so their differences are
  not independent; Nadeau & Bengio's (2003) corrected resampled t widens the variance by
  ``test/train`` (Bouckaert & Frank's form for repeated k-fold).
- ``t_interval`` / ``welch_interval``: a mean across seeds, and two independent experiments.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_PAIRS = 3  # fewer pairs than this: no claim, whatever the interval says
EXACT_SIGN_FLIP_MAX_N = 10  # 2^10 sign patterns: enumerated exactly
MAX_SEEDS_SUGGESTED = 100


@dataclass(frozen=True)
class PairedDifference:
    """Mean of a − b over pairs, its interval, and whether a difference is claimed.

    ``p_value`` is the test the claim rests on (the t-test's, two-sided); ``p_sign_flip`` the exact
    sign-flip permutation p (n ≤ 10, else NaN). ``claim`` is True only with at least ``MIN_PAIRS``
    pairs and an interval that excludes 0; ``note`` says why not, or what to add, in words.
    """

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_sign_flip: float
    method: str
    confidence: float
    claim: bool
    note: str


def t_interval(mean, std, n, level: float = 0.95, test_train_ratio: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Student-t confidence interval of a mean from n samples; NaN where n < 2. With
    ``test_train_ratio`` (the n samples are folds) the corrected resampled variance (1/n + ratio)·s²."""
    n = np.asarray(n, dtype=float)
    dof = np.where(n >= 2, n - 1, np.nan)
    with np.errstate(divide="ignore"):
        scale = np.sqrt(1 / n + (test_train_ratio or 0.0))
    half = stats.t.ppf(0.5 + level / 2, dof) * np.asarray(std, dtype=float) * scale
    return np.asarray(mean) - half, np.asarray(mean) + half


def welch_interval(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int,
                   level: float = 0.95) -> tuple[float, float]:
    """Interval of mean_b − mean_a for independent samples (Welch–Satterthwaite degrees of
    freedom); NaN unless both sides have two or more values."""
    if n_a < 2 or n_b < 2 or np.isnan(std_a) or np.isnan(std_b):
        return np.nan, np.nan
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    se = np.sqrt(va + vb)
    diff = mean_b - mean_a
    if se == 0:
        return diff, diff
    dof = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    return diff - half, diff + half


@functools.cache
def _sign_patterns(n: int) -> np.ndarray:
    return np.array(list(itertools.product((1.0, -1.0), repeat=n)))


def sign_flip_p(differences: np.ndarray) -> float:
    """Exact two-sided sign-flip permutation p-value of mean(differences) = 0: the share of the 2^n
    sign patterns whose |mean| is at least the observed one. Its smallest value is 2 / 2^n."""
    d = np.asarray(differences, dtype=float)
    signs = _sign_patterns(len(d))
    means = np.abs(signs @ d) / len(d)
    observed = abs(d.mean())
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def seeds_needed(mean_diff: float, std_diff: float, confidence: float = 0.95) -> int | None:
    """Pairs at which a t interval around a difference this large, with this spread, would exclude
    0 (at least ``MIN_PAIRS``); None when the spread is unknown or more than ``MAX_SEEDS_SUGGESTED``
    would be needed. A planning figure from noisy estimates, not a promise."""
    if not (np.isfinite(mean_diff) and np.isfinite(std_diff)) or mean_diff == 0:
        return None
    n = np.arange(MIN_PAIRS, MAX_SEEDS_SUGGESTED + 1)
    clear = np.flatnonzero(stats.t.ppf(0.5 + confidence / 2, n - 1) * std_diff / np.sqrt(n) < abs(mean_diff))
    return int(n[clear[0]]) if len(clear) else None


def _interval(mean: float, se: float, dof: float, confidence: float) -> tuple[float, float, float]:
    """(low, high, two-sided p) of a t statistic; a zero spread gives a point interval."""
    if se == 0:
        return mean, mean, (1.0 if mean == 0 else 0.0)
    half = stats.t.ppf(0.5 + confidence / 2, dof) * se
    return mean - half, mean + half, float(2 * stats.t.sf(abs(mean) / se, dof))


def _decide(n: int, low: float, high: float, confidence: float, p_flip: float, noun: str,
            needed: int | None) -> tuple[bool, str]:
    """Claim only with ``MIN_PAIRS`` pairs and an interval clear of 0; otherwise say what is missing."""
    if n < MIN_PAIRS:
        more = f"; about {needed} would be, at the spread seen so far" if needed and needed > MIN_PAIRS else ""
        return False, f"too few {noun} (n = {n}): no claim; at least {MIN_PAIRS} are needed{more}"
    if low > 0 or high < 0:
        if np.isfinite(p_flip) and p_flip > 1 - confidence:
            return True, (f"the exact sign-flip test cannot confirm it at n = {n} (p = {p_flip:.2g}; "
                          f"its smallest possible p is {2 / 2**n:.2g})")
        return True, ""
    if needed is None or needed <= n:
        return False, "interval includes 0: no claim"
    return False, f"interval includes 0: no claim; a difference this size would need about {needed} {noun}"


def paired_difference(a, b, confidence: float = 0.95) -> PairedDifference:
    """Mean of ``a − b`` over pairs (same seed, same split) with the paired Student-t interval
    (``scipy.stats.ttest_rel``), and for n ≤ 10 the exact sign-flip p as well. NaN pairs are dropped."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: a and b must pair up, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = len(d)
    mean = float(d.mean()) if n else np.nan
    std = float(d.std(ddof=1)) if n >= 2 else np.nan
    if n >= 2:
        low, high, p = _interval(mean, std / math.sqrt(n), n - 1, confidence)
    else:
        low = high = p = np.nan
    p_flip = sign_flip_p(d) if 2 <= n <= EXACT_SIGN_FLIP_MAX_N else np.nan  # one pair: always 1
    claim, note = _decide(n, low, high, confidence, p_flip, "seeds", seeds_needed(mean, std, confidence))
    return PairedDifference(n, mean, float(low), float(high), float(p), float(p_flip), "paired Student t",
                            confidence, claim, note)


def corrected_resampled_t(differences, test_train_ratio: float, confidence: float = 0.95) -> PairedDifference:
    """Paired differences over folds (and repetitions) of a k-fold study: the corrected resampled t
    of Nadeau & Bengio (2003), variance (1/J + n_test/n_train)·s² over J differences with J − 1
    degrees of freedom, since folds share training data. For k folds n_test/n_train = 1/(k − 1)."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    mean = float(d.mean()) if n else np.nan
    std = float(d.std(ddof=1)) if n >= 2 else np.nan
    if n >= 2:
        low, high, p = _interval(mean, std * math.sqrt(1 / n + test_train_ratio), n - 1, confidence)
    else:
        low = high = p = np.nan
    # No "would need N folds": the correction term n_test/n_train does not shrink with more folds.
    claim, note = _decide(n, low, high, confidence, np.nan, "fold pairs", None)
    return PairedDifference(n, mean, float(low), float(high), float(p), np.nan, "corrected resampled t (Nadeau & Bengio)",
                            confidence, claim, note)


def compare_paired(a, b, test_train_ratio: float | None = None, confidence: float = 0.95) -> PairedDifference:
    """``paired_difference`` over seeds, or with ``test_train_ratio`` (a k-fold study's pairs)
    ``corrected_resampled_t``: the one entry point the report's comparisons use."""
    if test_train_ratio is None:
        return paired_difference(a, b, confidence)
    return corrected_resampled_t(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), test_train_ratio, confidence)


def format_difference(d: PairedDifference, digits: int = 3) -> str:
    """One table cell: ``+0.012 [−0.004, +0.028], p = 0.09 (n = 5)`` plus the claim or the note."""
    if d.n == 0 or not np.isfinite(d.mean_diff):
        return "– (no pairs)"
    text = f"{d.mean_diff:+.{digits}f}"
    if np.isfinite(d.ci_low):
        text += f" [{d.ci_low:+.{digits}f}, {d.ci_high:+.{digits}f}], p = {d.p_value:.2g}"
    if np.isfinite(d.p_sign_flip):
        text += f", sign-flip p = {d.p_sign_flip:.2g}"
    text += f" (n = {d.n})"
    if d.claim:
        text += " **differs**"
    if d.note:
        text += f"; {d.note}"
    return text
