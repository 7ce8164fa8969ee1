"""The FER2013-format → CK+ demo of the Moravčík thesis's pipeline (benchmarks/moravcik_ckplus_demo.py), end to end at
a tiny size: a FER2013 CSV trains the final CNN with CK+ as an extra test set, and the CK+ study starts from that arm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CKPLUS48 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ckplus48"


@pytest.mark.usefixtures("benchmarks_on_path")
def test_the_demo_csv_is_fer2013_format_with_its_three_usages(tmp_path):
    from benchmarks.moravcik_ckplus_demo import USAGES, write_fer2013_csv
    from ferbench.harness.data.loaders import load_dataset
    from ferbench.harness.spec import DataSpec

    path = write_fer2013_csv(tmp_path / "fer2013.csv", 200)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["emotion", "pixels", "Usage"] and set(frame["Usage"]) == set(USAGES)
    assert all(len(pixels.split()) == 48 * 48 for pixels in frame["pixels"])
    dataset = load_dataset(DataSpec(format="fer2013", path=str(path), cache=False))
    assert dataset.images.shape == (200, 48, 48) and np.array_equal(dataset.labels, frame["emotion"].to_numpy())


@pytest.mark.e2e  # two whole studies in child processes
@pytest.mark.skipif(not CKPLUS48.is_dir(), reason=f"the CK+ 48x48 set is not at {CKPLUS48}")
@pytest.mark.usefixtures("benchmarks_on_path")
def test_the_fer2013_format_to_ckplus_demo_runs_end_to_end(tmp_path, capsys):
    from benchmarks.moravcik_ckplus_demo import SOURCE_ARM, main

    assert main(["--ckplus", str(CKPLUS48), "--out", str(tmp_path), "--images", "400", "--epochs", "1",
                 "--transfer-epochs", "1", "--cpu", "1"]) == 0
    source = pd.read_csv(tmp_path / "fer2013" / "report" / "tables" / "trials.csv").set_index("arm_id").loc[SOURCE_ARM]
    cross = pd.read_csv(tmp_path / "fer2013" / "report" / "tables" / "cross_dataset.csv")
    assert source["status"] == "completed" and cross["n_images"].tolist() == [981]  # contempt → happy: nothing dropped
    assert cross["acc"].iloc[0] == pytest.approx(source["cross_ckplus_acc"])
    transfer = pd.read_csv(tmp_path / "ckplus" / "report" / "tables" / "trials.csv")
    assert set(transfer["status"]) == {"completed"} and len(transfer) == 2
    assert all(SOURCE_ARM in weights for weights in transfer["weights_source"])
    assert "CK+ transfer study" in capsys.readouterr().out
