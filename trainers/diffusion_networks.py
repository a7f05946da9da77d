"""The DDPM noise predictors: the U-Net (residual blocks, GroupNorm, attention at the lowest resolution) and the
notebook's compact, separable U-Net; both take (noisy images, time step[, labels]) and return the prediction."""
import math
from typing import TYPE_CHECKING, Sequence

import tensorflow as tf
import tf_keras as keras

from trainers.common import upsampling_plan

if TYPE_CHECKING:
    from trainers.diffusion import DiffusionConfig


class SinusoidalEmbedding(keras.layers.Layer):
    """t (B,) int -> (B, dim): sin/cos of t at geometrically spaced frequencies (Transformer positions)."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim

    def call(self, t):
        half = self.dim // 2
        frequencies = tf.exp(-math.log(10000.0) * tf.range(half, dtype=tf.float32) / half)
        angles = tf.cast(tf.reshape(t, [-1, 1]), tf.float32) * frequencies[None, :]
        return tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


class NearestUpsampling(keras.layers.Layer):
    """(B, H, W, C) -> (B, 2H, 2W, C), each pixel repeated 2x2: UpSampling2D's nearest mode by broadcast and
    reshape, whose gradient (a sum) XLA compiles on CPU (UpSampling2D's ResizeNearestNeighborGrad has no XLA
    kernel there)."""

    def call(self, x):
        batch, (height, width, channels) = tf.shape(x)[0], x.shape[1:]
        x = tf.broadcast_to(x[:, :, None, :, None, :], [batch, height, 2, width, 2, channels])
        return tf.reshape(x, [batch, 2 * height, 2 * width, channels])


def _residual_block(x, time_embedding, channels: int, dropout: float):
    h = keras.activations.swish(keras.layers.GroupNormalization(8)(x))
    h = keras.layers.Conv2D(channels, 3, padding="same")(h)
    # The time step enters every block as a per-channel bias.
    h = h + keras.layers.Dense(channels)(time_embedding)[:, None, None, :]
    h = keras.activations.swish(keras.layers.GroupNormalization(8)(h))
    h = keras.layers.Dropout(dropout)(h)
    h = keras.layers.Conv2D(channels, 3, padding="same")(h)
    skip = x if x.shape[-1] == channels else keras.layers.Conv2D(channels, 1)(x)
    return skip + h


def _attention_block(x):
    height, width, channels = x.shape[1:]
    h = keras.layers.Reshape((height * width, channels))(keras.layers.GroupNormalization(8)(x))
    h = keras.layers.MultiHeadAttention(num_heads=4, key_dim=max(channels // 4, 1))(h, h)
    return x + keras.layers.Reshape((height, width, channels))(h)


def _with_labels(config: "DiffusionConfig", inputs: list, embedding):
    """For a class-conditional network (config.num_classes > 0): a third input, labels (B,) int32 in
    [0, num_classes] (num_classes: the null label), whose learned embedding is added to the time embedding, so
    the class reaches every place the time step does. Returns (inputs, embedding)."""
    if not config.num_classes:
        return inputs, embedding
    labels = keras.layers.Input((), dtype=tf.int32, name="labels")
    label_embedding = keras.layers.Embedding(config.num_classes + 1, embedding.shape[-1])(labels)
    return [*inputs, labels], keras.layers.Add()([embedding, label_embedding])


def build_unet(config: "DiffusionConfig", input_shape: Sequence[int]) -> keras.Model:
    """[x_t (B, H, W, C), t (B,) int32(, labels (B,) int32)] -> predicted noise (B, H, W, C)."""
    images = keras.layers.Input(input_shape, name="noisy_images")
    times = keras.layers.Input((), dtype=tf.int32, name="timesteps")
    width = 4 * config.base_channels
    embedding = SinusoidalEmbedding(config.time_embedding_dim)(times)
    embedding = keras.layers.Dense(width, activation="swish")(embedding)
    inputs, embedding = _with_labels(config, [images, times], embedding)
    embedding = keras.layers.Dense(width, activation="swish")(embedding)

    levels = [config.base_channels * int(m) for m in config.channel_multipliers]
    h = keras.layers.Conv2D(config.base_channels, 3, padding="same")(images)
    skips = [h]
    for level, channels in enumerate(levels):
        for _ in range(config.res_blocks):
            h = _residual_block(h, embedding, channels, config.dropout)
            if config.attention and level == len(levels) - 1:
                h = _attention_block(h)
            skips.append(h)
        if level < len(levels) - 1:
            h = keras.layers.Conv2D(channels, 3, strides=2, padding="same")(h)
            skips.append(h)
    h = _residual_block(h, embedding, levels[-1], config.dropout)
    if config.attention:
        h = _attention_block(h)
    h = _residual_block(h, embedding, levels[-1], config.dropout)
    for level, channels in reversed(list(enumerate(levels))):
        for _ in range(config.res_blocks + 1):
            h = _residual_block(keras.layers.Concatenate()([h, skips.pop()]), embedding, channels, config.dropout)
            if config.attention and level == len(levels) - 1:
                h = _attention_block(h)
        if level > 0:
            # A strided transposed convolution, not UpSampling2D: XLA on CPU has no kernel for its gradient.
            h = keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same")(h)
    h = keras.activations.swish(keras.layers.GroupNormalization(8)(h))
    # Zero-initialised output: the untrained network predicts no noise, a stable start.
    outputs = keras.layers.Conv2D(input_shape[-1], 3, padding="same", kernel_initializer="zeros")(h)
    return keras.Model(inputs, outputs, name="unet")


def build_compact_unet(config: "DiffusionConfig", input_shape: Sequence[int]) -> keras.Model:
    """The notebook's noise predictor, [x_t, t(, labels)] -> (B, H, W, C): a stem of base_channels, then per level
    (base_channels * m for m in channel_multipliers) two ReLU-SeparableConv2D-BatchNorm layers, max-pooling and a
    strided 1x1 residual link, the mirror image on the way up with nearest-neighbour upsampling and the level's
    skip concatenated; the time embedding is added after every level. No attention, no GroupNorm: ~0.28 M
    parameters at the notebook's widths (16; 32/64/128), several times fewer FLOPs than `build_unet`."""
    images = keras.layers.Input(input_shape, name="noisy_images")
    times = keras.layers.Input((), dtype=tf.int32, name="timesteps")
    inputs, embedding = _with_labels(config, [images, times], SinusoidalEmbedding(config.time_embedding_dim)(times))
    levels = [config.base_channels * int(m) for m in config.channel_multipliers]
    start_h, start_w, cropping = upsampling_plan(input_shape[0], input_shape[1], len(levels))
    del start_h, start_w
    h = keras.layers.ZeroPadding2D(cropping)(images)  # to a size it can halve len(levels) times
    h = keras.layers.Conv2D(config.base_channels, 3, padding="same")(h)
    h = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(h))
    h = h + keras.layers.Dense(config.base_channels)(embedding)[:, None, None, :]
    skip, level_outputs = h, []
    for channels in levels:
        for _ in range(2):
            h = keras.layers.Activation("relu")(h)
            h = keras.layers.BatchNormalization()(keras.layers.SeparableConv2D(channels, 3, padding="same")(h))
        level_outputs.append(h)
        h = keras.layers.MaxPool2D(3, strides=2, padding="same")(h)
        h = h + keras.layers.Conv2D(channels, 1, strides=2, padding="same")(skip)
        h = h + keras.layers.Dense(channels)(embedding)[:, None, None, :]
        skip = h
    for channels in [config.base_channels, *levels[:-1]][::-1]:
        for _ in range(2):
            h = keras.layers.Activation("relu")(h)
            h = keras.layers.BatchNormalization()(keras.layers.Conv2DTranspose(channels, 3, padding="same")(h))
        h = NearestUpsampling()(h)
        h = h + keras.layers.Conv2D(channels, 1, padding="same")(NearestUpsampling()(skip))
        h = h + keras.layers.Dense(channels)(embedding)[:, None, None, :]
        h = keras.layers.Concatenate()([h, level_outputs.pop()])
        skip = h
    outputs = keras.layers.Conv2D(input_shape[-1], 3, padding="same", kernel_initializer="zeros")(h)
    outputs = keras.layers.Cropping2D(cropping)(outputs)
    return keras.Model(inputs, outputs, name="compact_unet")
