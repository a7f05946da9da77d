"""The Transform component's preprocessing_fn: raw image bytes to float tensors, plus the few-label flag.

Outputs per example:
    image    float32 (H, W, C), scaled to [0, 1] ("unit") or [-1, 1] ("symmetric"; tanh generators)
    label    int64, the source label (-1: none), kept for evaluation
    labeled  int64 0/1: 1 for exactly K examples per class of the train split (all labelled ones when
             K is unset), chosen by a keyed hash of the image, so the same seed keeps the same examples.
    label_rank  int64 (only when K is set): a labelled train example's rank in its class by that hash, 0..K-1,
             and K for the others. The K'-labels-per-class sets for every K' <= K are `label_rank < K'`: nested,
             so a label-efficiency curve's smaller sets are subsets of its larger ones.
"""
from typing import Any, Dict, List

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

PIXEL_RANGES = ("unit", "symmetric")
ALL_LABELS = -1
_INT64_MAX = np.iinfo(np.int64).max


class _SmallestScoresPerClass(beam.PTransform):
    """(label, score) batches -> one int64 (num_classes, K) matrix: per class, its K smallest scores in
    ascending order (padded with max int64 when the class has fewer than K examples, so all of them are kept)."""

    def __init__(self, num_classes: int, k: int):
        super().__init__()
        self._num_classes, self._k = num_classes, k

    def expand(self, batches):
        num_classes, k = self._num_classes, self._k

        def to_matrix(per_class: List):
            smallest_scores = np.full((num_classes, k), _INT64_MAX, np.int64)
            for label, smallest in per_class:
                if 0 <= label < num_classes:
                    smallest_scores[label, :len(smallest)] = sorted(smallest)
            return smallest_scores

        return (batches
                | "Pairs" >> beam.FlatMap(lambda batch: zip(batch[0].ravel().tolist(), batch[1].ravel().tolist()))
                | "Labelled" >> beam.Filter(lambda pair: pair[0] >= 0)
                | "SmallestK" >> beam.combiners.Top.SmallestPerKey(k)
                | "Gather" >> beam.combiners.ToList()
                | "Matrix" >> beam.Map(to_matrix))


def validate_config(config: Dict[str, Any]) -> None:
    if config.get("pixel_range") not in PIXEL_RANGES:
        raise ValueError(f"pixel_range={config.get('pixel_range')!r}: must be one of {PIXEL_RANGES}")
    shape = config.get("image_shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(int(d) > 0 for d in shape)):
        raise ValueError(f"image_shape={shape!r}: must be [height, width, channels], all positive")
    k = int(config.get("labels_per_class", ALL_LABELS))
    if k != ALL_LABELS and k < 1:
        raise ValueError(f"labels_per_class={k}: must be at least 1 (or unset for all labels)")


def preprocessing_fn(inputs: Dict[str, tf.Tensor], custom_config: Dict[str, Any]) -> Dict[str, tf.Tensor]:
    """tf.Transform entry point. custom_config: image_shape, pixel_range, num_classes, labels_per_class, seed."""
    validate_config(custom_config)
    height, width, channels = (int(d) for d in custom_config["image_shape"])
    raw = tf.reshape(inputs["image"], [-1])  # (batch,) bytes
    pixels = tf.reshape(tf.io.decode_raw(raw, tf.uint8), [-1, height, width, channels])
    image = tf.cast(pixels, tf.float32) / 255.0
    if custom_config["pixel_range"] == "symmetric":
        image = image * 2.0 - 1.0

    label = tf.reshape(inputs["label"], [-1])
    k = int(custom_config.get("labels_per_class", ALL_LABELS))
    num_classes = int(custom_config.get("num_classes", 0))
    if k == ALL_LABELS or num_classes == 0:
        labeled = label >= 0
    else:
        seed = int(custom_config.get("seed", 0))
        # A keyed hash of the pixels: uniform, independent of example order, different for each seed.
        score = tf.strings.to_hash_bucket_strong(raw, _INT64_MAX, key=[seed, 0x6C6174656E74])
        smallest_scores = tft.experimental.ptransform_analyzer(
            inputs=[label, score], ptransform=_SmallestScoresPerClass(num_classes, k),
            output_dtypes=[tf.int64], output_shapes=[[num_classes, k]], name="few_labels")[0]
        in_range = (label >= 0) & (label < num_classes)
        class_scores = tf.gather(smallest_scores, tf.clip_by_value(label, 0, num_classes - 1))  # (batch, K)
        # Scores are distinct hashes: an example among its class's K smallest has as many smaller ones as its rank;
        # any other has all K smaller (a class with fewer than K examples keeps every one: the padding is max).
        rank = tf.reduce_sum(tf.cast(class_scores < score[:, None], tf.int64), axis=1)
        rank = tf.where(in_range, rank, tf.constant(k, tf.int64))
        return {"image": image, "label": label, "labeled": tf.cast(rank < k, tf.int64), "label_rank": rank}
    return {"image": image, "label": label, "labeled": tf.cast(labeled, tf.int64)}
