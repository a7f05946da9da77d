"""A label-free feature space for FID, KID and precision/recall: a SimCLR encoder (Chen et al. 2020) trained on
the dataset's own train split, for sources without labels.

Why contrastive features: a classifier's penultimate layer (the labelled metric network) needs labels; a
reconstruction objective (an autoencoder's codings) spends its capacity on pixels, so its distances follow
brightness and stroke width more than shape. Contrastive features are trained to tell images apart by content,
and self-supervised features rank generative models much as supervised ones do (Morozov et al. 2021, "On
self-supervised image representations for GAN evaluation"); benchmarks/feature_spaces.py measures that here.

What the augmentations leave out matters as much as what they put in: the features become blind to whatever
the views differ by. So the views differ by crops (position and scale) and a mild brightness/contrast (and, for
colour images, saturation) jitter, never by noise or blur: a generator's noisy or blurry samples must stay far
from the real images in this space. No flips by default (a mirrored digit is not a digit).

The trained encoder is exported like the labelled network (scoring.export_metric_network's `features` signature),
its embedding normalised (`feature_model`), with features only: no class predictions, so no mode coverage.
"""
import math
from typing import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from evaluation import scoring


def augment(images: tf.Tensor, min_crop_area: float, jitter: float, flip: bool) -> tf.Tensor:
    """One random view of each image (B, H, W, C) in [0, 1]: a random resized crop (area in [min_crop_area, 1],
    aspect ratio in [3/4, 4/3], resized back to H x W), brightness and contrast scaled by up to `jitter` (and
    saturation for colour images, sometimes to grey), an optional horizontal flip."""
    batch = tf.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    uniform = lambda low=0.0, high=1.0: tf.random.uniform([batch], low, high)
    area = uniform(min_crop_area, 1.0)
    ratio = tf.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_h = tf.minimum(tf.sqrt(area / ratio), 1.0)
    crop_w = tf.minimum(tf.sqrt(area * ratio), 1.0)
    top, left = uniform() * (1.0 - crop_h), uniform() * (1.0 - crop_w)
    boxes = tf.stack([top, left, top + crop_h, left + crop_w], axis=1)
    views = tf.image.crop_and_resize(images, boxes, tf.range(batch), [height, width])
    per_image = lambda values: tf.reshape(values, [-1, 1, 1, 1])
    if flip:
        views = tf.where(per_image(uniform()) < 0.5, views[:, :, ::-1, :], views)
    if channels == 3:
        grey = tf.image.rgb_to_grayscale(views)
        saturation = tf.where(uniform() < 0.2, 0.0, uniform(1.0 - 2 * jitter, 1.0 + 2 * jitter))
        views = grey + per_image(saturation) * (views - grey)
    mean = tf.reduce_mean(views, axis=[1, 2, 3], keepdims=True)
    views = mean + per_image(uniform(1.0 - jitter, 1.0 + jitter)) * (views - mean)
    views = views + per_image(uniform(-jitter / 2, jitter / 2))
    return tf.clip_by_value(views, 0.0, 1.0)


def nt_xent(projections_a: tf.Tensor, projections_b: tf.Tensor, temperature: float) -> tf.Tensor:
    """SimCLR's loss per pair (B,): each view must pick its partner out of the 2B - 1 other views by cosine
    similarity / temperature (softmax cross-entropy)."""
    z = tf.math.l2_normalize(tf.concat([projections_a, projections_b], axis=0), axis=1)
    count = tf.shape(projections_a)[0]
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    logits -= tf.eye(2 * count) * 1e9  # a view is not its own partner
    partners = tf.concat([tf.range(count, 2 * count), tf.range(count)], axis=0)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(partners, logits)
    return (losses[:count] + losses[count:]) / 2.0


class ContrastiveModel(keras.Model):
    """The encoder (whose `features` layer is the feature space) and a projection head the loss reads, trained on
    two random views of each batch."""

    def __init__(self, encoder: keras.Model, head: keras.Model, config: scoring.MetricNetworkConfig, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.head, self.config = encoder, head, config
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="pair_accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def call(self, images, training=False):
        return self.encoder(images, training=training)

    def _views(self, images):
        c = self.config
        return (augment(images, c.min_crop_area, c.jitter, c.flip), augment(images, c.min_crop_area, c.jitter, c.flip))

    def train_step(self, images):
        view_a, view_b = self._views(images)
        with tf.GradientTape() as tape:
            z_a = self.head(self.encoder(view_a, training=True), training=True)
            z_b = self.head(self.encoder(view_b, training=True), training=True)
            loss = tf.reduce_mean(nt_xent(z_a, z_b, self.config.temperature))
        variables = self.encoder.trainable_variables + self.head.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        # How often a view's nearest other view is its partner: rises from chance as the features learn.
        z = tf.math.l2_normalize(tf.concat([z_a, z_b], 0), 1)
        similarity = tf.matmul(z, z, transpose_b=True) - 2.0 * tf.eye(tf.shape(z)[0])
        count = tf.shape(z_a)[0]
        partners = tf.concat([tf.range(count, 2 * count), tf.range(count)], axis=0)
        hits = tf.cast(tf.equal(tf.argmax(similarity, axis=1, output_type=tf.int32), partners), tf.float32)
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(tf.reduce_mean(hits))
        return {m.name: m.result() for m in self.metrics}


def build_encoder(image_shape: Sequence[int], config: scoring.MetricNetworkConfig) -> keras.Model:
    """The labelled metric network's convolutional body with batch normalisation (contrastive training without it
    is slow to start), ending in an embedding of `feature_units` (feature_model puts it on a sphere)."""
    inputs = keras.Input(tuple(image_shape))
    x = inputs
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    embedding = keras.layers.Dense(config.feature_units, activation="relu", name="embedding")(x)
    return keras.Model(inputs, embedding, name="contrastive_encoder")


def feature_model(encoder: keras.Model) -> keras.Model:
    """What FID, KID and precision/recall read: the encoder's embedding on the sphere of radius sqrt(d). The loss
    compares directions only, so the embedding's length is free and drifts (on the full MNIST the held-out digits'
    FID read 60 and KID's cubic kernel overflowed to 2e5); on that sphere x.y / d is a cosine, the scale KID's
    kernel (x.y / d + 1)^3 expects, and the distances are the ones training shaped."""
    units = encoder.outputs[0].shape[-1]
    x = keras.layers.UnitNormalization(axis=-1)(encoder.outputs[0])
    features = keras.layers.Rescaling(math.sqrt(units), name=scoring.METRIC_NETWORK_FEATURES)(x)
    return keras.Model(encoder.inputs, features, name="self_supervised_features")


def build_contrastive_model(image_shape: Sequence[int], config: scoring.MetricNetworkConfig) -> ContrastiveModel:
    keras.utils.set_random_seed(config.seed)
    encoder = build_encoder(image_shape, config)
    head = keras.Sequential([keras.Input((config.feature_units,)), keras.layers.Dense(config.feature_units),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(),
                             keras.layers.Dense(config.projection_units)], name="projection_head")
    model = ContrastiveModel(encoder, head, config, name="contrastive")
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    return model


def train_contrastive(images: np.ndarray, config: scoring.MetricNetworkConfig, epochs: int,
                      callbacks: Sequence[keras.callbacks.Callback] = ()) -> ContrastiveModel:
    """A SimCLR encoder trained on `images` (N, H, W, C) in [0, 1] for `epochs` (whole batches only: the loss
    compares a batch's views with each other); `callbacks`: Keras callbacks (progress)."""
    if len(images) < 2:
        raise ValueError(f"contrastive training needs at least 2 images; got {len(images)}")
    model = build_contrastive_model(images.shape[1:], config)
    batch_size = min(config.batch_size, len(images))
    dataset = (tf.data.Dataset.from_tensor_slices(images.astype(np.float32))
               .shuffle(min(len(images), 20_000), seed=config.seed, reshuffle_each_iteration=True)
               .batch(batch_size, drop_remainder=True).prefetch(2))
    model.fit(dataset, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return model


def nearest_neighbour_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                               test_labels: np.ndarray) -> float:
    """How often a test image's nearest train image (cosine) has its label: a check, when labels happen to exist,
    that the label-free space separates what the labels separate."""
    unit = lambda f: f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    train, hits = unit(np.asarray(train_features, np.float32)), 0
    for start in range(0, len(test_features), 1000):
        nearest = np.argmax(unit(np.asarray(test_features[start:start + 1000], np.float32)) @ train.T, axis=1)
        hits += int(np.sum(train_labels[nearest] == test_labels[start:start + 1000]))
    return hits / max(len(test_features), 1)

