"""Autoencoders of chapter 17 (tf_keras), one configurable family.

    architecture  dense | conv | recurrent          encoder / decoder shape
    tied_weights  dense only: decoder = transposed encoder kernels (DenseTranspose)
    greedy        dense only: one shallow AE per layer, then stacked and fine-tuned
    noise         none | gaussian | dropout          denoising: corrupt the input, reconstruct it clean
    sparsity      none | l1 | kl                     penalty on the coding layer's activations

The model maps inputs (B, *input_shape) in [0, 1] to reconstructions of the same shape (sigmoid output;
linear output for the PCA-like linear autoencoder). `anomaly_score` is the per-example reconstruction MSE.
"""
import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from evaluation import figures, scoring
from trainers import signatures
from trainers.common import (TrainingConfig, conv_architecture_sized, fit_epochs, make_optimizer, precision_policy,
                             require, require_choice, require_layer_sizes, start_build, upsampling_plan, use_xla,
                             with_known_size)
from trainers.family import Family, register, without_base

ARCHITECTURES = ("dense", "conv", "recurrent")
NOISES = ("none", "gaussian", "dropout")
SPARSITIES = ("none", "l1", "kl")
ACTIVATIONS = ("relu", "selu", "elu", "tanh", "sigmoid", "linear")
OUTPUT_ACTIVATIONS = ("sigmoid", "linear")
LOSSES = ("mse", "bce")
PIXEL_RANGE = "unit"


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig(TrainingConfig):
    """Hyper-parameters of an autoencoder. Defaults are the seed notebook's stacked AE (784-100-30-100-784)."""

    architecture: str = "dense"
    hidden_units: Tuple[int, ...] = (100, 30)  # dense / recurrent widths; the last is the coding size
    conv_filters: Tuple[int, ...] = (16, 32, 64)  # conv: each followed by 2x2 max-pooling
    coding_size: int = 30  # conv: the global-average-pooled code
    activation: str = "relu"
    output_activation: str = "sigmoid"
    tied_weights: bool = False
    greedy: bool = False
    finetune_epochs: int = 5  # greedy: epochs of the stacked model after the layer-wise phases
    noise: str = "none"
    noise_level: float = 0.5  # gaussian: stddev; dropout: rate
    sparsity: str = "none"
    sparsity_weight: float = 5e-3  # l1: activity coefficient; kl: weight of the KL term
    sparsity_target: float = 0.1  # kl: target mean activation of each coding unit
    loss: str = "mse"
    # A small dense step is dominated by per-step overhead: run many per graph call, XLA-fused.
    steps_per_execution: int = 50
    # None: XLA for dense architectures only (benchmarks/speed.py: 1.2x faster dense, 2x slower conv on CPU).
    jit_compile: Optional[bool] = None

    def __post_init__(self):
        if self.jit_compile is None:
            object.__setattr__(self, "jit_compile", self.architecture == "dense")
        super().__post_init__()
        for name, allowed in (("architecture", ARCHITECTURES), ("noise", NOISES), ("sparsity", SPARSITIES),
                              ("activation", ACTIVATIONS), ("output_activation", OUTPUT_ACTIVATIONS),
                              ("loss", LOSSES)):
            require_choice(self, name, allowed)
        require_layer_sizes(self, "hidden_units", "unit")
        require_layer_sizes(self, "conv_filters", "filter")
        require(self.coding_size >= 1, f"coding_size={self.coding_size}: must be at least 1")
        require(self.finetune_epochs >= 0, f"finetune_epochs={self.finetune_epochs}: must be >= 0")
        require(self.noise == "none" or 0 < self.noise_level < (1 if self.noise == "dropout" else math.inf),
                f"noise_level={self.noise_level}: must be > 0 (and < 1 for dropout)")
        require(self.sparsity_weight >= 0, f"sparsity_weight={self.sparsity_weight}: must be >= 0")
        require(0 < self.sparsity_target < 1, f"sparsity_target={self.sparsity_target}: must be in (0, 1)")
        require(not (self.tied_weights or self.greedy) or self.architecture == "dense",
                "tied_weights and greedy need architecture='dense'")
        require(self.sparsity != "kl" or self.coding_activation == "sigmoid",
                "sparsity='kl' needs a sigmoid coding layer: set activation='sigmoid'")

    @property
    def code_units(self) -> int:
        return self.coding_size if self.architecture == "conv" else int(self.hidden_units[-1])

    @property
    def coding_activation(self) -> str:
        # The sparse autoencoders of the chapter use a sigmoid coding layer whatever the other layers use.
        return "sigmoid" if self.sparsity != "none" else self.activation

    def check_input(self, input_shape: Sequence[int]) -> None:
        """An undercomplete autoencoder's codings must be smaller than its input (sparse ones may be larger)."""
        size = math.prod(input_shape)
        if self.sparsity == "none" and self.code_units >= size:
            raise ValueError(f"coding size {self.code_units} is not smaller than the input "
                             f"({'x'.join(map(str, input_shape))} = {size} values): nothing forces it to learn")
        if self.architecture in ("conv", "recurrent") and len(input_shape) != 3:
            raise ValueError(f"architecture={self.architecture!r} needs images (H, W, C); got {tuple(input_shape)}")


class DenseTranspose(keras.layers.Layer):
    """A dense layer whose kernel is the transpose of another Dense layer's (tied weights); own bias."""

    def __init__(self, dense: keras.layers.Dense, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.dense, self.activation = dense, keras.activations.get(activation)

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=[self.dense.kernel.shape[0]], initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        return self.activation(tf.matmul(inputs, self.dense.kernel, transpose_b=True) + self.bias)


@keras.saving.register_keras_serializable("latentforge")
class KLDivergenceRegularizer(keras.regularizers.Regularizer):
    """weight * sum_j KL(target || mean activation of unit j over the batch): pushes codings to sparsity."""

    def __init__(self, weight: float, target: float):
        self.weight, self.target = weight, target

    def __call__(self, codings):
        mean = tf.clip_by_value(tf.reduce_mean(codings, axis=0), 1e-7, 1 - 1e-7)
        t = self.target
        return self.weight * tf.reduce_sum(t * tf.math.log(t / mean) + (1 - t) * tf.math.log((1 - t) / (1 - mean)))

    def get_config(self):
        return {"weight": self.weight, "target": self.target}


class Autoencoder(keras.Model):
    """encoder: inputs -> codings (B, code_units); decoder: codings -> reconstructions (B, *input_shape)."""

    def __init__(self, encoder: keras.Model, decoder: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder

    @property
    def feature_encoder(self) -> keras.Model:
        """x -> codings (B, code_units): the encoder a downstream classifier reuses."""
        return self.encoder

    def call(self, inputs, training=False):
        # float32 out whatever the layers compute in: losses and scores stay in full precision.
        return tf.cast(self.decoder(self.encoder(inputs, training=training), training=training), tf.float32)

    def anomaly_score(self, inputs: tf.Tensor) -> tf.Tensor:
        """Per-example mean squared reconstruction error, (B,)."""
        error = tf.square(self(inputs, training=False) - inputs)
        return tf.reduce_mean(tf.reshape(error, [tf.shape(inputs)[0], -1]), axis=1)


def calibrate_anomaly_threshold(model: "Autoencoder", images: tf.data.Dataset,
                                false_positive_rate: float) -> Dict[str, object]:
    """The anomaly score above which an image is called anomalous, set so that a share `false_positive_rate` of
    `images` (normal data the model did not train on: the eval split, any held-out class left out) is: the
    lowest of their scores with at most that share above it (their (1 - rate) quantile). What the SavedModel's
    metadata carries as `anomaly` and the server's :detect applies."""
    if not 0.0 < false_positive_rate < 1.0:
        raise ValueError(f"false_positive_rate={false_positive_rate}: must be in (0, 1), e.g. 0.01")
    scores = np.concatenate([model.anomaly_score(batch).numpy().astype(np.float64) for batch in images])
    if not len(scores):
        raise ValueError("no images to calibrate the anomaly threshold on: the eval split is empty")
    # The lowest of their scores with at most the target share strictly above it: k = floor(rate * N) above.
    allowed_above = int(np.floor(false_positive_rate * len(scores) + 1e-9))
    threshold = float(np.sort(scores)[len(scores) - 1 - allowed_above])
    return {"threshold": threshold, "target_false_positive_rate": float(false_positive_rate),
            "calibration_split": "eval", "calibration_examples": int(len(scores)),
            "calibration_false_positive_rate": float(np.mean(scores > threshold))}


def export_calibration(model: "Autoencoder", eval_data: tf.data.Dataset, job) -> Dict[str, object]:
    """The family's calibration before export (registry.Family.calibrate): the anomaly threshold, set on the eval
    split the model did not train on at the job's `anomaly_fpr`; the SavedModel's metadata carries it as
    `anomaly` (the server's :detect applies it; the Evaluator measures its false-positive rate and recall on the
    test split)."""
    anomaly = calibrate_anomaly_threshold(model, eval_data, job.anomaly_fpr)
    tf.get_logger().info("anomaly threshold %.6g: %.2f%% of %d eval images above it (target %.2f%%)",
                         anomaly["threshold"], 100 * anomaly["calibration_false_positive_rate"],
                         anomaly["calibration_examples"], 100 * job.anomaly_fpr)
    return {"anomaly": anomaly}


def _coding_regularizer(config: AutoencoderConfig):
    if config.sparsity == "l1":
        return keras.regularizers.L1(config.sparsity_weight)
    if config.sparsity == "kl":
        return KLDivergenceRegularizer(config.sparsity_weight, config.sparsity_target)
    return None


def _noise_layers(config: AutoencoderConfig) -> List[keras.layers.Layer]:
    # Active only in training: the loss compares the reconstruction of a corrupted input with the clean one.
    if config.noise == "gaussian":
        return [keras.layers.GaussianNoise(config.noise_level)]
    if config.noise == "dropout":
        return [keras.layers.Dropout(config.noise_level)]
    return []


def _dense_layers(config: AutoencoderConfig) -> List[keras.layers.Dense]:
    units = config.hidden_units
    return [keras.layers.Dense(u, activation=config.activation if i < len(units) - 1 else config.coding_activation,
                               activity_regularizer=_coding_regularizer(config) if i == len(units) - 1 else None)
            for i, u in enumerate(units)]


def _dense(config: AutoencoderConfig, input_shape) -> Tuple[keras.Model, keras.Model]:
    size = math.prod(input_shape)
    encoder_layers = _dense_layers(config)
    encoder = keras.Sequential([keras.layers.Input(input_shape), *_noise_layers(config), keras.layers.Flatten(),
                                *encoder_layers], name="encoder")
    widths = [size] + list(config.hidden_units[:-1])
    activations = [config.output_activation] + [config.activation] * (len(widths) - 1)
    if config.tied_weights:
        decoder_layers = [DenseTranspose(layer, activation=act)
                          for layer, act in reversed(list(zip(encoder_layers, activations)))]
    else:
        decoder_layers = [keras.layers.Dense(w, activation=act) for w, act in reversed(list(zip(widths, activations)))]
    decoder = keras.Sequential([keras.layers.Input((config.code_units,)), *decoder_layers,
                                keras.layers.Reshape(input_shape)], name="decoder")
    return encoder, decoder


def _conv(config: AutoencoderConfig, input_shape) -> Tuple[keras.Model, keras.Model]:
    height, width, channels = input_shape
    layers = [keras.layers.Input(input_shape), *_noise_layers(config)]
    for filters in config.conv_filters:
        layers += [keras.layers.Conv2D(filters, 3, padding="same", activation=config.activation),
                   keras.layers.MaxPool2D(2, padding="same")]
    layers += [keras.layers.Conv2D(config.coding_size, 3, padding="same", activation=config.coding_activation),
               keras.layers.GlobalAvgPool2D(activity_regularizer=_coding_regularizer(config))]
    encoder = keras.Sequential(layers, name="encoder")
    # The decoder upsamples by 2 per encoder stage from ceil(H / 2^n) and crops back to H x W.
    start_h, start_w, cropping = upsampling_plan(height, width, len(config.conv_filters))
    filters = list(reversed(config.conv_filters))
    decoder_layers = [keras.layers.Input((config.coding_size,)),
                      keras.layers.Dense(start_h * start_w * filters[0], activation=config.activation),
                      keras.layers.Reshape((start_h, start_w, filters[0]))]
    for f in filters[1:]:
        decoder_layers.append(keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same",
                                                           activation=config.activation))
    decoder_layers.append(keras.layers.Conv2DTranspose(channels, 3, strides=2, padding="same",
                                                       activation=config.output_activation))
    decoder_layers.append(keras.layers.Cropping2D(cropping))
    return encoder, keras.Sequential(decoder_layers, name="decoder")


def _recurrent(config: AutoencoderConfig, input_shape) -> Tuple[keras.Model, keras.Model]:
    height, width, channels = input_shape
    units = list(config.hidden_units)
    # Rows are time steps: a seq-to-vector LSTM encoder, a RepeatVector + LSTM seq-to-seq decoder.
    encoder = keras.Sequential(
        [keras.layers.Input(input_shape), *_noise_layers(config), keras.layers.Reshape((height, width * channels))]
        + [keras.layers.LSTM(u, return_sequences=True) for u in units[:-1]]
        + [keras.layers.LSTM(units[-1], activation=config.coding_activation if config.sparsity != "none" else "tanh",
                             activity_regularizer=_coding_regularizer(config))], name="encoder")
    decoder = keras.Sequential(
        [keras.layers.Input((units[-1],)), keras.layers.RepeatVector(height)]
        + [keras.layers.LSTM(u, return_sequences=True) for u in reversed(units[:-1] or units)]
        + [keras.layers.TimeDistributed(keras.layers.Dense(width * channels, activation=config.output_activation)),
           keras.layers.Reshape(input_shape)], name="decoder")
    return encoder, decoder


def _compile(model: keras.Model, config: AutoencoderConfig) -> keras.Model:
    loss = "mse" if config.loss == "mse" else keras.losses.BinaryCrossentropy()
    model.compile(optimizer=make_optimizer(config), loss=loss, steps_per_execution=config.steps_per_execution,
                  jit_compile=use_xla(config))
    return model


def build_autoencoder(config: AutoencoderConfig, input_shape: Sequence[int]) -> Autoencoder:
    """A compiled autoencoder for inputs of `input_shape` (e.g. (28, 28, 1), or (3,) for the toy set)."""
    input_shape = start_build(config, input_shape)
    build = {"dense": _dense, "conv": _conv, "recurrent": _recurrent}[config.architecture]
    with precision_policy(config):
        encoder, decoder = build(config, input_shape)
        model = Autoencoder(encoder, decoder, name=f"{config.architecture}_autoencoder")
        model.build((None, *input_shape))
    return _compile(model, config)


def _greedy_pretrain(model: Autoencoder, config: AutoencoderConfig, inputs: tf.data.Dataset) -> Dict[str, List[float]]:
    """Trains one shallow autoencoder per encoder layer, each on the codings of the ones before, copying
    its weights into the stacked model (the chapter's greedy layer-wise training). The caller's callbacks
    watch the stacked model (checkpoints, epoch counts), so the shallow ones run without them."""
    dense_encoders = [l for l in model.encoder.layers if isinstance(l, keras.layers.Dense)]
    dense_decoders = [l for l in model.decoder.layers if isinstance(l, (keras.layers.Dense, DenseTranspose))][::-1]
    history: Dict[str, List[float]] = {}
    features = inputs.map(lambda x, _: tf.reshape(x, [tf.shape(x)[0], -1]))
    for depth, (enc, dec) in enumerate(zip(dense_encoders, dense_decoders)):
        shallow = keras.Sequential([keras.layers.Input((features.element_spec.shape[-1],)), enc, dec])
        _compile(shallow, config)
        phase = shallow.fit(features.map(lambda x: (x, x)), epochs=config.epochs, verbose=0)
        history[f"greedy_layer{depth + 1}_loss"] = [float(v) for v in phase.history["loss"]]
        features = features.map(lambda x, layer=enc: layer(x))
    return history


def fit(model: Autoencoder, config: AutoencoderConfig, train_data: tf.data.Dataset,
        eval_data: Optional[tf.data.Dataset] = None, callbacks=None, initial_epoch: int = 0) -> Dict[str, List[float]]:
    """Trains a built autoencoder on batches of inputs (B, *input_shape), the targets being the inputs.

    Greedy models first train layer by layer, then fine-tune the stack for finetune_epochs; `initial_epoch`
    (a resumed run) counts the stacked epochs, and a resumed greedy run skips the layer-wise phase.
    """
    train_data, eval_data = with_known_size(train_data, config), with_known_size(eval_data, config)
    pairs = lambda ds: ds.map(lambda x: (x, x)) if ds is not None else None
    history: Dict[str, List[float]] = {}
    epochs = config.epochs
    if config.greedy:
        if initial_epoch == 0:
            history.update(_greedy_pretrain(model, config, pairs(train_data)))
        epochs = config.finetune_epochs
    if epochs > initial_epoch:
        history.update(fit_epochs(model, config, pairs(train_data), pairs(eval_data), callbacks, initial_epoch,
                                  epochs))
    return history


def train(config: AutoencoderConfig, input_shape: Sequence[int], train_data: tf.data.Dataset,
          eval_data: Optional[tf.data.Dataset] = None, callbacks=None) -> Tuple[Autoencoder, Dict[str, List[float]]]:
    """Builds and trains an autoencoder on batches of inputs; returns it and its per-epoch history."""
    model = build_autoencoder(config, input_shape)
    return model, fit(model, config, train_data, eval_data, callbacks)


def serving_signatures(model, image_shape, pixel_range) -> Dict[str, Callable]:
    """The SavedModel's signatures (trainers/export.py writes them; see its docstring for the contract)."""
    images, codings = signatures.image_spec(image_shape), signatures.codings_spec(int(model.encoder.output_shape[-1]))

    @tf.function(input_signature=[images])
    def reconstruct(x):
        return {"reconstructions": model(signatures.checked_images(x, pixel_range), training=False)}

    @tf.function(input_signature=[images])
    def encode(x):
        return {"codings": model.encoder(signatures.checked_images(x, pixel_range), training=False)}

    @tf.function(input_signature=[codings])
    def decode(z):
        return {"images": model.decoder(signatures.checked_codings(z), training=False)}

    @tf.function(input_signature=[images])
    def anomaly_score(x):
        return {"scores": model.anomaly_score(signatures.checked_images(x, pixel_range))}

    return {"serving_default": reconstruct, "reconstruct": reconstruct, "encode": encode, "decode": decode,
            "anomaly_score": anomaly_score}


# The family's description, registered on import (trainers/registry.py imports every family module).
def _total_epochs(config) -> int:
    """The epochs `fit` counts through: a greedy autoencoder's last phase is its fine-tuning."""
    return config.finetune_epochs if config.greedy else config.epochs


register(Family(
    "autoencoder", AutoencoderConfig, without_base(build_autoencoder), fit,
    serving_signatures, signatures.output_of("reconstruct", "reconstructions"),
    key_metric=("test_mse", False), scorers=(scoring.score_reconstructions,), figures=(figures.reconstructions,),
    pixel_range=PIXEL_RANGE, reusable_encoder=True, detects_anomalies=True,
    calibrate=export_calibration,
    total_epochs=_total_epochs, size_rule=conv_architecture_sized,
    search_space={"learning_rate": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [16, 32, 64]}}),
    # Presets follow the seed notebook's architectures and budgets (../shared/seeds/NOTEBOOK-17.md).
    {"linear_ae": dict(hidden_units=(30,), activation="linear", output_activation="linear"),
     "stacked_ae": {},
     "tied_ae": dict(tied_weights=True, epochs=10),
     "greedy_ae": dict(greedy=True, epochs=10, finetune_epochs=5),
     "conv_ae": dict(architecture="conv", epochs=10),
     "recurrent_ae": dict(architecture="recurrent", epochs=10),
     "denoising_ae": dict(noise="dropout", noise_level=0.5, epochs=10),
     "sparse_l1_ae": dict(hidden_units=(100, 300), sparsity="l1", sparsity_weight=1e-4, epochs=10),
     "sparse_kl_ae": dict(hidden_units=(100, 300), sparsity="kl", sparsity_weight=5e-3, sparsity_target=0.1,
                          epochs=10)})
