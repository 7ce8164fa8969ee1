"""Cross-dataset label mapping (``eval.datasets``): names, ``map`` and dropping, and the Moravčík thesis's mass-centre
method (§6.4.1–6.4.2) on tiny hand-made 2×2 images whose medoids and nearest centres are worked out below by hand;
and the spec's lines for bad ``eval`` settings."""

from __future__ import annotations

import numpy as np
import pytest

from ferbench.harness.data.label_mapping import DROPPED, HOW, image_features, map_labels, mass_centres, medoid
from ferbench.harness.spec import SpecError, load_spec

# The training data: two classes of three 2×2 grey images each (pixels read row by row).
#   happy  H1 = 0 0 0 0        H2 = 0 0 0 100       H3 = 100 100 0 0
#   sad    S1 = 200 ×4         S2 = 200 200 250 250  S3 = 250 ×4
# pixel (sum of |a − b| over the 4 pixels):
#   happy: H1–H2 100, H1–H3 200, H2–H3 300 → totals H1 300, H2 400, H3 500 → centre H1 (index 0)
#   sad:   S1–S2 100, S1–S3 200, S2–S3 100 → totals 300, 200, 300          → centre S2 (index 4)
# histogram (frequencies per intensity, sum of |a − b| over the bins):
#   H1 {0: 1}, H2 {0: .75, 100: .25}, H3 {0: .5, 100: .5} (the same histogram however its pixels lie):
#   H1–H2 .5, H1–H3 1, H2–H3 .5 → totals 1.5, 1, 1.5 → centre H2 (index 1)
#   S1 {200: 1}, S2 {200: .5, 250: .5}, S3 {250: 1}: S1–S2 1, S1–S3 2, S2–S3 1 → centre S2 (index 4)
SOURCE = np.array([[0, 0, 0, 0], [0, 0, 0, 100], [100, 100, 0, 0],
                   [200, 200, 200, 200], [200, 200, 250, 250], [250, 250, 250, 250]], np.uint8).reshape(6, 2, 2)
SOURCE_LABELS = np.array([0, 0, 0, 1, 1, 1])
SOURCE_NAMES = ("happy", "sad")
PIXEL_CENTRES, HISTOGRAM_CENTRES = {0: 0, 1: 4}, {0: 1, 1: 4}

# The other dataset: its own classes happy, contempt and neutral (neutral is no training class).
#   T0 happy    0 0 0 0          pixel: happy 0,    sad 900   hist: happy .5,  sad 2   → happy / happy
#   T1 contempt 0 0 0 100        pixel: happy 100,  sad 800   hist: happy 0,   sad 2   → happy / happy
#   T2 neutral  250 250 200 200  pixel: happy 900,  sad 200   hist: happy 2,   sad 0   → sad / sad
#   T3 neutral  0 0 100 0        pixel: happy 100,  sad 800   hist: happy 0,   sad 2   → happy / happy
#   T4 happy    200 200 250 250  pixel: happy 900,  sad 0     hist: happy 2,   sad 0   → sad / sad
#   T5 neutral  100 100 100 240  pixel: happy 540,  sad 360   hist: happy 1.5, sad 2   → sad / happy
# (pixel distances to H1 and S2; histogram distances to H2 and S2; T5 is where the two differences disagree)
TARGET = np.array([[0, 0, 0, 0], [0, 0, 0, 100], [250, 250, 200, 200], [0, 0, 100, 0], [200, 200, 250, 250],
                   [100, 100, 100, 240]], np.uint8).reshape(6, 2, 2)
TARGET_LABELS = np.array([0, 1, 2, 2, 0, 2])
TARGET_NAMES = ("happy", "contempt", "neutral")
NAME, MAP, CENTRE, GONE = (HOW.index(way) for way in ("name", "map", "mass_centre", "dropped"))


def mapped(**options):
    return map_labels(TARGET_LABELS, TARGET_NAMES, SOURCE_NAMES, options.pop("mapping", {}), options.pop("unmapped", "drop"),
                      target_images=TARGET, source_images=SOURCE, source_labels=SOURCE_LABELS, **options)


@pytest.mark.parametrize("distance, centres", [("pixel", PIXEL_CENTRES), ("histogram", HISTOGRAM_CENTRES)])
def test_the_mass_centre_of_a_class_is_its_image_with_the_lowest_total_difference(distance, centres):
    assert mass_centres(SOURCE, SOURCE_LABELS, 2, distance, max_images=10, seed=0) == centres


def test_histograms_are_frequencies_and_pixels_are_the_pixels():
    histogram = image_features(SOURCE[[1]], "histogram")[0]
    assert histogram[0] == 0.75 and histogram[100] == 0.25 and histogram.sum() == 1 and len(histogram) == 256
    assert image_features(SOURCE[[2]], "pixel").tolist() == [[100, 100, 0, 0]]
    assert medoid(image_features(np.zeros((3, 2, 2), np.uint8), "pixel")) == 0  # a tie: the first


def test_names_count_as_themselves_map_goes_first_and_the_rest_is_dropped():
    plain = mapped()
    assert plain.labels.tolist() == [0, DROPPED, DROPPED, DROPPED, 0, DROPPED]
    contempt_happy = mapped(mapping={"contempt": "happy"})
    assert contempt_happy.labels.tolist() == [0, 0, DROPPED, DROPPED, 0, DROPPED]
    assert contempt_happy.how.tolist() == [NAME, MAP, GONE, GONE, NAME, GONE]
    assert contempt_happy.counts() == {"name": 2, "map": 1, "mass_centre": 0, "dropped": 3}
    assert contempt_happy.medoids == {}  # no mass centre is searched when nothing needs one
    assert contempt_happy.confusion(TARGET_LABELS, 3, 2).tolist() == [[2, 0, 0], [1, 0, 0], [0, 0, 3]]


@pytest.mark.parametrize("distance, labels", [("pixel", [0, 0, 1, 0, 0, 1]), ("histogram", [0, 0, 1, 0, 0, 0])])
def test_unmapped_images_go_to_the_nearest_mass_centre_and_the_others_keep_their_class(distance, labels):
    result = mapped(mapping={"contempt": "happy"}, unmapped="mass_centre", distance=distance)
    assert result.labels.tolist() == labels  # T4 keeps happy (its name) though its image is sad's centre
    assert result.how.tolist() == [NAME, MAP, CENTRE, CENTRE, NAME, CENTRE]
    assert result.medoids == (PIXEL_CENTRES if distance == "pixel" else HISTOGRAM_CENTRES)


@pytest.mark.parametrize("distance, labels", [("pixel", [0, 0, 1, 0, 1, 1]), ("histogram", [0, 0, 1, 0, 1, 0])])
def test_remap_all_relabels_every_image_by_its_nearest_mass_centre(distance, labels):
    result = mapped(unmapped="mass_centre", remap="all", distance=distance)
    assert result.labels.tolist() == labels and (result.how == CENTRE).all()
    # The thesis's Fig. 6.10: rows its own labels (happy, contempt, neutral), columns the class given (happy, sad, dropped).
    rows = {"pixel": [[1, 1, 0], [1, 0, 0], [1, 2, 0]], "histogram": [[1, 1, 0], [1, 0, 0], [2, 1, 0]]}[distance]
    assert result.confusion(TARGET_LABELS, 3, 2).tolist() == rows


def test_mass_centres_are_searched_in_a_seeded_sample_of_max_images():
    labels = np.zeros(40, np.int64)
    images = np.arange(40, dtype=np.uint8).repeat(4).reshape(40, 2, 2)  # image i is i everywhere
    # All 40: the middle image (19 or 20 tie; the first wins). A sample of 5: the sample's middle image, the same for a seed.
    assert mass_centres(images, labels, 1, "pixel", max_images=40, seed=0) == {0: 19}
    picked = mass_centres(images, labels, 1, "pixel", max_images=5, seed=3)
    sample = np.sort(np.random.default_rng(3).choice(40, 5, replace=False))
    assert picked == {0: int(sample[2])} == mass_centres(images, labels, 1, "pixel", max_images=5, seed=3)


def test_a_class_without_training_images_has_no_centre_and_receives_no_image():
    result = map_labels(TARGET_LABELS, TARGET_NAMES, ("happy", "sad", "fear"), {}, "mass_centre", target_images=TARGET,
                        source_images=SOURCE, source_labels=SOURCE_LABELS, distance="pixel", remap="all")
    assert result.medoids == PIXEL_CENTRES and 2 not in result.labels


# --------------------------------------------------------------------------- the spec's lines


CKPLUS = "{format: ckplus, path: /data/ckplus}"


def spec_error(*datasets: str, extra: tuple[str, ...] = ()) -> str:
    with pytest.raises(SpecError) as err:
        load_spec("quick", [f"eval.datasets=[{', '.join(datasets)}]", *extra])
    return str(err.value)


def test_a_valid_eval_section_reads_with_canonical_class_names():
    spec = load_spec("quick", [f"eval.datasets=[{{name: ck, data: {CKPLUS}, map: {{Contempt: happiness}}, unmapped: "
                               "mass_centre, mass_centre: {distance: pixel}}]"])
    (entry,) = spec.eval.datasets
    assert entry.map == {"contempt": "happy"} and entry.mass_centre.distance == "pixel"
    assert entry.mass_centre.remap == "unmapped" and entry.mass_centre.max_images == 1000
    assert load_spec("quick").eval.datasets == []


@pytest.mark.parametrize("datasets, line", [
    ((f"{{name: ck, data: {CKPLUS}}}", f"{{name: ck, data: {CKPLUS}}}"),
     "eval.datasets: the name(s) ck are used twice; give each dataset its own name"),
    ((f"{{name: 'ck plus', data: {CKPLUS}}}",), "eval.datasets.0.name: not a plain name, got 'ck plus'"),
    ((f"{{name: ck, data: {CKPLUS}, map: {{contemp: happy}}}}",), "eval.datasets.0.map: 'contemp' is not a class; use one of"),
    (("{name: ck}",), "eval.datasets.0.data: required key is missing"),
    (("{name: au, data: {format: disfa, path: /d}}",), "eval.datasets.0.data: format: got disfa, which has no emotion classes"),
    ((f"{{name: ck, data: {CKPLUS}, mass_centre: {{distance: pixel}}}}",),
     "eval.datasets.0: mass_centre: used only with unmapped: mass_centre, got unmapped: drop"),
    ((f"{{name: ck, data: {CKPLUS}, unmapped: mass_centre, mass_centre: {{remap: all}}, map: {{contempt: happy}}}}",),
     "eval.datasets.0: map: not used with mass_centre.remap: all"),
])
def test_bad_eval_settings_get_one_line_naming_the_key(datasets, line):
    message = spec_error(*datasets)
    assert message.startswith(line) and "\n" not in message


def test_a_multilabel_study_cannot_have_eval_datasets_and_eval_is_no_grid_axis():
    message = spec_error(f"{{name: ck, data: {CKPLUS}}}", extra=(
        "task=multilabel", "data.format=disfa", "data.path=/d", "grid.variant=[baseline]", "grid.exclude=[]"))
    assert message == ("eval.datasets: cross-dataset evaluation maps and scores emotion classes, which task multilabel does "
                       "not predict; remove eval.datasets, or use task: classification")
    with pytest.raises(SpecError, match="grid.eval.datasets: cannot be a grid axis"):
        load_spec("quick", ["grid.eval.datasets=[[]]"])
