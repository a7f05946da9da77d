"""preprocessing_fn under tf.Transform: pixel scaling and the exact, seeded few-label flag."""
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam

from pipelines import preprocessing
from tests.conftest import random_images

FEATURE_SPEC = {"image": tf.io.FixedLenFeature([1], tf.string), "label": tf.io.FixedLenFeature([1], tf.int64)}


def transform(images, labels, **config):
    config = {"image_shape": list(images.shape[1:]), "pixel_range": "unit", "num_classes": 3, "seed": 0, **config}
    rows = [{"image": [img.tobytes()], "label": [int(y)]} for img, y in zip(images, labels)]
    metadata = tft.DatasetMetadata.from_feature_spec(FEATURE_SPEC)
    with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
        (data, _), _ = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: preprocessing.preprocessing_fn(inputs, config))
    return data


@pytest.fixture(scope="module")
def digits():
    images = random_images(90, (4, 4, 1), seed=3)
    labels = np.arange(90) % 3
    labels[:5] = -1  # a few unlabelled examples never count as labelled
    return images, labels


def test_unit_and_symmetric_pixel_ranges(digits):
    images, labels = digits
    unit = transform(images[:4], labels[:4])
    np.testing.assert_allclose(unit[1]["image"], images[1] / 255.0, atol=1e-6)
    symmetric = transform(images[:4], labels[:4], pixel_range="symmetric")
    np.testing.assert_allclose(symmetric[1]["image"], images[1] / 127.5 - 1.0, atol=1e-6)
    assert unit[1]["image"].shape == (4, 4, 1)


def test_exactly_k_labels_per_class_deterministic_and_seeded(digits):
    images, labels = digits
    first = transform(images, labels, labels_per_class=4)
    chosen = [i for i, row in enumerate(first) if row["labeled"]]
    assert sorted(np.bincount(labels[chosen], minlength=3).tolist()) == [4, 4, 4]
    assert all(labels[i] >= 0 for i in chosen)
    again = [i for i, row in enumerate(transform(images, labels, labels_per_class=4)) if row["labeled"]]
    assert again == chosen
    other_seed = [i for i, row in enumerate(transform(images, labels, labels_per_class=4, seed=7)) if row["labeled"]]
    assert other_seed != chosen and len(other_seed) == 12


def test_label_ranks_give_nested_sets_for_every_smaller_k(digits):
    """The label-efficiency curve's K-per-class sets come from one Transform: `label_rank < K'` holds exactly K'
    examples per class for every K' up to K, each set inside the next, and `labeled` is the K set."""
    images, labels = digits
    rows = transform(images, labels, labels_per_class=4)
    ranks = np.array([row["label_rank"] for row in rows])
    assert np.all(ranks[labels < 0] == 4) and set(ranks.tolist()) == {0, 1, 2, 3, 4}
    previous = set()
    for k in (1, 2, 3, 4):
        chosen = set(np.flatnonzero(ranks < k).tolist())
        assert np.bincount(labels[sorted(chosen)], minlength=3).tolist() == [k, k, k]
        assert previous < chosen
        previous = chosen
    assert [row["labeled"] for row in rows] == (ranks < 4).astype(int).tolist()
    assert "label_rank" not in transform(images[:4], labels[:4])[0]  # no K, no ranks


def test_all_labels_by_default_and_small_classes_keep_everything(digits):
    images, labels = digits
    everything = transform(images, labels)
    assert sum(row["labeled"] for row in everything) == int((labels >= 0).sum())
    capped = transform(images, labels, labels_per_class=1000)
    assert sum(row["labeled"] for row in capped) == int((labels >= 0).sum())


@pytest.mark.parametrize("config, message", [
    ({"pixel_range": "bytes"}, "pixel_range"),
    ({"image_shape": [4, 4]}, "image_shape"),
    ({"labels_per_class": 0}, "labels_per_class"),
])
def test_bad_config_is_a_clear_error(config, message):
    with pytest.raises(ValueError, match=message):
        preprocessing.validate_config({"image_shape": [4, 4, 1], "pixel_range": "unit", **config})
