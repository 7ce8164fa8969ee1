"""Derived metrics against values worked out by hand (reports/derived.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ferbench.harness.spec import SplitSpec
from ferbench.reports.derived import (
    DIFFERENCE_COLUMNS,
    did_not_learn,
    fold_test_train_ratio,
    epoch_windows,
    initial_metrics,
    mcr_mofr,
    paired_differences,
    seed_summary,
    smelyakov_tables,
)

# One 8-epoch curve (epoch 0 = before training). By hand, with G = train - val:
#   accuracy: MCR 1-5 = (0.60-0.10)/5 = 0.10     MCR 6-8 = (0.75-0.60)/3 = 0.05
#             G_0 = 0.00, G_5 = 0.60-0.40 = 0.20, G_8 = 0.75-0.50 = 0.25
#             MOFR 1-5 = 0.20/5 = 0.04           MOFR 6-8 = 0.05/3
#   loss:     MCR 1-5 = (0.80-2.00)/5 = -0.24    MCR 6-8 = (0.60-0.80)/3 = -0.2/3
#             G_0 = 0.0, G_5 = 0.8-1.3 = -0.5, G_8 = 0.6-1.5 = -0.9
#             MOFR 1-5 = -0.5/5 = -0.1           MOFR 6-8 = -0.4/3
CURVE = {
    "train_acc": [0.10, 0.20, 0.40, 0.50, 0.50, 0.60, 0.60, 0.70, 0.75],
    "val_acc": [0.10, 0.20, 0.30, 0.40, 0.40, 0.40, 0.45, 0.50, 0.50],
    "train_loss": [2.00, 1.50, 1.20, 1.00, 0.90, 0.80, 0.75, 0.70, 0.60],
    "val_loss": [2.00, 1.60, 1.40, 1.30, 1.30, 1.30, 1.35, 1.40, 1.50],
}
EXPECTED = {
    ("accuracy", "MCR", "1-5"): 0.10, ("accuracy", "MCR", "6-8"): 0.05,
    ("accuracy", "MOFR", "1-5"): 0.04, ("accuracy", "MOFR", "6-8"): 0.05 / 3,
    ("loss", "MCR", "1-5"): -0.24, ("loss", "MCR", "6-8"): -0.2 / 3,
    ("loss", "MOFR", "1-5"): -0.10, ("loss", "MOFR", "6-8"): -0.4 / 3,
}


def arm_epochs(arm_id="a", backbone="resnet", init="pretrained", variant="baseline", seed=0, curve=CURVE, drop=()):
    frame = pd.DataFrame(curve).assign(epoch=range(len(curve["train_acc"])))
    frame = frame[~frame["epoch"].isin(drop)]
    return frame.assign(trial_id="t_" + arm_id, arm_id=arm_id, backbone=backbone, init=init, variant=variant, seed=seed)


def values_by_key(result: pd.DataFrame, arm_id: str) -> dict:
    rows = result[result["arm_id"] == arm_id]
    return {(r.metric, r.kind, r.window): r.value for r in rows.itertuples()}


# --------------------------------------------------------------------------- MCR / MOFR


def test_mcr_mofr_hand_computed_with_short_last_window():
    result = mcr_mofr(arm_epochs())
    assert list(result.columns) == ["backbone", "init", "variant", "seed", "arm_id", "metric", "kind", "window", "value"]
    got = values_by_key(result, "a")
    assert set(got) == set(EXPECTED)  # windows "1-5" and "6-8", nothing else
    for key, expected in EXPECTED.items():
        assert got[key] == pytest.approx(expected, abs=1e-12), key


def test_mcr_is_the_mean_of_step_differences_not_of_levels():
    # steps +0.3, -0.1, +0.1 over a window of 3: mean step = 0.3/3 = 0.1
    curve = {"train_acc": [0.2, 0.5, 0.4, 0.5], "val_acc": [0.2, 0.2, 0.2, 0.2],
             "train_loss": [1.0] * 4, "val_loss": [1.0] * 4}
    got = values_by_key(mcr_mofr(arm_epochs(curve=curve), window=3), "a")
    assert got[("accuracy", "MCR", "1-3")] == pytest.approx(0.1)
    assert got[("accuracy", "MOFR", "1-3")] == pytest.approx(0.1)  # val flat: G moves like train
    assert got[("loss", "MCR", "1-3")] == 0.0


def test_windows_do_not_need_to_divide_the_epoch_count():
    assert epoch_windows(8, 5) == [(1, 5), (6, 8)]
    assert epoch_windows(20, 5) == [(1, 5), (6, 10), (11, 15), (16, 20)]
    assert epoch_windows(8, 3) == [(1, 3), (4, 6), (7, 8)]
    assert epoch_windows(1, 5) == [(1, 1)]
    windows = mcr_mofr(arm_epochs(), window=3)["window"].unique().tolist()
    assert windows == ["1-3", "4-6", "7-8"]
    # 7-8: train_acc (0.75 - 0.60) / 2
    assert values_by_key(mcr_mofr(arm_epochs(), window=3), "a")[("accuracy", "MCR", "7-8")] == pytest.approx(0.075)


def test_missing_epoch_makes_only_the_windows_that_need_it_nan():
    epochs = pd.concat([
        arm_epochs("full"),
        arm_epochs("gap3", drop=[3]),   # inside 1-5 only
        arm_epochs("gap5", drop=[5]),   # end of 1-5 and predecessor of 6: both windows
        arm_epochs("no0", drop=[0]),    # no before-training value: 1-5 undefined
    ])
    result = mcr_mofr(epochs)
    gap3, gap5, no0 = (values_by_key(result, arm) for arm in ("gap3", "gap5", "no0"))
    for metric in ("accuracy", "loss"):
        for kind in ("MCR", "MOFR"):
            assert np.isnan(gap3[(metric, kind, "1-5")])
            assert gap3[(metric, kind, "6-8")] == pytest.approx(EXPECTED[(metric, kind, "6-8")])
            assert np.isnan(gap5[(metric, kind, "1-5")]) and np.isnan(gap5[(metric, kind, "6-8")])
            assert np.isnan(no0[(metric, kind, "1-5")])
            assert no0[(metric, kind, "6-8")] == pytest.approx(EXPECTED[(metric, kind, "6-8")])


def test_missing_val_value_affects_mofr_but_not_mcr():
    curve = {k: list(v) for k, v in CURVE.items()}
    curve["val_acc"][7] = np.nan
    got = values_by_key(mcr_mofr(arm_epochs(curve=curve)), "a")
    assert got[("accuracy", "MCR", "6-8")] == pytest.approx(0.05)
    assert np.isnan(got[("accuracy", "MOFR", "6-8")])
    assert got[("accuracy", "MOFR", "1-5")] == pytest.approx(0.04)


def test_arm_stopped_early_and_arm_with_only_epoch_0_keep_their_rows_as_nan():
    epochs = pd.concat([
        arm_epochs("full"),
        arm_epochs("stopped", drop=[4, 5, 6, 7, 8]),
        arm_epochs("untrained", drop=range(1, 9)),
    ])
    result = mcr_mofr(epochs)
    assert len(result) == 3 * 2 * 2 * 2  # arms x metrics x kinds x windows
    for arm in ("stopped", "untrained"):
        rows = result[result["arm_id"] == arm]
        assert len(rows) == 8 and rows["value"].isna().all()  # no "1-3" window made up for them
    assert set(result["window"]) == {"1-5", "6-8"}


def test_last_epoch_sets_the_windows_for_a_study_cut_short():
    got = values_by_key(mcr_mofr(arm_epochs(drop=[6, 7, 8]), last_epoch=8), "a")
    assert got[("accuracy", "MCR", "1-5")] == pytest.approx(0.10)
    assert np.isnan(got[("accuracy", "MCR", "6-8")])


def test_empty_table_and_fold_column():
    empty = mcr_mofr(pd.DataFrame(columns=["trial_id", "arm_id", "backbone", "init", "variant", "seed", "epoch", *CURVE]))
    assert empty.empty and "value" in empty.columns and "window" in empty.columns
    folded = mcr_mofr(arm_epochs().assign(fold=2))
    assert list(folded.columns[:6]) == ["backbone", "init", "variant", "seed", "fold", "arm_id"]
    assert (folded["fold"] == 2).all()


def test_replayed_epoch_last_row_wins():
    epochs = arm_epochs()
    replay = epochs[epochs["epoch"] == 5].assign(train_acc=0.9)  # a restore replayed epoch 5
    got = values_by_key(mcr_mofr(pd.concat([epochs, replay])), "a")
    assert got[("accuracy", "MCR", "1-5")] == pytest.approx((0.9 - 0.1) / 5)


# --------------------------------------------------------------------------- initial metrics


def test_initial_metrics_are_validation_values_after_epoch_1():
    curve = {k: list(v) for k, v in CURVE.items()}
    curve["val_acc"] = [0.10, 0.25, 0.30, 0.50, 0.40, 0.50, 0.45, 0.50, 0.50]  # best 0.50 first at epoch 3
    result = initial_metrics(pd.concat([arm_epochs(curve=curve), arm_epochs("untrained", drop=range(1, 9))]))
    row = result.set_index("arm_id").loc["a"]
    assert row["initial_acc"] == 0.25 and row["initial_loss"] == 1.60  # val at epoch 1
    assert row["initial_train_acc"] == 0.20 and row["initial_train_loss"] == 1.50
    assert row["best_val_acc"] == 0.50 and row["best_epoch"] == 3
    untrained = result.set_index("arm_id").loc["untrained"]
    assert np.isnan(untrained["initial_acc"]) and untrained["best_epoch"] == 0
    assert {"backbone", "init", "variant", "seed"} <= set(result.columns)


# --------------------------------------------------------------------------- Smelyakov tables


def mcr_rows(backbone, init, variant, seed, window, value, metric="accuracy", kind="MCR"):
    return {"backbone": backbone, "init": init, "variant": variant, "seed": seed, "arm_id": f"{backbone}_{init}_{variant}_s{seed}",
            "metric": metric, "kind": kind, "window": window, "value": value}


def test_smelyakov_tables_layout_and_seed_means():
    rows = []
    for backbone in ("resnet", "mobilenet"):  # order of appearance kept
        for init in ("random", "pretrained"):  # pretrained listed first, as in the paper
            for seed, offset in ((0, 0.0), (1, 0.2)):
                for window, base in (("1-5", 1.0), ("6-10", 2.0), ("11-12", 3.0)):
                    for metric in ("accuracy", "loss"):
                        for kind in ("MCR", "MOFR"):
                            sign = -1 if metric == "loss" else 1
                            rows.append(mcr_rows(backbone, init, "baseline", seed, window, sign * (base + offset), metric, kind))
    tables = smelyakov_tables(pd.DataFrame(rows))
    assert list(tables) == ["accuracy-based MCR", "loss-based MCR", "accuracy-based MOFR", "loss-based MOFR"]
    table = tables["accuracy-based MCR"]
    assert table.index.tolist() == ["resnet_pretrained", "resnet_random", "mobilenet_pretrained", "mobilenet_random"]
    assert table.columns.tolist() == ["1-5", "6-10", "11-12"]  # epoch order, not string order
    assert table.loc["mobilenet_random", "6-10"] == pytest.approx((2.0 + 2.2) / 2)
    assert tables["loss-based MOFR"].loc["resnet_pretrained", "11-12"] == pytest.approx(-(3.0 + 3.2) / 2)


def test_smelyakov_tables_name_variants_when_there_are_several_and_skip_nan_seeds():
    rows = [
        mcr_rows("vgg", "pretrained", "baseline", 0, "1-5", 0.1),
        mcr_rows("vgg", "pretrained", "baseline", 1, "1-5", np.nan),
        mcr_rows("vgg", "pretrained", "pseudo", 0, "1-5", 0.3),
        mcr_rows("vgg", "pretrained", "pseudo", 1, "1-5", 0.5),
    ]
    table = smelyakov_tables(pd.DataFrame(rows))["accuracy-based MCR"]
    assert table.index.tolist() == ["vgg_pretrained_baseline", "vgg_pretrained_pseudo"]
    assert table.loc["vgg_pretrained_baseline", "1-5"] == pytest.approx(0.1)
    assert table.loc["vgg_pretrained_pseudo", "1-5"] == pytest.approx(0.4)
    assert tables_all_nan(smelyakov_tables(pd.DataFrame(rows))["loss-based MCR"])  # no loss rows given


def tables_all_nan(table: pd.DataFrame) -> bool:
    return table.isna().to_numpy().all()


def test_smelyakov_tables_from_mcr_mofr_end_to_end():
    epochs = pd.concat([arm_epochs("p0", seed=0), arm_epochs("p1", seed=1), arm_epochs("r0", init="random")])
    table = smelyakov_tables(mcr_mofr(epochs))["loss-based MCR"]
    assert table.index.tolist() == ["resnet_pretrained", "resnet_random"]
    assert table.loc["resnet_pretrained", "1-5"] == pytest.approx(-0.24)


# --------------------------------------------------------------------------- seed statistics


def trial(backbone="resnet", init="pretrained", variant="baseline", seed=0, status="completed", **metrics):
    return {"trial_id": f"t{seed}", "arm_id": f"{backbone}_{init}_{variant}_s{seed}", "backbone": backbone, "init": init,
            "variant": variant, "seed": seed, "status": status, "error": "", "epochs_done": 8, **metrics}


def test_seed_summary_t_interval_on_a_known_sample():
    sample = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    trials = pd.DataFrame([trial(seed=s, test_acc=v) for s, v in enumerate(sample)]
                          + [trial(seed=9, status="failed", test_acc=100.0)])  # a failed trial never counts
    row = seed_summary(trials, ["test_acc"]).iloc[0]
    # mean 3.5; sum of squares 17.5, ddof=1 -> var 3.5; t(0.975, 5) = 2.5705818366 (table value)
    half = 2.5705818366 * np.sqrt(3.5) / np.sqrt(6)
    assert row["n"] == 6 and row["mean"] == pytest.approx(3.5) and row["std"] == pytest.approx(np.sqrt(3.5))
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((3.5 - half, 3.5 + half), rel=1e-9)
    scipy_low, scipy_high = stats.t.interval(0.95, 5, loc=np.mean(sample), scale=stats.sem(sample))
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((scipy_low, scipy_high))


def test_seed_summary_groups_single_seeds_and_groups_without_completed_trials():
    trials = pd.DataFrame([
        trial(init="pretrained", seed=0, test_acc=0.6, params_total=10),
        trial(init="pretrained", seed=1, test_acc=0.8, params_total=10),
        trial(init="random", seed=0, test_acc=0.4, params_total=10),
        trial(backbone="vgg", seed=0, status="failed", test_acc=np.nan, params_total=np.nan),
    ])
    summary = seed_summary(trials).set_index(["backbone", "init", "metric"])
    assert set(summary.index.get_level_values("metric")) == {"test_acc", "params_total"}  # seed, epochs_done left out
    assert list(summary.columns) == ["variant", "n", "mean", "std", "ci95_low", "ci95_high"]
    pretrained = summary.loc[("resnet", "pretrained", "test_acc")]
    assert pretrained["n"] == 2 and pretrained["mean"] == pytest.approx(0.7)
    assert pretrained["std"] == pytest.approx(np.sqrt(0.02))  # (0.1^2 + 0.1^2) / 1
    half = 12.7062047362 * np.sqrt(0.02) / np.sqrt(2)  # t(0.975, 1)
    assert pretrained["ci95_high"] == pytest.approx(0.7 + half)
    single = summary.loc[("resnet", "random", "test_acc")]
    assert single["n"] == 1 and single["mean"] == 0.4
    assert np.isnan(single["std"]) and np.isnan(single["ci95_low"]) and np.isnan(single["ci95_high"])
    assert summary.loc[("resnet", "pretrained", "params_total"), "std"] == 0.0
    failed = summary.loc[("vgg", "pretrained", "test_acc")]
    assert failed["n"] == 0 and np.isnan(failed["mean"])


def test_seed_summary_reads_nullable_integers_from_collect():
    trials = pd.DataFrame([trial(seed=s, best_epoch=e) for s, e in ((0, 3), (1, 5))])
    trials["best_epoch"] = trials["best_epoch"].astype("Int64")
    row = seed_summary(trials, ["best_epoch"]).iloc[0]
    assert row["mean"] == 4.0 and row["std"] == pytest.approx(np.sqrt(2.0))


# --------------------------------------------------------------------------- pairing


def test_pretrained_minus_random_paired_by_seed_with_a_missing_partner():
    trials = pd.DataFrame([
        trial(init="pretrained", seed=0, test_acc=0.70), trial(init="random", seed=0, test_acc=0.50),
        trial(init="pretrained", seed=1, test_acc=0.72), trial(init="random", seed=1, test_acc=0.49),
        trial(init="pretrained", seed=2, test_acc=0.71), trial(init="random", seed=2, test_acc=0.51),
        trial(init="pretrained", seed=3, test_acc=0.69), trial(init="random", seed=3, status="failed", test_acc=0.99),
        trial(init="random", seed=4, test_acc=0.10),  # no pretrained partner
    ])
    result = paired_differences(trials)
    assert list(result.columns) == DIFFERENCE_COLUMNS
    row = result.iloc[0]
    assert len(result) == 1 and row["comparison"] == "pretrained − random" and row["variant"] == "baseline"
    assert pd.isna(row["init"]) and row["metric"] == "test_acc"
    assert row["n_pairs"] == 3 and row["n_unpaired"] == 2  # seeds 3 (partner failed) and 4
    assert row["mean_diff"] == pytest.approx((0.20 + 0.23 + 0.20) / 3)
    reference = stats.ttest_rel([0.70, 0.72, 0.71], [0.50, 0.49, 0.51]).confidence_interval(0.95)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((reference.low, reference.high))
    assert row["method"] == "paired Student t" and row["p_sign_flip"] == pytest.approx(0.25)
    assert bool(row["claim"]) is True


def test_variant_minus_baseline_and_pairing_by_fold():
    trials = pd.DataFrame([
        {**trial(variant=variant, seed=0, test_acc=acc), "fold": fold}
        for variant, fold, acc in (
            ("baseline", 0, 0.50), ("baseline", 1, 0.60), ("baseline", 2, 0.55),
            ("pseudo", 0, 0.48), ("pseudo", 1, 0.63), ("pseudo", 2, 0.58),
        )
    ])
    row = paired_differences(trials, test_train_ratio=1 / 2).iloc[0]
    assert row["comparison"] == "pseudo − baseline" and row["init"] == "pretrained" and pd.isna(row["variant"])
    d = np.array([-0.02, 0.03, 0.03])
    assert row["n_pairs"] == 3 and row["mean_diff"] == pytest.approx(d.mean())
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) * np.sqrt(1 / 3 + 1 / 2)  # Nadeau & Bengio with k = 3
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert "Nadeau" in row["method"] and bool(row["claim"]) is False


def test_two_seed_pairs_claim_nothing_even_when_both_agree():
    # The old percentile bootstrap called this a difference: both pairs share a sign.
    trials = pd.DataFrame([trial(init=init, seed=seed, test_acc=acc) for init, seed, acc in (
        ("pretrained", 0, 0.70), ("random", 0, 0.50), ("pretrained", 1, 0.72), ("random", 1, 0.51))])
    row = paired_differences(trials).iloc[0]
    assert row["n_pairs"] == 2 and bool(row["claim"]) is False
    assert row["note"].startswith("too few seeds (n = 2): no claim")


def test_fold_ratio_only_for_subject_kfold():
    assert fold_test_train_ratio(SplitSpec(kind="subject_kfold", k=10)) == pytest.approx(1 / 9)
    assert fold_test_train_ratio(SplitSpec(kind="stratified", k=10)) is None
    assert fold_test_train_ratio(SplitSpec(ratios=(0.7, 0.1, 0.2))) is None


def test_did_not_learn_flags_flat_training_curves_only():
    epochs = pd.DataFrame(
        [{"arm_id": "flat", "epoch": e, "train_acc": 0.25 if e else 0.1} for e in range(4)]
        + [{"arm_id": "learns", "epoch": e, "train_acc": 0.2 + 0.1 * e} for e in range(4)]
        + [{"arm_id": "one_epoch", "epoch": e, "train_acc": 0.3} for e in range(2)]
    )
    flags = did_not_learn(epochs)
    assert bool(flags["flat"]) and not bool(flags["learns"]) and not bool(flags["one_epoch"])


def test_flat_arm_gives_zero_rates_not_nan():
    # The paper's vggfase_random row: 0 in every window, shown as such.
    flat = pd.DataFrame([{"backbone": "vggface", "init": "random", "variant": "baseline", "seed": 0, "arm_id": "f",
                          "epoch": e, "train_acc": 0.25, "val_acc": 0.25, "train_loss": 1.9, "val_loss": 1.9}
                         for e in range(11)])
    rates = mcr_mofr(flat, window=5)
    assert len(rates) == 8 * 1 and (rates["value"] == 0.0).all()


def test_single_pair_has_no_interval_and_absent_levels_give_no_comparison():
    trials = pd.DataFrame([trial(init="pretrained", test_acc=0.7), trial(init="random", test_acc=0.5)])
    row = paired_differences(trials).iloc[0]
    assert row["n_pairs"] == 1 and row["mean_diff"] == pytest.approx(0.2)
    assert np.isnan(row["ci_low"]) and np.isnan(row["ci_high"]) and bool(row["claim"]) is False
    only_pretrained = pd.DataFrame([trial(seed=s, test_acc=0.7) for s in range(3)])
    assert paired_differences(only_pretrained).empty


def test_paired_differences_other_metric_and_all_partners_failed():
    trials = pd.DataFrame([
        trial(init="pretrained", seed=0, test_macro_f1=0.6), trial(init="random", seed=0, status="failed"),
        trial(init="pretrained", seed=1, test_macro_f1=0.7), trial(init="random", seed=1, status="failed"),
    ])
    row = paired_differences(trials, metric="test_macro_f1").iloc[0]
    assert row["metric"] == "test_macro_f1" and row["n_pairs"] == 0 and row["n_unpaired"] == 2
    assert np.isnan(row["mean_diff"]) and bool(row["claim"]) is False


def test_pairs_the_grid_never_forms_give_no_rows():
    # The quick study's grid: pseudo_label only on the pretrained arm (random pseudo_label excluded).
    trials = pd.DataFrame([trial(init=i, variant=v, test_acc=0.5) for i, v in
                           (("pretrained", "baseline"), ("random", "baseline"), ("pretrained", "pseudo_label"))])
    result = paired_differences(trials)
    pairs = set(zip(result["comparison"], result["variant"].fillna("–"), result["init"].fillna("–")))
    assert pairs == {("pretrained − random", "baseline", "–"), ("pseudo_label − baseline", "–", "pretrained")}
