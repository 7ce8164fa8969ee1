"""The Recommendation section: best models named only where the paired intervals support it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ferbench.reports.derived import DIFFERENCE_COLUMNS, seed_summary
from ferbench.reports.recommendation import pareto_models, render_recommendation


def _pattern(n: int, shift: int) -> np.ndarray:
    """n seed offsets with sample std 1; models get different orders (``shift``), so paired
    differences between models vary from seed to seed as real ones do."""
    if n < 2:
        return np.zeros(n)
    base = np.arange(n) - (n - 1) / 2
    return np.roll(base / base.std(ddof=1), shift)


def _trials(models: dict[str, dict[str, tuple[float, float, int]]]) -> pd.DataFrame:
    """{"<backbone>_<init>": {metric: (mean, std, n seeds)}} → a trials frame (one variant); a
    model with n = 0 has one failed trial."""
    rows = []
    for i, (name, metrics) in enumerate(models.items()):
        backbone, init = name.rsplit("_", 1)
        n = max(count for _, _, count in metrics.values())
        arm = {"backbone": backbone, "init": init, "variant": "baseline"}
        if n == 0:
            rows.append({**arm, "seed": 0, "arm_id": f"{name}_s0", "status": "failed", **dict.fromkeys(metrics, np.nan)})
            continue
        z = _pattern(n, i)
        for seed in range(n):
            rows.append({**arm, "seed": seed, "arm_id": f"{name}_s{seed}", "status": "completed",
                         **{metric: mean + std * z[seed] for metric, (mean, std, _) in metrics.items()}})
    return pd.DataFrame(rows)


def _render(trials: pd.DataFrame, differences: pd.DataFrame | None = None, mcr: pd.DataFrame | None = None) -> str:
    metrics = ["test_acc", "test_macro_f1", "initial_acc", "params_trainable", "train_images_per_s"]
    differences = pd.DataFrame(columns=DIFFERENCE_COLUMNS) if differences is None else differences
    return render_recommendation(seed_summary(trials, metrics), differences,
                                 pd.DataFrame() if mcr is None else mcr, trials)


def _model(acc: float, std: float, n: int, params: float, speed: float) -> dict[str, tuple[float, float, int]]:
    return {"test_acc": (acc, std, n), "test_macro_f1": (acc - 0.05, std, n), "initial_acc": (acc / 2, std, n),
            "params_trainable": (params, 0.0, n), "train_images_per_s": (speed, std * 10, n)}


def _mcr(models: list[str], seeds: int = 3) -> pd.DataFrame:
    rows = []
    for i, name in enumerate(models):
        backbone, init = name.rsplit("_", 1)
        for seed in range(seeds):
            for kind, window, value in (("MCR", "1-5", 0.05 + 0.01 * i), ("MOFR", "6-10", 0.02 - 0.005 * i)):
                rows.append({"backbone": backbone, "init": init, "variant": "baseline", "seed": seed,
                             "arm_id": f"{name}_s{seed}", "metric": "accuracy", "kind": kind, "window": window,
                             "value": value + 0.0001 * seed})
    return pd.DataFrame(rows)


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_clear_winner_is_named_without_tie():
    trials = _trials({"big_pretrained": _model(0.80, 0.01, 5, 1_000_000, 100),
                      "small_random": _model(0.50, 0.01, 5, 10_000, 900)})
    text = _render(trials, mcr=_mcr(["big_pretrained", "small_random"]))
    assert text.startswith("## Recommendation")
    line = _line(text, "- **Best test accuracy**")
    assert "`big_pretrained` 0.800" in line
    assert "tied" not in line and "no difference" not in line
    assert "paired 95% CI clear of 0 against every other model; runner-up `small_random`" in line
    assert "difference +0.300 [" in line and "5 pairs" in line
    assert "`small_random` 10,000" in _line(text, "- **Fewest trainable parameters**")
    assert "`small_random` 900" in _line(text, "- **Highest training throughput**")
    assert "`small_random`" in _line(text, "- **Fastest convergence**").split("—")[0]  # MCR 0.06 > 0.05
    assert "`small_random`" in _line(text, "- **Least overfitting**").split("—")[0]  # MOFR 0.015 < 0.02
    assert "clear of 0" in _line(text, "- **Fastest convergence**")  # paired on the same seeds' windows
    assert "epochs 1-5" in text and "epochs 6-10" in text
    # quality under limited resources: most accurate in the Pareto set; speed: fastest not beaten on accuracy
    assert "`big_pretrained` 0.800" in _line(text, "- If quality matters")
    assert "`big_pretrained` 100 images/s" in _line(text, "- If speed matters")


def test_difference_within_seed_noise_is_tied_and_names_both():
    trials = _trials({"alpha_pretrained": _model(0.70, 0.05, 4, 50_000, 300),
                      "beta_random": _model(0.68, 0.05, 4, 20_000, 500)})
    text = _render(trials, mcr=_mcr(["alpha_pretrained", "beta_random"]))
    line = _line(text, "- **Best test accuracy**")
    assert "`alpha_pretrained` 0.700" in line
    assert "tied (paired 95% CI of the difference includes 0) with `beta_random`" in line
    assert "clear of" not in line
    # both are not established to differ in accuracy, so the faster one is the speed pick
    speed = _line(text, "- If speed matters")
    assert "`beta_random` 500 images/s" in speed and "`alpha_pretrained`" in speed
    # beta is on the Pareto front with fewer params and not established to be less accurate
    assert "the smaller `beta_random`" in _line(text, "- If quality matters")


def test_non_overlapping_means_with_paired_noise_are_not_called_clear():
    # Per-model intervals barely overlap, but the paired differences swing across 0 seed by seed.
    trials = _trials({"alpha_random": _model(0.70, 0.02, 3, 1, 1), "beta_random": _model(0.66, 0.02, 3, 1, 1)})
    line = _line(_render(trials), "- **Best test accuracy**")
    assert "tied" in line and "clear of" not in line


def test_two_seeds_establish_no_difference_however_large():
    trials = _trials({"alpha_pretrained": _model(0.90, 0.01, 2, 50_000, 300),
                      "beta_random": _model(0.30, 0.01, 2, 50_000, 200)})
    line = _line(_render(trials), "- **Best test accuracy**")
    assert "too few seeds (n = 2): no difference is established from `beta_random`" in line
    assert "at least 3 seed pairs" in line and "clear of" not in line


def test_one_seed_establishes_no_difference():
    trials = _trials({"alpha_pretrained": _model(0.70, 0.0, 1, 50_000, 300),
                      "beta_random": _model(0.40, 0.0, 1, 50_000, 200)})
    text = _render(trials, mcr=_mcr(["alpha_pretrained", "beta_random"], seeds=1))
    line = _line(text, "- **Best test accuracy**")
    assert "too few seeds (n = 1): no difference is established" in line
    assert "clear of 0" not in text


def test_pretraining_helps_only_where_claimed():
    trials = _trials({"alpha_pretrained": _model(0.70, 0.01, 3, 50_000, 300),
                      "alpha_random": _model(0.60, 0.01, 3, 50_000, 300),
                      "beta_pretrained": _model(0.62, 0.05, 3, 20_000, 500),
                      "beta_random": _model(0.60, 0.05, 3, 20_000, 500)})
    columns = DIFFERENCE_COLUMNS
    differences = pd.DataFrame([
        ["pretrained − random", "alpha", "baseline", np.nan, "test_acc", 3, 0, 0.10, 0.08, 0.12, 0.001, 0.25,
         "paired Student t", True, ""],
        ["pretrained − random", "beta", "baseline", np.nan, "test_acc", 3, 0, 0.02, -0.03, 0.07, 0.3, 0.5,
         "paired Student t", False, "interval includes 0: no claim"],
        ["pretrained − random", "delta", "baseline", np.nan, "test_acc", 2, 0, 0.20, 0.10, 0.30, 0.04, 0.5,
         "paired Student t", False, "too few seeds (n = 2): no claim; at least 3 are needed"],
    ], columns=columns)
    never_paired = ["pretrained − random", "gamma", "baseline", np.nan, "test_acc", 0, 2, np.nan, np.nan, np.nan,
                    np.nan, np.nan, "paired Student t", False, "too few seeds (n = 0): no claim"]
    differences.loc[len(differences)] = never_paired  # excluded from the grid: not worth a word
    text = _render(trials, differences)
    assert "gamma" not in text
    line = _line(text, "- **Pretrained vs random**")
    assert "pretraining helps `alpha` (+0.100 test acc, 95% CI [+0.080, +0.120], 3 pairs)" in line
    assert "`beta`: no established difference in test acc (+0.020, 95% CI [-0.030, +0.070], 3 pairs; interval includes 0" in line
    assert "`delta`: no established difference" in line and "too few seeds (n = 2)" in line
    assert text.count("helps") == 1
    assert "not available" in _line(text, "- **Fastest convergence**")  # no mcr table


def test_arm_that_never_learned_is_named_and_ranked_on_nothing():
    trials = _trials({"vggface_random": _model(0.25, 0.0, 3, 100, 50),
                      "alpha_random": _model(0.60, 0.02, 3, 1000, 10)})
    trials["did_not_learn"] = trials["backbone"] == "vggface"
    mcr = _mcr(["alpha_random", "vggface_random"])
    mcr.loc[mcr["backbone"] == "vggface", "value"] = 0.0  # flat curve: MOFR 0 would look "least overfitting"
    text = _render(trials, mcr=mcr)
    assert "Did not learn" in text and "`vggface_random`" in _line(text, "Did not learn")
    assert text.count("vggface_random") == 1
    assert "`alpha_random`" in _line(text, "- **Least overfitting**")


def test_pareto_set_on_hand_made_points():
    trials = _trials({
        "a_random": _model(0.90, 0.01, 3, 1000, 1),     # most accurate, most params: on the front
        "b_random": _model(0.80, 0.01, 3, 500, 1),      # on the front
        "c_random": _model(0.70, 0.01, 3, 600, 1),      # dominated by b
        "d_random": _model(0.80, 0.01, 3, 500, 1),      # identical to b: kept
        "e_random": _model(0.60, 0.01, 3, 100, 1),      # fewest params: on the front
        "f_random": _model(0.60, 0.01, 3, 200, 1),      # dominated by e (same acc, more params)
        "g_pretrained": _model(0.99, 0.01, 0, 10, 1),  # no completed trial: left out
    })
    assert pareto_models(seed_summary(trials, ["test_acc", "params_trainable"])) == ["e_random", "b_random", "d_random", "a_random"]
    front = _line(_render(trials), "- **Pareto-optimal")
    assert "`c_random`" not in front and "`f_random`" not in front and "`g_pretrained`" not in front


def test_model_without_completed_trials_is_left_out():
    trials = _trials({"ghost_pretrained": _model(0.99, 0.0, 0, 10, 10_000),
                      "alpha_random": _model(0.70, 0.01, 3, 50_000, 300),
                      "beta_random": _model(0.50, 0.01, 3, 20_000, 200)})
    mcr = _mcr(["alpha_random", "beta_random", "ghost_pretrained"])  # ghost has partial epochs only
    text = _render(trials, mcr=mcr)
    left_out = _line(text, "Left out (no completed trials)")
    assert "`ghost_pretrained`" in left_out
    assert text.count("ghost_pretrained") == 1
    assert "`alpha_random` 0.700" in _line(text, "- **Best test accuracy**")
    assert "`beta_random` 20,000" in _line(text, "- **Fewest trainable parameters**")


def test_no_completed_models_recommends_nothing():
    text = _render(_trials({"ghost_pretrained": _model(0.9, 0.0, 0, 10, 10)}))
    assert "nothing to recommend" in text and "Best test accuracy" not in text
