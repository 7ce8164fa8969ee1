"""The Recommendation section: best models named only where the 95% intervals support it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.derived import t_interval
from reports.recommendation import pareto_models, render_recommendation

DIFF_COLUMNS = ["comparison", "backbone", "variant", "init", "metric", "n_pairs", "n_unpaired",
                "mean_diff", "ci_low", "ci_high", "excludes_zero"]


def _summary(models: dict[str, dict[str, tuple[float, float, int]]]) -> pd.DataFrame:
    """{"<backbone>_<init>": {metric: (mean, std, n)}} → a seed_summary-shaped frame (one variant)."""
    rows = []
    for name, metrics in models.items():
        backbone, init = name.rsplit("_", 1)
        for metric, (mean, std, n) in metrics.items():
            rows.append({"backbone": backbone, "init": init, "variant": "baseline", "metric": metric, "n": n,
                         "mean": mean if n > 0 else np.nan, "std": std if n >= 2 else np.nan})
    frame = pd.DataFrame(rows)
    frame["ci95_low"], frame["ci95_high"] = t_interval(frame["mean"], frame["std"], frame["n"])
    return frame


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


def _empty_differences() -> pd.DataFrame:
    return pd.DataFrame(columns=DIFF_COLUMNS)


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_clear_winner_is_named_without_tie():
    summary = _summary({"big_pretrained": _model(0.80, 0.01, 5, 1_000_000, 100),
                        "small_random": _model(0.50, 0.01, 5, 10_000, 900)})
    text = render_recommendation(summary, _empty_differences(), _mcr(["big_pretrained", "small_random"]))
    assert text.startswith("## Recommendation")
    line = _line(text, "- **Best test accuracy**")
    assert "`big_pretrained` 0.800" in line
    assert "tied" not in line and "no difference" not in line
    assert "clear of the runner-up `small_random`" in line
    assert "`small_random` 10,000" in _line(text, "- **Fewest trainable parameters**")
    assert "`small_random` 900" in _line(text, "- **Highest training throughput**")
    assert "`small_random`" in _line(text, "- **Fastest convergence**").split("—")[0]  # MCR 0.06 > 0.05
    assert "`small_random`" in _line(text, "- **Least overfitting**").split("—")[0]  # MOFR 0.015 < 0.02
    assert "epochs 1-5" in text and "epochs 6-10" in text
    # quality under limited resources: most accurate in the Pareto set; speed: fastest within best's CI
    assert "`big_pretrained` 0.800" in _line(text, "- If quality matters")
    assert "`big_pretrained` 100 images/s" in _line(text, "- If speed matters")


def test_overlapping_intervals_say_tied_and_name_both():
    summary = _summary({"alpha_pretrained": _model(0.70, 0.05, 4, 50_000, 300),
                        "beta_random": _model(0.68, 0.05, 4, 20_000, 500)})
    text = render_recommendation(summary, _empty_differences(), _mcr(["alpha_pretrained", "beta_random"]))
    line = _line(text, "- **Best test accuracy**")
    assert "`alpha_pretrained` 0.700" in line
    assert "tied within the 95% CI with `beta_random`" in line
    assert "clear of" not in line
    # both are within the best's CI, so the faster one is the speed pick
    speed = _line(text, "- If speed matters")
    assert "`beta_random` 500 images/s" in speed and "`alpha_pretrained`" in speed
    # beta is on the Pareto front with fewer params and not established to be less accurate
    assert "the smaller `beta_random`" in _line(text, "- If quality matters")


def test_one_seed_establishes_no_difference():
    summary = _summary({"alpha_pretrained": _model(0.70, 0.0, 1, 50_000, 300),
                        "beta_random": _model(0.40, 0.0, 1, 50_000, 200)})
    text = render_recommendation(summary, _empty_differences(), _mcr(["alpha_pretrained", "beta_random"], seeds=1))
    line = _line(text, "- **Best test accuracy**")
    assert "(one seed: no interval, so no difference is established" in line
    assert "CI clear of" not in text


def test_pretraining_helps_only_where_interval_excludes_zero():
    summary = _summary({"alpha_pretrained": _model(0.70, 0.01, 3, 50_000, 300),
                        "alpha_random": _model(0.60, 0.01, 3, 50_000, 300),
                        "beta_pretrained": _model(0.62, 0.05, 3, 20_000, 500),
                        "beta_random": _model(0.60, 0.05, 3, 20_000, 500)})
    differences = pd.DataFrame([
        ["pretrained − random", "alpha", "baseline", np.nan, "test_acc", 3, 0, 0.10, 0.08, 0.12, True],
        ["pretrained − random", "beta", "baseline", np.nan, "test_acc", 3, 0, 0.02, -0.03, 0.07, False],
    ], columns=DIFF_COLUMNS)
    never_paired = ["pretrained − random", "gamma", "baseline", np.nan, "test_acc", 0, 2, np.nan, np.nan, np.nan, False]
    differences.loc[len(differences)] = never_paired  # excluded from the grid: not worth a word
    text = render_recommendation(summary, differences, pd.DataFrame())
    assert "gamma" not in text
    line = _line(text, "- **Pretrained vs random**")
    assert "pretraining helps `alpha` (+0.100 test acc, 95% CI [+0.080, +0.120])" in line
    assert "`beta`: no established difference in test acc (+0.020, 95% CI [-0.030, +0.070])" in line
    assert text.count("helps") == 1
    assert "not available" in _line(text, "- **Fastest convergence**")  # no mcr table


def test_pareto_set_on_hand_made_points():
    summary = _summary({
        "a_random": _model(0.90, 0.01, 3, 1000, 1),     # most accurate, most params: on the front
        "b_random": _model(0.80, 0.01, 3, 500, 1),      # on the front
        "c_random": _model(0.70, 0.01, 3, 600, 1),      # dominated by b
        "d_random": _model(0.80, 0.01, 3, 500, 1),      # identical to b: kept
        "e_random": _model(0.60, 0.01, 3, 100, 1),      # fewest params: on the front
        "f_random": _model(0.60, 0.01, 3, 200, 1),      # dominated by e (same acc, more params)
        "g_pretrained": _model(0.99, 0.01, 0, 10, 1),  # no completed trial: left out
    })
    assert pareto_models(summary) == ["e_random", "b_random", "d_random", "a_random"]
    text = render_recommendation(summary, _empty_differences(), pd.DataFrame())
    front = _line(text, "- **Pareto-optimal")
    assert "`c_random`" not in front and "`f_random`" not in front and "`g_pretrained`" not in front


def test_model_without_completed_trials_is_left_out():
    summary = _summary({"ghost_pretrained": _model(0.99, 0.0, 0, 10, 10_000),
                        "alpha_random": _model(0.70, 0.01, 3, 50_000, 300),
                        "beta_random": _model(0.50, 0.01, 3, 20_000, 200)})
    mcr = _mcr(["alpha_random", "beta_random", "ghost_pretrained"])  # ghost has partial epochs only
    text = render_recommendation(summary, _empty_differences(), mcr)
    left_out = _line(text, "Left out (no completed trials)")
    assert "`ghost_pretrained`" in left_out
    assert text.count("ghost_pretrained") == 1
    assert "`alpha_random` 0.700" in _line(text, "- **Best test accuracy**")
    assert "`beta_random` 20,000" in _line(text, "- **Fewest trainable parameters**")


def test_no_completed_models_recommends_nothing():
    summary = _summary({"ghost_pretrained": _model(0.9, 0.0, 0, 10, 10)})
    text = render_recommendation(summary, _empty_differences(), pd.DataFrame())
    assert "nothing to recommend" in text and "Best test accuracy" not in text
