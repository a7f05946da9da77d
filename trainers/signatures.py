"""What every family's SavedModel signatures share: input specs, checks run inside the graph, limits.

A family module defines `serving_signatures(model, image_shape, pixel_range) -> {name: tf.function}` (with a
"serving_default") from these pieces; trainers/export.py writes whatever the family returns. Checks live in the
graph so that a plain `tf.saved_model.load` user gets the same errors as our server: images outside the pixel
range or not finite, n outside [1, MAX_GENERATED], steps outside [1, T] raise InvalidArgumentError naming the
input, as do class labels outside the model's classes and a negative guidance (the input signature already
rejects wrong shapes and dtypes).
"""
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

MAX_GENERATED = 4096  # images one generate/sample call may ask for
PIXEL_BOUNDS = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0)}
_TOLERANCE = 1e-3  # rounding slack on the pixel range

N = tf.TensorSpec([], tf.int32, name="n")
SEED = tf.TensorSpec([], tf.int32, name="seed")
STEPS = tf.TensorSpec([], tf.int32, name="steps")
LABELS = tf.TensorSpec([None], tf.int32, name="labels")  # class ids, repeated cyclically over the n images
GUIDANCE = tf.TensorSpec([], tf.float32, name="guidance")


def image_spec(image_shape) -> tf.TensorSpec:
    return tf.TensorSpec([None, *image_shape], tf.float32, name="images")


def codings_spec(size: int) -> tf.TensorSpec:
    return tf.TensorSpec([None, size], tf.float32, name="codings")


def checked_images(x: tf.Tensor, pixel_range: str) -> tf.Tensor:
    """x, after asserting its values are finite and inside the model's pixel range."""
    low, high = PIXEL_BOUNDS[pixel_range]
    inside = tf.reduce_all(tf.math.is_finite(x)) & tf.reduce_all(
        (x >= low - _TOLERANCE) & (x <= high + _TOLERANCE))
    check = tf.debugging.Assert(inside, [f"images: every value must be finite and in [{low:g}, {high:g}] (the "
                                         f"model's pixel range); got min", tf.reduce_min(x), "max", tf.reduce_max(x)])
    with tf.control_dependencies([check]):
        return tf.identity(x)


def checked_count(n: tf.Tensor, name: str, limit) -> tf.Tensor:
    check = tf.debugging.Assert((n >= 1) & (n <= limit), [f"{name}: must be between 1 and", limit, "; got", n])
    with tf.control_dependencies([check]):
        return tf.identity(n)


def checked_labels(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """labels (m,), after asserting 1 <= m and every id in [0, num_classes) (a class of the training data)."""
    inside = (tf.size(labels) >= 1) & tf.reduce_all((labels >= 0) & (labels < num_classes))
    check = tf.debugging.Assert(inside, [f"labels: need at least one, each a class id in [0, {num_classes - 1}]; got",
                                         labels], summarize=16)
    with tf.control_dependencies([check]):
        return tf.identity(labels)


def checked_guidance(guidance: tf.Tensor) -> tf.Tensor:
    check = tf.debugging.Assert(tf.math.is_finite(guidance) & (guidance >= 0.0),
                                ["guidance: must be a finite number >= 0 (0: unconditional, 1: conditional); got",
                                 guidance])
    with tf.control_dependencies([check]):
        return tf.identity(guidance)


def cycled_labels(labels: tf.Tensor, n) -> tf.Tensor:
    """(n,) labels: `labels` (m,) repeated cyclically (one label: n of that class). What every conditional
    sampling entry point (a model's generate, the SavedModel's signatures) gives the n images."""
    return tf.gather(labels, tf.range(n) % tf.size(labels))


def class_labels(n: int, labels, num_classes: int, model: str) -> Optional[tf.Tensor]:
    """The (n,) int32 labels of n generated images, for a Python caller (a model's generate or sample):
    `labels` (m,) repeated cyclically, by default every class in turn; None for an unconditional model
    (num_classes 0; `model` names it in the error when labels were given). A ValueError for labels outside the
    classes."""
    if not num_classes:
        if labels is not None:
            raise ValueError(f"labels: this {model} is unconditional (train a conditional preset on labelled data; "
                             "`latentforge models` lists them)")
        return None
    labels = np.arange(num_classes) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    if not len(labels) or not np.all((labels >= 0) & (labels < num_classes)):
        raise ValueError(f"labels: must be class ids in [0, {num_classes - 1}]; got {labels.tolist()}")
    return cycled_labels(tf.constant(labels, tf.int32), n)


def checked_codings(z: tf.Tensor) -> tf.Tensor:
    check = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(z)), ["codings: must be finite (no NaN or inf)"])
    with tf.control_dependencies([check]):
        return tf.identity(z)


def output_of(signature: str, key: str) -> Callable:
    """An `array_function` for a family's description: the SavedModel's callable (`loaded(array)`, what MLflow's
    pyfunc calls) is `signature`'s one input -> its output `key`."""
    def array_function(signatures: Dict[str, Callable], model) -> Callable:
        del model
        spec = signatures[signature].input_signature[0]
        return tf.function(lambda x: signatures[signature](x)[key], input_signature=[spec])
    return array_function
