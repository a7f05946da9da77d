"""A semi-supervised GAN classifier (Salimans et al. 2016, "Improved Techniques for Training GANs", section 5):
a few labels per class plus the unlabelled images, with generated images as the extra, (K+1)-th class.

The discriminator is a K-class classifier whose "fake" logit is fixed at 0, so D(real) = Z / (Z + 1) with
Z = sum_k exp(logit_k). Its loss has two parts:
    supervised    cross-entropy of the labelled examples' classes (the few labels);
    unsupervised  every real image (labelled or not) must look real, each generated one fake:
                  -log D(x) - log(1 - D(G(z))), written with logsumexp so it stays finite.
The generator trains by feature matching (its images' mean features on D's last hidden layer against the real
batch's), which is what makes the generated images useful negatives for the classifier rather than good
pictures. The paper's MNIST networks: a weight-normalised 5-layer MLP with Gaussian noise on every layer's input
for D, a 2-layer softplus MLP with batch norm for G. The chapter's "GANs are used to augment a dataset" in its
most label-efficient form; `trainers/label_efficiency.py` puts it on the label-efficiency curve.

Batches are (images in [0, 1], labels) with label -1 for an unlabelled image (trainers/job.py mixes
`labeled_share` of the labelled examples into each batch, as for the conditional generators).
"""
import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from evaluation import figures, scoring
from trainers import signatures
from trainers.common import AdversarialModel, TrainingConfig, fit_epochs, make_optimizer, require, use_xla
from trainers.family import Family, register, without_base

PIXEL_RANGE = "unit"


@dataclasses.dataclass(frozen=True)
class SemiSupervisedGANConfig(TrainingConfig):
    """The paper's MNIST settings: Adam(3e-3, beta_1 0.5), batches of 100 labelled + 100 unlabelled images
    (batch_size 200, labeled_share 0.5), the rate flat for the first two thirds of the epochs, then linearly to 0
    (`decay_share`)."""

    num_classes: int = 10
    coding_size: int = 100
    discriminator_units: Tuple[int, ...] = (1000, 500, 250, 250, 250)
    generator_units: Tuple[int, ...] = (500, 500)
    input_noise: float = 0.3  # stddev of the Gaussian noise on D's input (training only)
    hidden_noise: float = 0.5  # ... and on each hidden layer's output
    decay_share: float = 1 / 3  # the last share of the epochs over which the rate falls linearly to 0
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    beta_1: float = 0.5
    batch_size: int = 200
    labeled_share: float = 0.5
    epochs: int = 20
    steps_per_execution: int = 50
    jit_compile: bool = True

    def __post_init__(self):
        super().__post_init__()
        require(self.num_classes >= 2, f"num_classes={self.num_classes}: must be at least 2 (`latentforge run` sets "
                "it from a labelled source)")
        require(self.coding_size >= 1, f"coding_size={self.coding_size}: must be at least 1")
        for name in ("discriminator_units", "generator_units"):
            units = getattr(self, name)
            require(len(units) >= 1 and all(int(u) >= 1 for u in units),
                    f"{name}={units}: give at least one layer, each of at least 1 unit")
        require(self.input_noise >= 0 and self.hidden_noise >= 0,
                f"input_noise={self.input_noise}, hidden_noise={self.hidden_noise}: must be >= 0")
        require(0 <= self.decay_share <= 1, f"decay_share={self.decay_share}: must be in [0, 1]")
        require(self.labeled_share > 0, f"labeled_share={self.labeled_share}: the supervised loss needs labelled "
                "examples in every batch (0.5: half of each batch)")


class WeightNormDense(keras.layers.Layer):
    """Dense with weight normalisation (Salimans & Kingma 2016): kernel = g * v / |v| per output unit, which
    the paper's networks use to keep D's logits well scaled."""

    def __init__(self, units: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.activation = int(units), keras.activations.get(activation)

    def build(self, input_shape):
        self.v = self.add_weight("v", (int(input_shape[-1]), self.units),
                                 initializer=keras.initializers.RandomNormal(stddev=0.05))
        self.g = self.add_weight("g", (self.units,), initializer="ones")
        self.b = self.add_weight("b", (self.units,), initializer="zeros")

    def call(self, x):
        kernel = self.v * (self.g / tf.norm(self.v, axis=0))
        return self.activation(tf.matmul(x, kernel) + self.b)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": keras.activations.serialize(self.activation)}


def build_discriminator(config: SemiSupervisedGANConfig, input_shape: Sequence[int]) -> keras.Model:
    """images (B, H, W, C) -> (class logits (B, K), last hidden features (B, units[-1]))."""
    images = keras.Input(tuple(input_shape))
    h = keras.layers.GaussianNoise(config.input_noise)(keras.layers.Flatten()(images))
    for units in config.discriminator_units:
        features = WeightNormDense(units, "relu")(h)
        h = keras.layers.GaussianNoise(config.hidden_noise)(features)
    logits = WeightNormDense(config.num_classes)(h)
    return keras.Model(images, [logits, features], name="discriminator")


def build_generator(config: SemiSupervisedGANConfig, input_shape: Sequence[int]) -> keras.Model:
    """codings (B, coding_size) -> images (B, H, W, C) in [0, 1]."""
    codings = keras.Input((config.coding_size,))
    h = codings
    for units in config.generator_units:
        h = keras.layers.Dense(units, use_bias=False)(h)
        h = keras.layers.Activation("softplus")(keras.layers.BatchNormalization()(h))
    pixels = WeightNormDense(int(np.prod(input_shape)), "sigmoid")(h)
    return keras.Model(codings, keras.layers.Reshape(tuple(input_shape))(pixels), name="generator")


class SemiSupervisedGAN(AdversarialModel):
    """call(images) -> class probabilities (B, K): the discriminator is the classifier."""

    def __init__(self, generator: keras.Model, discriminator: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.generator, self.discriminator = generator, discriminator
        self.coding_size = int(generator.inputs[0].shape[-1])
        self.num_classes = int(discriminator.outputs[0].shape[-1])
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("d_supervised", "d_unsupervised", "g_loss")}
        self.trackers["accuracy"] = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, images, training=False):
        return tf.nn.softmax(self.discriminator(images, training=training)[0])

    def train_step(self, data):
        images, labels = data
        labels = tf.cast(labels, tf.int32)
        labelled = labels >= 0
        batch = tf.shape(images)[0]
        # The real/fake term and the generator's feature matching read the batch's unlabelled images, as the
        # paper's separate unlabelled batches do: the labelled ones are a few examples repeated (labeled_share of
        # every batch), and matching a batch half made of them pulls G toward copying them. A batch with no
        # unlabelled image (a fully labelled source) uses them all.
        unlabelled = tf.cast(tf.logical_not(labelled), tf.float32)
        real_weights = tf.cond(tf.reduce_sum(unlabelled) > 0, lambda: unlabelled, lambda: tf.ones_like(unlabelled))
        real_weights = real_weights / tf.reduce_sum(real_weights)
        with tf.GradientTape() as tape:
            logits, _ = self.discriminator(images, training=True)
            fake_logits, _ = self.discriminator(self._fake(batch), training=True)
            supervised = tf.reduce_sum(tf.where(labelled, tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.maximum(labels, 0), logits), 0.0)) / tf.maximum(tf.reduce_sum(tf.cast(labelled, tf.float32)), 1.0)
            # -log D(x) = -lse + softplus(lse) for a real image; -log(1 - D(G(z))) = softplus(lse) for a fake.
            real_lse, fake_lse = tf.reduce_logsumexp(logits, 1), tf.reduce_logsumexp(fake_logits, 1)
            unsupervised = (tf.reduce_sum(real_weights * (tf.nn.softplus(real_lse) - real_lse))
                            + tf.reduce_mean(tf.nn.softplus(fake_lse)))
            d_loss = supervised + unsupervised
        variables = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, variables), variables))
        with tf.GradientTape() as tape:
            _, fake_features = self.discriminator(self._fake(batch), training=True)
            _, real_features = self.discriminator(images, training=True)
            real_mean = tf.reduce_sum(real_weights[:, None] * tf.stop_gradient(real_features), 0)
            g_loss = tf.reduce_mean(tf.square(real_mean - tf.reduce_mean(fake_features, 0)))
        variables = self.generator.trainable_variables
        self.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, variables), variables))
        self.trackers["d_supervised"].update_state(supervised)
        self.trackers["d_unsupervised"].update_state(unsupervised)
        self.trackers["g_loss"].update_state(g_loss)
        self.trackers["accuracy"].update_state(tf.boolean_mask(labels, labelled), tf.boolean_mask(logits, labelled))
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def test_step(self, data):
        images, labels = data
        logits, _ = self.discriminator(images, training=False)
        self.trackers["d_supervised"].update_state(tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)))
        self.trackers["accuracy"].update_state(labels, logits)
        return {name: self.trackers[name].result() for name in ("d_supervised", "accuracy")}

    def _fake(self, batch):
        codings = tf.random.uniform(tf.stack([batch, self.coding_size]))
        return self.generator(codings, training=True)

    def generate(self, n: int, seed: int = 0) -> tf.Tensor:
        """n of the generator's images in [0, 1]: the classifier's negatives, not meant as good pictures."""
        codings = tf.random.stateless_uniform([n, self.coding_size], seed=[seed, 0])
        return self.generator(codings, training=False)


def build_ssgan(config: SemiSupervisedGANConfig, input_shape: Sequence[int]) -> SemiSupervisedGAN:
    keras.utils.set_random_seed(config.seed)
    model = SemiSupervisedGAN(build_generator(config, input_shape), build_discriminator(config, input_shape),
                              name="ssgan")
    model.compile(d_optimizer=make_optimizer(config), g_optimizer=make_optimizer(config),
                  steps_per_execution=config.steps_per_execution, jit_compile=use_xla(config))
    model.build((None, *input_shape))
    return model


def learning_rate(config: SemiSupervisedGANConfig, epoch: int) -> float:
    """The rate of epoch `epoch` (0-based): flat, then linearly to 0 over the last `decay_share` of the epochs."""
    decay_epochs = config.epochs * config.decay_share
    if decay_epochs <= 0:
        return config.learning_rate
    return config.learning_rate * float(min(1.0, (config.epochs - epoch) / decay_epochs))


class _RateSchedule(keras.callbacks.Callback):
    """Both optimizers' rates per epoch (Keras' LearningRateScheduler knows only model.optimizer)."""

    def __init__(self, config: SemiSupervisedGANConfig):
        super().__init__()
        self.config = config

    def on_epoch_begin(self, epoch, logs=None):
        for optimizer in (self.model.d_optimizer, self.model.g_optimizer):
            optimizer.learning_rate.assign(learning_rate(self.config, epoch))


def fit(model: SemiSupervisedGAN, config: SemiSupervisedGANConfig, train_data: tf.data.Dataset,
        eval_data: Optional[tf.data.Dataset] = None, callbacks=None, initial_epoch: int = 0) -> Dict[str, List[float]]:
    """Trains from `initial_epoch` to config.epochs on (images, labels) batches (-1: unlabelled); eval_data's
    labelled batches give val_accuracy. Returns the per-epoch history."""
    return fit_epochs(model, config, train_data, eval_data, [_RateSchedule(config), *(callbacks or [])],
                      initial_epoch)


def train(config: SemiSupervisedGANConfig, input_shape: Sequence[int], train_data: tf.data.Dataset,
          eval_data: Optional[tf.data.Dataset] = None, callbacks=None) -> Tuple[SemiSupervisedGAN, Dict[str, List[float]]]:
    model = build_ssgan(config, input_shape)
    return model, fit(model, config, train_data, eval_data, callbacks)


def serving_signatures(model, image_shape, pixel_range) -> Dict[str, Callable]:
    """classify (the serving default), as a classifier's; generate(n, seed): the generator's negatives."""
    @tf.function(input_signature=[signatures.image_spec(image_shape)])
    def classify(x):
        probabilities = model(signatures.checked_images(x, pixel_range), training=False)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

    @tf.function(input_signature=[signatures.N, signatures.SEED])
    def generate(n, seed):
        n = signatures.checked_count(n, "n", signatures.MAX_GENERATED)
        codings = tf.random.stateless_uniform(tf.stack([n, model.coding_size]), seed=tf.stack([seed, 0]))
        return {"images": model.generator(codings, training=False)}

    return {"serving_default": classify, "classify": classify, "generate": generate}


# The family's description, registered on import (trainers/registry.py imports every family module).
register(Family(
    "semi_supervised_gan", SemiSupervisedGANConfig, without_base(build_ssgan), fit,
    serving_signatures, signatures.output_of("classify", "probabilities"), key_metric=("test_accuracy", True),
    scorers=(scoring.score_classification,), figures=(figures.samples(64),), pixel_range=PIXEL_RANGE,
    supervised=True, semi_supervised=True,
    description="semi-supervised GAN classifier: the few labels, the unlabelled images and generated ones as an "
                "extra class (Salimans et al. 2016); use with --labels-per-class"),
    {"ssgan": {}})
