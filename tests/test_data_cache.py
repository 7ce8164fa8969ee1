"""The dataset cache: reuse without re-reading, rebuild on a changed source or option, atomic
writes, no cache after a failed load, and a FER2013-size CSV loaded, cached and re-loaded."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import USAGES, by_value, write_class_tree, write_fer_csv, write_image, write_rafdb

from ferbench.harness.data.cache import cache_root, write_cache
from ferbench.harness.data.dataset import FerDataset
from ferbench.harness.data.loaders import DataError, load_dataset
from ferbench.harness.spec import DataSpec, SplitSpec
from ferbench.harness.data.splits import make_splits
from ferbench.harness.data.synthfer import FER2013_COUNTS


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "datasets"


@pytest.fixture(autouse=True)
def info_notices(caplog):
    caplog.set_level(logging.INFO, logger="ferbench")


def notices(caplog) -> str:
    """The ferbench notices logged since the last call, one per line (what the CLI shows on stderr)."""
    text = "".join(f"{record.getMessage()}\n" for record in caplog.records if record.name.startswith("ferbench"))
    caplog.clear()
    return text


def load(path, data_format="auto", **options):
    return load_dataset(DataSpec(format=data_format, path=str(path), **options))


def cache_folders() -> list:
    root = cache_root()
    return sorted(root.iterdir()) if root.exists() else []


def same(a: FerDataset, b: FerDataset) -> bool:
    return (a.fingerprint() == b.fingerprint() and list(a.sources) == list(b.sources)
            and list(a.meta.get("official_split", [])) == list(b.meta.get("official_split", [])))


def test_second_load_reuses_the_cache_without_reading_the_source(tmp_path, caplog):
    csv = tmp_path / "fer2013.csv"
    write_fer_csv(csv, [0, 3, 6, 3])
    first = load(csv, "fer2013")
    [folder] = cache_folders()
    assert notices(caplog).splitlines()[-1] == f"data: wrote cache {folder}"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "fer2013" and manifest["source"] == str(csv)
    assert manifest["n_images"] == 4 and manifest["class_counts"] == {"angry": 1, "happy": 2, "neutral": 1}
    assert manifest["options"]["contempt"] == "keep" and manifest["fingerprint"]["files"] == 1
    assert manifest["created"] and manifest["ferbench_version"]
    # Same size and mtime, different bytes: a cache that re-read the file would fail here.
    stat = csv.stat()
    csv.write_bytes(b"x" * stat.st_size)
    os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = load(csv, "fer2013")
    assert notices(caplog).splitlines() == [f"data: cached {folder}"]
    assert same(first, again) and again.sources.dtype.kind == "U" and again.meta["official_split"].dtype.kind == "U"
    assert again.meta["format"] == "fer2013"


def test_changed_source_file_rebuilds_the_cache(tmp_path, caplog):
    csv = tmp_path / "fer2013.csv"
    write_fer_csv(csv, [0, 3, 6])
    load(csv, "fer2013")
    [folder] = cache_folders()
    header, line2, rest = csv.read_text().split("\n", 2)
    label, pixels, usage = line2.split(",")
    first, others = pixels.split(" ", 1)
    changed = str((int(first) + 1) % 10 + int(first) // 10 * 10)  # same number of digits, so same file size
    csv.write_text("\n".join([header, f"{label},{changed} {others},{usage}", rest]))
    os.utime(csv, ns=(time.time_ns(), csv.stat().st_mtime_ns + 10**9))
    notices(caplog)
    dataset = load(csv, "fer2013")
    assert notices(caplog).splitlines() == [f"data: wrote cache {folder}"]
    assert dataset.images[0, 0, 0] == int(changed)
    assert cache_folders() == [folder]  # rebuilt in place, the outdated copy removed


def test_added_image_or_changed_option_rebuilds(tmp_path, caplog):
    write_class_tree(tmp_path / "ck", {"anger": 1, "contempt": 1}, by_value, name="S005_001_{i:08d}.png")
    assert len(load(tmp_path / "ck", contempt="keep")) == 2
    assert len(load(tmp_path / "ck", contempt="drop")) == 1
    assert len(cache_folders()) == 2  # one per option set
    write_image(tmp_path / "ck" / "anger" / "S006_001_00000001.png", by_value("anger"))
    notices(caplog)
    assert len(load(tmp_path / "ck", contempt="drop")) == 2
    assert "data: wrote cache" in notices(caplog)
    assert list(load(tmp_path / "ck", contempt="drop").subjects) == [5, 6]
    assert "data: cached" in notices(caplog)


def test_rafdb_given_by_its_list_file_rebuilds_when_an_image_changes(tmp_path, caplog):
    write_rafdb(tmp_path / "raf")
    listing = tmp_path / "raf" / "EmoLabel" / "list_patition_label.txt"
    first = load(listing, "rafdb")
    image = tmp_path / "raf" / "Image" / "aligned" / "train_00002_aligned.jpg"
    write_image(image, 200, size=(10, 10), colour=True)
    os.utime(image, ns=(time.time_ns(), image.stat().st_mtime_ns + 10**9))
    notices(caplog)
    second = load(listing, "rafdb")
    assert "data: wrote cache" in notices(caplog)
    assert second.images[1, ..., 0].min() > first.images[1, ..., 0].max() + 150  # the new image, not the cached one


def test_cache_false_and_synthfer_write_nothing(tmp_path):
    write_fer_csv(tmp_path / "fer2013.csv", [1, 2])
    load(tmp_path / "fer2013.csv", cache=False)
    load_dataset(DataSpec(format="synthfer", num_images=14))
    assert not cache_root().exists()


def test_failed_load_leaves_no_cache(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("emotion,pixels\n0,1 2 3 4\n1,1 2 x 4\n")
    with pytest.raises(DataError, match="line 3"):
        load(csv)
    assert not cache_root().exists()
    write_class_tree(tmp_path / "faces", {"happy": 1})
    (tmp_path / "faces" / "sad").mkdir()
    with pytest.raises(DataError, match="empty class folder"):
        load(tmp_path / "faces", "folder")
    assert not cache_root().exists()


def test_interrupted_cache_write_leaves_neither_folder_nor_temp(tmp_path):
    dataset = FerDataset(name="x", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]), class_names=("a", "b"),
                         meta={"unsaveable": np.array([object(), object()])})  # np.save refuses object arrays unpickled
    folder = cache_root() / "x-0"
    with pytest.raises(ValueError):
        write_cache(folder, dataset, {})
    assert list(cache_root().iterdir()) == []


def test_strict_load_does_not_take_a_cache_with_skipped_files(tmp_path):
    write_class_tree(tmp_path / "faces", {"happy": 2}, by_value)
    broken = tmp_path / "faces" / "happy" / "001.png"
    broken.write_text("broken")
    assert len(load(tmp_path / "faces", "folder")) == 1
    with pytest.raises(DataError, match=f"^{broken}: unreadable image"):
        load(tmp_path / "faces", "folder", strict=True)


def test_a_cache_inside_the_dataset_folder_is_not_part_of_its_fingerprint(tmp_path, monkeypatch, caplog):
    write_class_tree(tmp_path, {"happy": 2}, by_value)
    load(tmp_path, "folder")  # the autouse cache folder lies in tmp_path, beside happy/
    notices(caplog)
    load(tmp_path, "folder")
    assert notices(caplog).startswith("data: cached")


def test_fer2013_size_csv_loads_caches_and_reloads(tmp_path, caplog):
    """35,887 rows of 48×48 like FER2013; 64 distinct rows in a fixed order keep writing it fast."""
    rng = np.random.default_rng(0)
    distinct = rng.integers(0, 256, size=(64, 48 * 48))
    text = [" ".join(map(str, row)) for row in distinct]
    usage = np.repeat(USAGES, [28709, 3589, 3589])
    order = rng.integers(0, 64, len(usage))
    labels = rng.permutation(np.repeat(np.arange(7), FER2013_COUNTS))  # FER2013's own class sizes
    csv = tmp_path / "fer2013.csv"
    with open(csv, "w") as handle:
        handle.write("emotion,pixels,Usage\n")
        handle.writelines(f"{label},{text[row]},{part}\n" for label, row, part in zip(labels, order, usage))
    start = time.perf_counter()
    first = load(csv, "fer2013")
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = load(csv, "fer2013")
    cached_s = time.perf_counter() - start
    assert first.images.shape == (35887, 48, 48) and dict(zip(*np.unique(first.meta["official_split"], return_counts=True))) == {
        "Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}
    np.testing.assert_array_equal(first.images.reshape(len(usage), -1), distinct[order])
    np.testing.assert_array_equal(first.labels, labels)
    assert same(first, cached) and "data: cached" in notices(caplog)
    print(f"FER2013-size CSV: first load {first_s:.2f} s, cached load {cached_s:.2f} s")
    # The Smelyakov split: stratified 70/10/20, random_state 42, each class within one image of its share.
    [split] = make_splits(cached, SplitSpec())
    for name, ratio in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
        counts = np.bincount(cached.labels[split[name]], minlength=7)
        assert np.abs(counts - ratio * np.array(FER2013_COUNTS)).max() <= 1, (name, counts)


def test_every_cache_folder_honours_xdg_cache_home_and_the_ferbench_variables(tmp_path, monkeypatch):
    from ferbench.cache_dirs import cache_dir, weights_dir
    from ferbench.harness.data.cache import cache_root
    from ferbench.harness.study.storage import RemoteStorage
    from ferbench.harness.train.synth_identity import synth_identity_dir

    for name in ("FERBENCH_CACHE_DIR", "FERBENCH_WEIGHTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    home = tmp_path / "xdg" / "ferbench"
    assert (cache_root(), synth_identity_dir(), weights_dir()) == (home / "datasets", home / "synth-identity", home / "weights")
    assert RemoteStorage("bucket", "prefix").mirror("exp") == home / "s3" / "bucket" / "prefix" / "exp"
    monkeypatch.setenv("FERBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FERBENCH_WEIGHTS_DIR", str(tmp_path / "weights"))
    assert (cache_root(), weights_dir()) == (tmp_path / "cache" / "datasets", tmp_path / "weights")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("FERBENCH_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "ferbench"
