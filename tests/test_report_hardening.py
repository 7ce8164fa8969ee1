"""Nothing lost, nothing executed: a damaged trial file marks its one arm (``damaged: FILE``) and the rest of
the report renders; a damaged manifest or grid is one error naming it; and names a user chose (study, run,
backbone, class, file names, error messages) reach report.md and report.html as text, never as a link or
script. The session's reference experiment (conftest's ``reference_study``, with pseudo-labelling arms) is
copied and damaged per test."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferbench.harness.study.atomic import atomic_write_json
from ferbench.harness.cli.main import main
from ferbench.harness.study.layout import ROUNDS_FILE, TEST_PER_CLASS_FILE, TEST_PREDICTIONS_FILE, experiment_paths
from ferbench.reports import build_report
from ferbench.reports.collect import _checkpoint_history, _trial_dir, collect, read_per_class, read_predictions, try_read
from ferbench.reports.escaping import md_code
from ferbench.reports.html import render_html, safe_href, safe_src
from ferbench.reports.markdown import markdown_table, md_cell
from helpers import Page

BASE0, BASE1 = "small_cnn_random_baseline_s0", "small_cnn_random_baseline_s1"
PL0, PL1 = "small_cnn_random_pseudo_label_s0", "small_cnn_random_pseudo_label_s1"
NUMBERS = ["trial_id", "status", "epochs_done", "final_val_acc", "best_val_acc", "test_acc", "test_macro_f1", "params_trainable"]
EVIL = "[r](javascript:alert(1))"


@pytest.fixture
def study(reference_study) -> Path:
    """The reference experiment's folder: read only."""
    return reference_study.experiment_dir


@pytest.fixture
def experiment(study, tmp_path) -> Path:
    """A private copy of the study, to damage."""
    return Path(shutil.copytree(study, tmp_path / "tiny"))


def _arm(experiment: Path, arm_id: str) -> Path:
    folder = _trial_dir(experiment, arm_id)
    assert folder is not None
    return folder


def _rel(path: Path, experiment: Path) -> str:
    return path.relative_to(experiment).as_posix()


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _trials(report_dir: Path) -> pd.DataFrame:
    return pd.read_csv(report_dir / "tables" / "trials.csv", keep_default_na=False).set_index("arm_id")


def _table(report_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(report_dir / "tables" / f"{name}.csv")


def _checkpoints(trial_dir: Path) -> list[Path]:
    return sorted(trial_dir.glob("checkpoint_*"))


# --------------------------------------------------------------------------- damaged trial files


def test_the_undamaged_study_has_nothing_damaged(study):
    trials = _trials(study / "report")
    assert (trials["damaged"] == "").all()
    assert "damaged:" not in (study / "report" / "report.md").read_text()
    assert set(_table(study / "report", "pseudo_label_rounds")["arm_id"]) == {PL0, PL1}  # rounds files read


def test_damaged_files_mark_their_arm_and_the_rest_renders(study, experiment, capsys):
    reference = study / "report"
    cut_scores = _arm(experiment, BASE0) / TEST_PER_CLASS_FILE
    _truncate(cut_scores)  # "Expecting value: line 5 column 2" before: the whole report failed
    empty_predictions = _arm(experiment, BASE1) / TEST_PREDICTIONS_FILE
    empty_predictions.write_bytes(b"")  # a traceback before
    cut_rounds = _arm(experiment, PL0) / ROUNDS_FILE
    _truncate(cut_rounds, 0.3)
    newest = _checkpoints(_arm(experiment, PL1))[-1] / "history.json"
    newest.write_text("")  # a full disk cut the newest checkpoint; the older one is intact: not damage
    stale = experiment / f"{BASE0}_fffff_00099"  # a second folder of the arm that got less far (a resume)
    shutil.copytree(_arm(experiment, BASE0), stale)
    shutil.rmtree(_checkpoints(stale)[-1])
    os.utime(stale, (stale.stat().st_mtime + 60,) * 2)  # and newer: progress decides, not the time
    manifest = json.loads(experiment_paths(experiment)["manifest"].read_text())
    manifest["data_summary"] = {"name": "cut"}
    atomic_write_json(experiment_paths(experiment)["manifest"], manifest)

    assert main(["report", str(experiment)]) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err and "Report:" in printed.out

    report_dir = experiment / "report"
    trials, before = _trials(report_dir), _trials(reference)
    damaged = {BASE0: _rel(cut_scores, experiment), BASE1: _rel(empty_predictions, experiment),
               PL0: _rel(cut_rounds, experiment), PL1: ""}
    assert trials["damaged"].to_dict() == {**{arm: "" for arm in trials.index}, **damaged}
    pd.testing.assert_frame_equal(trials[NUMBERS], before[NUMBERS])  # every arm's numbers as before
    assert not trials.index.str.contains("fffff").any() and trials.loc[BASE0, "trial_id"] != "fffff_00099"

    report = (report_dir / "report.md").read_text()
    arms_row = next(line for line in report.splitlines() if line.startswith(f"| {BASE0} |"))
    assert arms_row.rstrip(" |").endswith(f"damaged: {md_cell(damaged[BASE0])}")
    for arm in (BASE0, BASE1, PL0):  # the note where the arm's part of a section would be
        assert f"- {md_code(arm)}: damaged: {md_cell(damaged[arm])}" in report
    assert "## Per-class F1 on the test split" in report and "## Pseudo-labelling" in report
    assert f"damaged: {md_cell('ferbench/manifest.json')}" in report.split("## Data", 1)[1]

    per_class, per_class_before = _table(report_dir, "per_class"), _table(reference, "per_class")
    assert BASE0 not in set(per_class["arm_id"])
    pd.testing.assert_frame_equal(per_class.reset_index(drop=True),
                                  per_class_before[per_class_before["arm_id"] != BASE0].reset_index(drop=True))
    rounds, rounds_before = _table(report_dir, "pseudo_label_rounds"), _table(reference, "pseudo_label_rounds")
    assert set(rounds["arm_id"]) == {PL1}
    pd.testing.assert_frame_equal(rounds, rounds_before[rounds_before["arm_id"] == PL1].reset_index(drop=True))
    samples, samples_before = _table(report_dir, "sample_predictions"), _table(reference, "sample_predictions")
    base = "small_cnn_random_baseline"  # BASE1's predictions are the damaged file
    pd.testing.assert_frame_equal(samples[samples["model"] != base].reset_index(drop=True),
                                  samples_before[samples_before["model"] != base].reset_index(drop=True))
    assert set(samples.loc[samples["model"] == base, "n_trials"]) == {1}  # the baseline from its intact seed
    assert (report_dir / "report.html").stat().st_size > 10_000


def test_a_cut_newest_checkpoint_falls_back_to_the_older_one(experiment):
    trial = _arm(experiment, BASE1)
    older, newest = _checkpoints(trial)[-2:]
    older_epoch = max(row["epoch"] for row in json.loads((older / "history.json").read_text()))
    assert max(row["epoch"] for row in _checkpoint_history(trial)) > older_epoch
    _truncate(newest / "history.json")
    assert max(row["epoch"] for row in _checkpoint_history(trial)) == older_epoch
    (trial / "result.json").unlink()  # Tune's rows lost too: the checkpoint's history is all there is
    trials = collect(experiment)[1].set_index("arm_id")
    assert trials.loc[BASE1, "epochs_done"] == older_epoch and trials.loc[BASE1, "damaged"] == ""
    assert trials.loc[BASE1, "status"] == "incomplete" and trials.loc[BASE0, "status"] == "completed"

    (older / "history.json").write_text("[")  # no intact checkpoint left: that is damage, named
    trials = collect(experiment)[1].set_index("arm_id")
    assert trials.loc[BASE1, "damaged"] == _rel(newest / "history.json", experiment)


@pytest.mark.parametrize("name", ["manifest", "grid"])
def test_a_damaged_manifest_or_grid_is_one_error_naming_it(experiment, name, capsys):
    path = experiment_paths(experiment)[name]
    _truncate(path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: damaged \("):
        build_report(experiment)
    assert main(["report", str(experiment)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err


# --------------------------------------------------------------------------- readers and the trial folder


def test_readers_refuse_cut_foreign_and_pickled_files(tmp_path):
    good = {"class_names": ["a", "b"], "precision": [1, 0.5], "recall": [1, 1], "f1": [1, 0.6], "support": [1, 2],
            "confusion_matrix": [[1, 0], [1, 1]]}
    path = tmp_path / "scores.json"
    for broken in ({**good, "f1": [1]}, {k: v for k, v in good.items() if k != "support"}, [good],
                   {**good, "confusion_matrix": [[1, 0]]}):
        path.write_text(json.dumps(broken))
        assert try_read(path, read_per_class)[0] is None
    path.write_text(json.dumps(good)[:40])
    assert "Expecting" in try_read(path, read_per_class)[1] or "Unterminated" in try_read(path, read_per_class)[1]
    path.write_text(json.dumps(good))
    assert try_read(path, read_per_class) == (good, "")

    npz = tmp_path / "predictions.npz"
    npz.write_bytes(b"")
    assert try_read(npz, read_predictions)[0] is None
    np.savez(npz, indices=np.arange(2), probabilities=np.array([object(), object()], dtype=object))
    assert "pickle" in try_read(npz, read_predictions)[1]  # never unpickled
    np.savez(npz, indices=np.arange(2))
    assert try_read(npz, read_predictions)[1].startswith("missing")
    np.savez(npz, indices=np.arange(2), probabilities=np.full((2, 3), 1 / 3))
    assert try_read(npz, read_predictions)[0]["probabilities"].shape == (2, 3)


def _fake_trial(experiment: Path, name: str, epochs: int) -> Path:
    folder = experiment / name
    atomic_write_json(folder / "params.json", {})
    if epochs >= 0:
        atomic_write_json(folder / "checkpoint_000000" / "history.json", [{"epoch": e} for e in range(epochs + 1)])
    return folder


def test_trial_folder_is_the_arms_own_and_the_furthest(tmp_path):
    short, long = "timm-x_random_baseline_s0", "timm-x_random_baseline_s0_y_random_baseline_s0"
    atomic_write_json(experiment_paths(tmp_path)["grid"], [{"arm_id": short, "status": "scheduled"},
                                                           {"arm_id": long, "status": "scheduled"}])
    own = _fake_trial(tmp_path, f"{short}_aaaaa_00000", 2)
    other = _fake_trial(tmp_path, f"{long}_aaaaa_00001", 5)
    assert _trial_dir(tmp_path, short) == own and _trial_dir(tmp_path, long) == other
    resumed = _fake_trial(tmp_path, f"{short}_bbbbb_00000", 4)
    stale = _fake_trial(tmp_path, f"{short}_ccccc_00000", 1)
    os.utime(stale, (resumed.stat().st_mtime + 60,) * 2)
    assert _trial_dir(tmp_path, short) == resumed  # the furthest, though not the newest
    atomic_write_json(own / "checkpoint_000001" / "history.json", [{"epoch": e} for e in range(5)])
    os.utime(own, (resumed.stat().st_mtime + 120,) * 2)
    assert _trial_dir(tmp_path, short) == own  # a tie on progress: the newest


# --------------------------------------------------------------------------- escaping and the HTML sanitiser


class Elements(Page):
    """Every element's tag and attributes, and the page's text, as Chromium left them."""

    def __init__(self, text: str) -> None:
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        super().__init__(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        super().handle_starttag(tag, attrs)

    def handle_data(self, data):
        self.text.append(data)
        super().handle_data(data)


def test_markdown_table_escapes_text_keeps_numbers_and_own_markup():
    frame = pd.DataFrame({"arm": [EVIL, "a|b `c`", "small_cnn_s0"], "f1 <x>": [0.5, float("nan"), 1.0],
                          "count": ["6 (14.3%)", "*bold*", "_x_"], "verdict": ["**differs**", "– (no pairs)", "0.42 [0.4, 0.44]"]})
    text = markdown_table(frame, formatted=["verdict"])
    assert text.splitlines()[0] == "| arm | f1 &lt;x> | count | verdict |"
    assert text.splitlines()[2:] == [
        r"| \[r\](javascript:alert(1)) | 0.500 | 6 (14.3%) | **differs** |",
        r"| a\|b \`c\` | – | \*bold\* | – (no pairs) |",
        r"| small_cnn_s0 | 1.000 | \_x\_ | 0.42 [0.4, 0.44] |",
    ]
    page = Page(render_html(f"## T\n\n{text}", Path(".")))
    assert page.links == ["#t"]  # the contents entry only
    assert page.tables[0][1] == [EVIL, "0.500", "6 (14.3%)", "differs"]
    assert page.tables[0][2][:3] == ["a|b `c`", "–", "*bold*"]


@pytest.mark.parametrize("url", ["javascript:alert(1)", " JaVaScRiPt:alert(1)", "java\tscript:alert(1)", "&#106;avascript:x",
                                 "&#x6A;avascript&colon;x", "&amp;#106;avascript:x", "vbscript:x", "data:text/html,<b>",
                                 "file:///etc/passwd", "mailto:a@b.c"])
def test_sanitiser_drops_links_that_could_run_script(url):
    assert not safe_href(url) and not safe_src(url)


def test_sanitiser_keeps_web_relative_and_anchor_links_and_embedded_images():
    assert all(safe_href(u) for u in ("https://example.org/x", "http://a", "figures/a.png", "#per-class", "a/b:c"))
    assert safe_src("data:image/png;base64,AAAA") and safe_src("figures/a.png")
    assert not safe_src("data:image/svg+xml,<svg onload=alert(1)>") and not safe_src("//example.org/a.png")


def test_rendered_markdown_runs_nothing():
    text = ("# FERBench report — x\n\n- [a](javascript:alert(1)) [b](&#106;avascript:alert(1)) [c]( JAVASCRIPT:x) "
            "[d][1] <a@b.c> ![i](javascript:alert(1)) [ok](https://example.org)\n"
            "- <a href=\"javascript:alert(1)\">raw</a> <img src=x onerror=alert(1)> <script>alert(1)</script>\n\n"
            "[1]: javascript:alert(2)\n")
    rendered = render_html(text, Path("."))
    page = Elements(rendered)
    assert page.links == ["https://example.org"] and page.images == []
    assert [tag for tag, _ in page.elements].count("script") == 1
    assert [name for _, attrs in page.elements for name in attrs if name.startswith("on")] == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered


# --------------------------------------------------------------------------- in Chromium


def test_untrusted_names_reach_the_page_as_text_in_chromium(chromium, experiment, tmp_path):
    paths = experiment_paths(experiment)
    manifest = json.loads(paths["manifest"].read_text())
    class_name = "`happy` [c](javascript:alert(3))"
    manifest.update(study=EVIL, experiment="<script>alert(2)</script>", created="<img src=x onerror=alert(4)>")
    manifest["dataset"]["name"] = "[d](JaVaScRiPt:alert(5))"
    manifest["dataset"]["class_names"][3] = class_name
    manifest["versions"]["torch"] = "[v](data:text/html,<script>alert(6)</script>)"
    atomic_write_json(paths["manifest"], manifest)
    arms = json.loads(paths["grid"].read_text())
    for arm in arms:
        if arm["arm_id"] == BASE1:  # an arm whose reason (a file name with backticks) is shown
            arm.update(status="unavailable", reason="weights file `w``.pth` [f](javascript:alert(7)) missing")
        if arm["variant"] == "pseudo_label":  # a backbone name from the user's spec
            arm["backbone"] = "timm:[b](javascript:alert(8))"
    atomic_write_json(paths["grid"], arms)
    scores_path = _arm(experiment, BASE0) / TEST_PER_CLASS_FILE
    scores = json.loads(scores_path.read_text())
    scores["class_names"][3] = class_name
    atomic_write_json(scores_path, scores)

    report_dir = build_report(experiment)
    markdown_text = (report_dir / "report.md").read_text()
    outside_code = re.sub(r"(`+).+?\1", "", re.sub(r"\\.", "", markdown_text))  # escapes, then code spans, out
    assert not re.search(r"\]\(\s*(javascript|vbscript|data)|<(script|img)", outside_code, re.I)
    page = Elements(chromium(report_dir / "report.html", tmp_path / "profile", "--dump-dom"))
    tags = [tag for tag, _ in page.elements]
    assert tags.count("script") == 1  # the report's own sorting script, nothing else
    assert "img" in tags and all(a["src"].startswith("data:image/png;base64,") for t, a in page.elements if t == "img")
    handlers = [(tag, name) for tag, attrs in page.elements for name in attrs if name.lower().startswith("on")]
    assert handlers == []
    hrefs = [attrs["href"] for tag, attrs in page.elements if "href" in attrs]
    assert hrefs and all(href.startswith("#") for href in hrefs)  # the contents' anchors only
    text = "".join(page.text)
    for shown in (EVIL, "<script>alert(2)</script>", "[d](JaVaScRiPt:alert(5))", class_name, "timm:[b](javascript:alert(8))",
                  "weights file `w``.pth` [f](javascript:alert(7)) missing"):
        assert shown in text, shown


def test_a_study_whose_every_trial_failed_before_its_first_row_still_summarises():
    """No trial reported a metric: the summary has its groups and no values, instead of a pandas error."""
    import pandas as pd

    from ferbench.reports.derived import seed_summary

    trials = pd.DataFrame({"trial_id": ["a", "b"], "arm_id": ["x_s0", "x_s1"], "backbone": "x", "init": "random",
                           "variant": "baseline", "seed": [0, 1], "status": "failed", "error": "boom"})
    summary = seed_summary(trials)
    assert summary.empty and {"backbone", "metric", "n", "mean"} <= set(summary.columns)
