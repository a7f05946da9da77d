"""Autoencoders of chapter 17 (tf_keras): one configurable family.

Variant so far: "stacked" (dense encoder and mirrored decoder, the seed's 784-100-30-100-784).
The model takes images (B, H, W, C) in [0, 1] and reconstructs them with a sigmoid output.
"""
import dataclasses
from typing import Tuple

import tensorflow as tf
import tf_keras as keras

VARIANTS = ("stacked",)
ACTIVATIONS = ("relu", "selu", "elu", "tanh", "sigmoid", "linear")
PIXEL_RANGE = "unit"


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """Hyper-parameters of an autoencoder. Defaults are the seed notebook's stacked AE."""

    variant: str = "stacked"
    hidden_units: Tuple[int, ...] = (100, 30)  # encoder widths; the last is the coding size
    activation: str = "relu"
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 42

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}: must be one of {VARIANTS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: must be one of {ACTIVATIONS}")
        if not self.hidden_units or any(int(u) < 1 for u in self.hidden_units):
            raise ValueError(f"hidden_units={self.hidden_units}: need at least one layer, each with >= 1 unit")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs}: must be at least 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be at least 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate}: must be positive")

    def check_input(self, image_shape: Tuple[int, int, int]) -> None:
        """An undercomplete autoencoder's codings must be smaller than its input."""
        size = image_shape[0] * image_shape[1] * image_shape[2]
        if self.hidden_units[-1] >= size:
            raise ValueError(f"coding size {self.hidden_units[-1]} is not smaller than the input "
                             f"({'x'.join(map(str, image_shape))} = {size} values): nothing forces it to learn")


class Autoencoder(keras.Model):
    """encoder: images -> codings (B, coding_size); decoder: codings -> images in [0, 1]."""

    def __init__(self, encoder: keras.Model, decoder: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder

    def call(self, images, training=False):
        return self.decoder(self.encoder(images, training=training), training=training)

    def anomaly_score(self, images: tf.Tensor) -> tf.Tensor:
        """Per-example mean squared reconstruction error, (B,)."""
        error = tf.square(self(images) - images)
        return tf.reduce_mean(tf.reshape(error, [tf.shape(images)[0], -1]), axis=1)


def build_autoencoder(config: AutoencoderConfig, image_shape: Tuple[int, int, int]) -> Autoencoder:
    config.check_input(image_shape)
    keras.utils.set_random_seed(config.seed)
    size = image_shape[0] * image_shape[1] * image_shape[2]
    encoder = keras.Sequential([keras.layers.Input(image_shape), keras.layers.Flatten()] + [
        keras.layers.Dense(units, activation=config.activation) for units in config.hidden_units], name="encoder")
    decoder = keras.Sequential([keras.layers.Input((config.hidden_units[-1],))] + [
        keras.layers.Dense(units, activation=config.activation) for units in reversed(config.hidden_units[:-1])] + [
        keras.layers.Dense(size, activation="sigmoid"), keras.layers.Reshape(image_shape)], name="decoder")
    model = Autoencoder(encoder, decoder, name=f"{config.variant}_ae")
    model.compile(optimizer=keras.optimizers.Nadam(config.learning_rate), loss="mse")
    return model
