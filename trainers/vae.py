"""Variational autoencoder (chapter 17): Gaussian encoder, reparameterised sampling, reconstruction + beta*KL.

    architecture  dense | conv
    reconstruction  bce: Bernoulli likelihood, so `neg_elbo` is -ELBO in nats per image
                    mse: sum of squared errors (the notebook's MSE + KL/784 loss, times 784)
    num_classes     class-conditional (the `cvae` preset, Sohn et al. 2015): a learned label embedding enters the
                    encoder beside the image features and the decoder beside the codings, q(z|x,y), p(x|z,y).
                    An extra "unknown" label (id num_classes) takes unlabeled images and a `p_uncond` share of the
                    labelled ones, so the image-only signatures (reconstruct, encode, anomaly_score, decode) work
                    without a label, as classifier-free guidance's null label does

Images are in [0, 1]. The decoder emits logits; `decode` applies the sigmoid.
"""
import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from evaluation import figures, scoring
from trainers import signatures
from trainers.common import (TrainingConfig, apply_gradients, average_loss, conv_architecture_sized, fit_epochs,
                             make_optimizer, per_example_sum, precision_policy, require, require_choice,
                             require_ema_decay, require_layer_sizes, scaled_loss, start_build, upsampling_plan, use_xla)
from trainers.ema import ExponentialMovingAverage
from trainers.family import Family, register, with_classes, without_base

PIXEL_RANGE = "unit"
ARCHITECTURES = ("dense", "conv")
RECONSTRUCTIONS = ("bce", "mse")


@dataclasses.dataclass(frozen=True)
class VAEConfig(TrainingConfig):
    """Defaults are the notebook's VAE: 784-150-100 -> 10-d codings, SELU, batch 128, 25 epochs."""

    architecture: str = "dense"
    hidden_units: Tuple[int, ...] = (150, 100)
    conv_filters: Tuple[int, ...] = (32, 64)  # conv: stride-2 convolutions
    coding_size: int = 10
    activation: str = "selu"
    beta: float = 1.0  # weight of the KL term (beta-VAE)
    reconstruction: str = "bce"
    ema_decay: float = 0.0  # > 0: encode, decode, sample and export an average of the weights (trainers/ema.py)
    epochs: int = 25
    batch_size: int = 128
    num_classes: int = 0  # 0: unconditional; `latentforge run` sets it from the source for the cvae preset
    p_uncond: float = 0.1  # conditional: the share of labelled images trained as "unknown" (unlabeled ones: all)
    label_embedding_dim: int = 16

    def __post_init__(self):
        super().__post_init__()
        require_choice(self, "architecture", ARCHITECTURES)
        require_choice(self, "reconstruction", RECONSTRUCTIONS)
        require(self.activation in ("relu", "selu", "elu", "tanh", "swish"),
                f"activation={self.activation!r}: must be one of ('relu', 'selu', 'elu', 'tanh', 'swish')")
        require_layer_sizes(self, "hidden_units", "unit")
        require_layer_sizes(self, "conv_filters", "filter")
        require(self.coding_size >= 1, f"coding_size={self.coding_size}: must be at least 1")
        require(self.beta >= 0, f"beta={self.beta}: must be >= 0")
        require_ema_decay(self)
        require(self.num_classes >= 0 and self.num_classes != 1,
                f"num_classes={self.num_classes}: must be 0 (unconditional) or at least 2")
        require(0 <= self.p_uncond < 1, f"p_uncond={self.p_uncond}: must be in [0, 1)")
        require(self.label_embedding_dim >= 1, f"label_embedding_dim={self.label_embedding_dim}: must be at least 1")

    @property
    def code_units(self) -> int:
        return self.coding_size

    def check_input(self, input_shape: Sequence[int]) -> None:
        size = math.prod(input_shape)
        require(self.coding_size < size, f"coding size {self.coding_size} is not smaller than the input "
                                         f"({'x'.join(map(str, input_shape))} = {size} values)")
        require(self.architecture != "conv" or len(input_shape) == 3,
                f"architecture='conv' needs images (H, W, C); got {tuple(input_shape)}")


class VAE(keras.Model):
    """encoder: x (B, H, W, C) -> [mean, log_var] (B, K) each; decoder: z (B, K) -> logits (B, H, W, C). A
    conditional VAE's (num_classes > 0) take [x, labels] and [z, labels], labels (B,) int32 in [0, num_classes]
    (num_classes: unknown).

    With `ema_decay` > 0, everything but training (reconstructions, codings, samples, the exported model, the
    encoder a classifier reuses) runs on exponential moving averages of the encoder's and decoder's weights."""

    def __init__(self, encoder: keras.Model, decoder: keras.Model, beta: float = 1.0, reconstruction: str = "bce",
                 ema_decay: float = 0.0, num_classes: int = 0, p_uncond: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder
        self.num_classes, self.p_uncond = num_classes, p_uncond
        self.encoder_ema = ExponentialMovingAverage(encoder, ema_decay) if ema_decay else None
        self.decoder_ema = ExponentialMovingAverage(decoder, ema_decay) if ema_decay else None
        self.beta, self.reconstruction = beta, reconstruction
        self.coding_size = int(decoder.inputs[0].shape[-1])
        names = ("loss", "reconstruction_loss", "kl_loss", "neg_elbo")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def weight_averages(self):
        """(average, network) pairs: the encoder's and the decoder's EMAs (none without ema_decay)."""
        pairs = ((self.encoder_ema, self.encoder), (self.decoder_ema, self.decoder))
        return [(average, network) for average, network in pairs if average is not None]

    @property
    def inference_encoder(self) -> keras.Model:
        """The encoder outside training: the EMA's when there is one."""
        return self.encoder_ema.network if self.encoder_ema is not None else self.encoder

    @property
    def inference_decoder(self) -> keras.Model:
        return self.decoder_ema.network if self.decoder_ema is not None else self.decoder

    @property
    def feature_encoder(self) -> keras.Model:
        """x -> codings mean (B, K): the encoder a downstream classifier reuses."""
        encoder = self.inference_encoder
        return keras.Model(encoder.inputs, encoder.outputs[0], name="vae_mean_encoder")

    @property
    def unknown_label(self) -> int:
        """A conditional VAE's label id of "no class": num_classes."""
        return self.num_classes

    def _conditioned(self, x: tf.Tensor, labels: Optional[tf.Tensor]):
        """A network's input: x, or for a conditional VAE [x, labels] (default: the unknown label)."""
        if not self.num_classes:
            return x
        if labels is None:
            labels = tf.fill(tf.shape(x)[:1], self.unknown_label)
        return [x, tf.cast(labels, tf.int32)]

    def encode(self, images: tf.Tensor, training: bool = False, labels=None) -> Tuple[tf.Tensor, tf.Tensor]:
        """(mean, log_var) of the codings, each (B, K), in float32 whatever precision the layers compute in."""
        mean, log_var = (self.encoder if training else self.inference_encoder)(self._conditioned(images, labels),
                                                                               training=training)
        return tf.cast(mean, tf.float32), tf.cast(log_var, tf.float32)

    def decoder_logits(self, codings: tf.Tensor, training: bool = False, labels=None) -> tf.Tensor:
        decoder = self.decoder if training else self.inference_decoder
        return tf.cast(decoder(self._conditioned(codings, labels), training=training), tf.float32)

    def decode(self, codings: tf.Tensor, training: bool = False, labels=None) -> tf.Tensor:
        return tf.sigmoid(self.decoder_logits(codings, training=training, labels=labels))

    def call(self, inputs, training=False):
        """Reconstruction through the codings' mean (no sampling): (B, H, W, C) in [0, 1] (a conditional VAE's
        through the unknown label)."""
        mean, _ = self.encode(inputs, training=training)
        return self.decode(mean, training=training)

    def _unpack(self, data):
        """A batch: images, or (images, labels) for a conditional VAE (labels (B,), -1 for an unlabeled image)."""
        if not self.num_classes:
            return data, None
        images, labels = data
        return images, tf.cast(labels, tf.int32)

    def known_labels(self, labels: Optional[tf.Tensor], training: bool) -> Optional[tf.Tensor]:
        """What a conditional VAE trains on: -1 (unlabeled) becomes the unknown label, and in training a random
        p_uncond share of the labelled images too, so the image-only path learns from every image."""
        if labels is None:
            return None
        unknown = labels < 0
        if training:
            unknown |= tf.random.uniform(tf.shape(labels)) < self.p_uncond
        return tf.where(unknown, self.unknown_label, labels)

    def per_example_losses(self, images: tf.Tensor, training: bool, labels=None) -> Tuple[tf.Tensor, tf.Tensor]:
        """(reconstruction, KL) per example, each (B,), for one reparameterised sample of the codings (a
        conditional VAE's given `labels`, -1 for none)."""
        labels = self.known_labels(labels, training)
        mean, log_var = self.encode(images, training=training, labels=labels)
        # Reparameterisation: z = mean + sigma * eps keeps the sample differentiable in mean and log_var.
        codings = mean + tf.exp(0.5 * log_var) * tf.random.normal(tf.shape(mean))
        logits = self.decoder_logits(codings, training=training, labels=labels)
        if self.reconstruction == "bce":
            reconstruction = per_example_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=images, logits=logits))
        else:
            reconstruction = per_example_sum(tf.square(images - tf.sigmoid(logits)))
        kl = -0.5 * tf.reduce_sum(1.0 + log_var - tf.square(mean) - tf.exp(log_var), axis=1)
        return reconstruction, kl

    def _update(self, reconstruction, kl):
        objective = reconstruction + self.beta * kl
        for name, value in (("loss", objective), ("reconstruction_loss", reconstruction), ("kl_loss", kl),
                            ("neg_elbo", reconstruction + kl)):
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        images, labels = self._unpack(data)
        # 1. One sample of the codings per image; the objective is reconstruction + beta * KL.
        with tf.GradientTape() as tape:
            reconstruction, kl = self.per_example_losses(images, training=True, labels=labels)
            loss = scaled_loss(self.optimizer, average_loss(reconstruction + self.beta * kl, self))
        # 2. Step the encoder and decoder together.
        apply_gradients(self.optimizer, tape, loss, self.trainable_variables)
        for average, network in self.weight_averages():
            average.update(network, self.optimizer.iterations)
        return self._update(reconstruction, kl)

    def test_step(self, data):
        images, labels = self._unpack(data)
        return self._update(*self.per_example_losses(images, training=False, labels=labels))

    def sample_labels(self, n: int, labels=None) -> Optional[tf.Tensor]:
        """The (n,) int32 labels of n generated images: `labels` repeated cyclically, by default every class in
        turn; None for an unconditional VAE (signatures.class_labels)."""
        return signatures.class_labels(n, labels, self.num_classes, "VAE")

    def sample(self, n: int, seed: int = 0, labels=None) -> tf.Tensor:
        """n images (n, H, W, C) in [0, 1] decoded from codings drawn from N(0, I); the same seed, the same images.
        A conditional VAE decodes them as `labels` (see `sample_labels`)."""
        codings = tf.random.stateless_normal([n, self.coding_size], seed=[seed, 0])
        return self.decode(codings, labels=self.sample_labels(n, labels))

    def interpolate(self, start: tf.Tensor, end: tf.Tensor, steps: int) -> tf.Tensor:
        """`steps` images (steps, H, W, C) decoded along the line between two images' coding means."""
        means, _ = self.encode(tf.stack([start, end]))
        weights = tf.linspace(0.0, 1.0, steps)[:, None]
        return self.decode((1.0 - weights) * means[0:1] + weights * means[1:2])


def _label_input(config: VAEConfig, features):
    """A conditional VAE's [labels input], and `features` with the label's embedding concatenated (an
    unconditional VAE's: [], features). num_classes + 1 ids: the last is "unknown"."""
    if not config.num_classes:
        return [], features
    labels = keras.layers.Input((), dtype=tf.int32, name="labels")
    embedded = keras.layers.Embedding(config.num_classes + 1, config.label_embedding_dim)(labels)
    return [labels], keras.layers.Concatenate()([features, embedded])


def _conditional_decoder(config: VAEConfig, decoder: keras.Sequential) -> keras.Model:
    """A conditional VAE's decoder: [codings, labels] -> the Sequential stack on [codings, label embedding]."""
    if not config.num_classes:
        return decoder
    codings = keras.layers.Input((config.coding_size,), name="codings")
    label_inputs, joined = _label_input(config, codings)
    return keras.Model([codings, *label_inputs], decoder(joined), name="decoder")


def _decoder_inputs(config: VAEConfig) -> int:
    return config.coding_size + (config.label_embedding_dim if config.num_classes else 0)


def _dense(config: VAEConfig, input_shape) -> Tuple[keras.Model, keras.Model]:
    inputs = keras.layers.Input(input_shape)
    label_inputs, x = _label_input(config, keras.layers.Flatten()(inputs))
    for units in config.hidden_units:
        x = keras.layers.Dense(units, activation=config.activation)(x)
    encoder = keras.Model([inputs, *label_inputs] if label_inputs else inputs,
                          [keras.layers.Dense(config.coding_size, name="mean")(x),
                           keras.layers.Dense(config.coding_size, name="log_var")(x)], name="encoder")
    decoder = keras.Sequential(
        [keras.layers.Input((_decoder_inputs(config),))]
        + [keras.layers.Dense(units, activation=config.activation) for units in reversed(config.hidden_units)]
        + [keras.layers.Dense(math.prod(input_shape)), keras.layers.Reshape(input_shape)], name="decoder")
    return encoder, _conditional_decoder(config, decoder)


def _conv(config: VAEConfig, input_shape) -> Tuple[keras.Model, keras.Model]:
    height, width, channels = input_shape
    inputs = keras.layers.Input(input_shape)
    x = inputs
    for filters in config.conv_filters:
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation=config.activation)(x)
    label_inputs, x = _label_input(config, keras.layers.Flatten()(x))
    x = keras.layers.Dense(config.hidden_units[-1], activation=config.activation)(x)
    encoder = keras.Model([inputs, *label_inputs] if label_inputs else inputs,
                          [keras.layers.Dense(config.coding_size, name="mean")(x),
                           keras.layers.Dense(config.coding_size, name="log_var")(x)], name="encoder")
    start_h, start_w, cropping = upsampling_plan(height, width, len(config.conv_filters))
    filters = list(reversed(config.conv_filters))
    layers = [keras.layers.Input((_decoder_inputs(config),)),
              keras.layers.Dense(start_h * start_w * filters[0], activation=config.activation),
              keras.layers.Reshape((start_h, start_w, filters[0]))]
    layers += [keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation=config.activation)
               for f in filters]
    layers += [keras.layers.Conv2D(channels, 3, padding="same"), keras.layers.Cropping2D(cropping)]
    return encoder, _conditional_decoder(config, keras.Sequential(layers, name="decoder"))


def build_vae(config: VAEConfig, input_shape: Sequence[int]) -> VAE:
    input_shape = start_build(config, input_shape)
    with precision_policy(config):
        encoder, decoder = {"dense": _dense, "conv": _conv}[config.architecture](config, input_shape)
        model = VAE(encoder, decoder, beta=config.beta, reconstruction=config.reconstruction,
                    ema_decay=config.ema_decay, num_classes=config.num_classes, p_uncond=config.p_uncond,
                    name=f"{config.architecture}_{'c' if config.num_classes else ''}vae")
        model.build((None, *input_shape))
    model.compile(optimizer=make_optimizer(config), steps_per_execution=config.steps_per_execution,
                  jit_compile=use_xla(config))
    return model


def fit(model: VAE, config: VAEConfig, train_data: tf.data.Dataset, eval_data: Optional[tf.data.Dataset] = None,
        callbacks=None, initial_epoch: int = 0) -> Dict[str, List[float]]:
    """Trains a built VAE from `initial_epoch` (a resumed run) to config.epochs; returns the per-epoch history."""
    return fit_epochs(model, config, train_data, eval_data, callbacks, initial_epoch)


def train(config: VAEConfig, input_shape: Sequence[int], train_data: tf.data.Dataset,
          eval_data: Optional[tf.data.Dataset] = None, callbacks=None) -> Tuple[VAE, Dict[str, List[float]]]:
    """Trains a VAE on batches of images (B, H, W, C) in [0, 1]; returns it and its per-epoch history."""
    model = build_vae(config, input_shape)
    return model, fit(model, config, train_data, eval_data, callbacks)


def serving_signatures(model, image_shape, pixel_range) -> Dict[str, Callable]:
    """The SavedModel's signatures (trainers/export.py writes them; see its docstring for the contract)."""
    images, codings = signatures.image_spec(image_shape), signatures.codings_spec(model.coding_size)

    @tf.function(input_signature=[images])
    def reconstruct(x):
        return {"reconstructions": model(signatures.checked_images(x, pixel_range), training=False)}

    @tf.function(input_signature=[images])
    def encode(x):
        mean, log_var = model.encode(signatures.checked_images(x, pixel_range))
        return {"codings": mean, "log_var": log_var}

    @tf.function(input_signature=[codings])
    def decode(z):
        return {"images": model.decode(signatures.checked_codings(z))}

    @tf.function(input_signature=[images])
    def anomaly_score(x):
        # Mean squared reconstruction error through the codings' mean, as for the other autoencoders.
        x = signatures.checked_images(x, pixel_range)
        error = tf.square(model(x, training=False) - x)
        return {"scores": tf.reduce_mean(tf.reshape(error, [tf.shape(x)[0], -1]), axis=1)}

    def draw(n, seed, labels):
        n = signatures.checked_count(n, "n", signatures.MAX_GENERATED)
        if labels is not None:
            labels = signatures.cycled_labels(signatures.checked_labels(labels, model.num_classes), n)
        return {"images": model.decode(tf.random.stateless_normal(tf.stack([n, model.coding_size]),
                                                                  seed=tf.stack([seed, 0])), labels=labels)}

    # A conditional VAE's sample takes labels (repeated over the n images); its other signatures read images or
    # codings alone, through the unknown label.
    if model.num_classes:
        sample = tf.function(lambda n, seed, labels: draw(n, seed, labels),
                             input_signature=[signatures.N, signatures.SEED, signatures.LABELS])
    else:
        sample = tf.function(lambda n, seed: draw(n, seed, None), input_signature=[signatures.N, signatures.SEED])

    return {"serving_default": reconstruct, "reconstruct": reconstruct, "encode": encode, "decode": decode,
            "anomaly_score": anomaly_score, "sample": sample}


def export_metadata(model: VAE) -> Dict[str, object]:
    """A conditional VAE's classes and its sample's default labels (every class in turn); nothing otherwise."""
    if not model.num_classes:
        return {}
    return {"generate_defaults": {"labels": list(range(model.num_classes))}, "num_classes": int(model.num_classes)}


# The family's description, registered on import (trainers/registry.py imports every family module).
register(Family(
    "vae", VAEConfig, without_base(build_vae), fit, serving_signatures,
    signatures.output_of("reconstruct", "reconstructions"), key_metric=("test_neg_elbo", False),
    scorers=(scoring.score_reconstructions, scoring.score_elbo, scoring.score_generation),
    figures=(figures.reconstructions, figures.samples(64, "sample"), figures.interpolation),
    pixel_range=PIXEL_RANGE, generate_signature="sample", reusable_encoder=True, latent_signature="decode",
    size_rule=conv_architecture_sized,
    # β and the coding size trade reconstruction for a smoother latent space: judged by sample quality.
    search_space={"beta": {"uniform": [0.25, 4.0]}, "coding_size": {"choice": [4, 8, 16, 32]},
                  "learning_rate": {"loguniform": [3e-4, 3e-3]}}),
    {"vae": {}, "conv_vae": dict(architecture="conv", hidden_units=(128,), coding_size=16)})


register(Family(
    "conditional_vae", VAEConfig, without_base(with_classes(build_vae)), fit, serving_signatures,
    signatures.output_of("reconstruct", "reconstructions"), key_metric=("test_neg_elbo", False),
    scorers=(scoring.score_reconstructions, scoring.score_elbo, scoring.score_generation,
             scoring.score_conditional_generation),
    figures=(figures.reconstructions, figures.class_rows(8, "sample"), figures.interpolation),
    pixel_range=PIXEL_RANGE,
    generate_signature="sample", export_metadata=export_metadata, conditional=True,
    size_rule=conv_architecture_sized,
    description="class-conditional VAE: label embedding into encoder and decoder (labels at sample; "
                "reconstruct/encode without)"),
    {"cvae": dict(architecture="conv", hidden_units=(128,), coding_size=16)})
