"""Progressive growing (Karras et al. 2018, "Progressive Growing of GANs") for the DCGAN architecture, built as the
paper's own code builds its 'linear' structure: one graph holding every resolution, blended by the level of
detail (lod), so resizing never re-traces or rebuilds anything and a checkpoint anywhere resumes exactly.

    lod        K (the coarsest resolution, e.g. 7x7 for 28x28 with K = 2 doublings) down to 0 (full resolution);
               fractional while a new block fades in. Set by the images seen so far (`Growth`, a checkpointed
               variable): `stable_images` at the coarsest resolution, then per doubling `fade_images` over which
               the new block's weight alpha goes linearly 0 -> 1, then `stable_images` at that resolution
    generator  codings -> the DCGAN's first block (coarsest) -> per doubling a transposed convolution; each
               resolution has its own 1x1 to-pixels layer; the image so far is upsampled (nearest) and blended
               with the new resolution's by alpha, so the output is always full size (blocky at low lod)
    discriminator  full-size images -> a 1x1 from-pixels layer -> per halving DCGAN's strided convolution; each
               block's output is blended with the from-pixels of the average-pooled image by alpha, so blocks
               not yet faded in are bypassed
    real images  average-pooled to the current resolution and upsampled back (blended at a fractional lod), so
               the discriminator compares like with like

The exported model generates at the data's full size with the lod it reached (0 once training has passed the
schedule's end).
"""
from typing import List

import tensorflow as tf
import tf_keras as keras

from trainers.common import upsampling_plan


@keras.saving.register_keras_serializable("latentforge")
class FadeIn(keras.layers.Layer):
    """[old (B, ...), new (B, ...), lod (B,)] -> old + (new - old) * clip(offset - lod, 0, 1): a block's weight
    alpha rises from 0 to 1 as lod falls from `offset` to `offset - 1`."""

    def __init__(self, offset: float, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def call(self, inputs):
        old, new, lod = inputs
        alpha = tf.clip_by_value(self.offset - tf.cast(lod, old.dtype), 0.0, 1.0)
        alpha = tf.reshape(alpha, [-1] + [1] * (len(old.shape) - 1))
        return old + (new - old) * alpha

    def get_config(self):
        return {**super().get_config(), "offset": self.offset}


class Growth(tf.Module):
    """The schedule: images seen (a variable saved with the model's weights) -> the level of detail."""

    def __init__(self, doublings: int, fade_images: int, stable_images: int):
        super().__init__(name="growth")
        self.doublings, self.fade_images, self.stable_images = doublings, fade_images, stable_images
        # Every replica adds the global batch itself: ONLY_FIRST_REPLICA keeps one copy without a reduction.
        self.images_seen = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="images_seen",
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def level_of_detail(self, images_seen=None) -> tf.Tensor:
        """lod (float32 scalar) after `images_seen` images (default: the variable's)."""
        seen = tf.cast(self.images_seen if images_seen is None else images_seen, tf.float64)
        stage = self.fade_images + self.stable_images
        grown = tf.maximum(seen - self.stable_images, 0.0)  # images since the first fade began
        doublings_done = tf.floor(grown / stage)
        alpha = tf.minimum((grown - doublings_done * stage) / max(self.fade_images, 1), 1.0)
        return tf.cast(tf.maximum(self.doublings - doublings_done - alpha, 0.0), tf.float32)

    @property
    def end(self) -> int:
        """Images after which lod is 0 (the last block faded in)."""
        return self.doublings * (self.fade_images + self.stable_images)

    def advance(self, batch_size) -> None:
        """Counts a step's images: the replica's batch times the replicas (every replica adds the same)."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.images_seen.assign_add(tf.cast(batch_size, tf.int64) * replicas)

    def blur_reals(self, images: tf.Tensor, lod: tf.Tensor) -> tf.Tensor:
        """Real images (B, H, W, C) at the resolution lod shows: average-pooled by 2^lod and upsampled back
        (nearest), interpolated between the two nearest whole levels."""
        size = tf.shape(images)[1:3]
        levels = [images] + [tf.image.resize(tf.nn.avg_pool2d(images, 2 ** level, 2 ** level, "SAME"), size,
                                             method="nearest") for level in range(1, self.doublings + 1)]
        weights = [tf.maximum(0.0, 1.0 - tf.abs(lod - level)) for level in range(self.doublings + 1)]
        return tf.add_n([w * x for w, x in zip(weights, levels)])


def _lod_input():
    return keras.layers.Input((), name="level_of_detail")


def generator(config, input_shape, input_width: int, activation: str) -> keras.Model:
    """[codings (B, input_width), lod (B,)] -> images (B, H, W, C) in [-1, 1]."""
    height, width, channels = input_shape
    doublings = len(config.conv_filters)
    start_h, start_w, cropping = upsampling_plan(height, width, doublings)
    filters = list(reversed(config.conv_filters)) + [max(config.conv_filters[0] // 2, 1)]
    codings, lod = keras.layers.Input((input_width,), name="codings"), _lod_input()
    x = keras.layers.Dense(start_h * start_w * filters[0])(codings)
    x = keras.layers.BatchNormalization()(keras.layers.Reshape((start_h, start_w, filters[0]))(x))
    to_pixels = lambda level: keras.layers.Conv2D(channels, 1, activation="tanh", name=f"to_pixels_{level}")
    images = to_pixels(0)(x)
    for level in range(1, doublings + 1):
        x = keras.layers.Conv2DTranspose(filters[level], 5, strides=2, padding="same", activation=activation)(x)
        x = keras.layers.BatchNormalization()(x)
        images = keras.layers.UpSampling2D(2)(images)
        images = FadeIn(doublings - level + 1, name=f"fade_in_{level}")([images, to_pixels(level)(x), lod])
    return keras.Model([codings, lod], keras.layers.Cropping2D(cropping)(images), name="generator")


def discriminator(config, input_shape, last_features: List[keras.layers.Layer], wrap) -> keras.Model:
    """[images (B, H, W, C), lod (B,)] -> (B, 1) score. `last_features`: what goes before the final dense layer
    (the minibatch-stddev feature); `wrap`: spectral normalisation or not."""
    doublings = len(config.conv_filters)
    images, lod = keras.layers.Input(input_shape, name="images"), _lod_input()
    def from_pixels(level, width, pixels):
        return keras.layers.LeakyReLU(0.2)(wrap(keras.layers.Conv2D(width, 1, name=f"from_pixels_{level}"))(pixels))

    x = from_pixels(doublings, max(config.conv_filters[0] // 2, 1), images)
    pooled = images
    for block, width in enumerate(config.conv_filters):
        level = doublings - block  # the resolution this block halves (doublings: full size)
        x = wrap(keras.layers.Conv2D(width, 5, strides=2, padding="same"))(x)
        x = keras.layers.Dropout(config.dropout)(keras.layers.LeakyReLU(0.2)(x))
        pooled = keras.layers.AveragePooling2D(2, padding="same")(pooled)
        bypass = from_pixels(level - 1, width, pooled)
        x = FadeIn(doublings - level + 1, name=f"fade_in_d{level}")([bypass, x, lod])
    for layer in last_features:
        x = layer(x)
    features = keras.layers.Flatten()(x)
    return keras.Model([images, lod], wrap(keras.layers.Dense(1))(features), name="discriminator")
