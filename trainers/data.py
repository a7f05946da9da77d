"""tf.data input pipelines over the transformed TFRecords (gzipped tf.Examples: image, label, labeled)."""
from typing import Callable, Dict, List, Optional, Sequence, Union

import tensorflow as tf


def image_dataset(file_pattern: Union[str, Sequence[str]], feature_spec: Dict[str, tf.io.FixedLenFeature],
                  batch_size: int, shuffle: bool = True, seed: Optional[int] = None,
                  keep: Optional[Callable[[Dict[str, tf.Tensor]], tf.Tensor]] = None,
                  shuffle_buffer: int = 10_000) -> tf.data.Dataset:
    """Batches of {'image': (B, H, W, C) float32, 'label': (B,) int64, 'labeled': (B,) int64}.

    Files are read in a fixed order (then shuffled per example when `shuffle`), so a seeded run repeats.
    `keep(example)` (one parsed example -> bool tensor) keeps only the examples it is true for, e.g.
    `lambda ex: ex["labeled"] > 0` for the few-label ones.
    """
    patterns: List[str] = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
    if keep is None:
        # Counting raw records is cheap (no parsing); a known size lets Keras run many steps per graph call.
        records = int(ds.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
        ds = ds.apply(tf.data.experimental.assert_cardinality(records))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda records: tf.io.parse_example(records, feature_spec),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    if keep is not None:  # the size is unknown now; counting raw records above would be wasted
        ds = ds.unbatch().filter(keep).batch(batch_size)
    squeeze = lambda ex: {k: tf.reshape(v, [-1]) if k in ("label", "labeled", "label_rank") else v for k, v in ex.items()}
    return ds.map(squeeze, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
