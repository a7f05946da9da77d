"""GANs of chapter 17: the dense GAN (two-phase training), DCGAN and WGAN-GP.

    architecture  dense | dcgan
    loss          bce: the original GAN game (discriminator outputs a logit)
                  wgan_gp: Wasserstein critic with gradient penalty, `critic_steps` critic updates per G update
    label_smoothing  one-sided: real images are labelled 1 - s for the discriminator
    spectral_norm    wraps the discriminator's kernels in spectral normalisation
    r1_penalty       gamma of R1 (Mescheder et al. 2018, StyleGAN's regulariser): D's loss gains
                     gamma / 2 * ||grad_x D(x)||^2 on real images, so D cannot win by a steep boundary at the data;
                     with `r1_interval` k > 1 lazily (StyleGAN2): on every k-th discriminator step only, times k,
                     the same average penalty for 1/k of its double back-propagation
    num_classes      class-conditional (the dcgan_cond / wgan_gp_cond presets): the generator reads a learned
                     label embedding beside its codings; the discriminator (critic) adds the projection term
                     <embed(y), phi(x)> of Miyato & Koyama (2018) to its score, phi its last features

Chapter 17's remedies for mode collapse, each a config field (off by default), on any architecture and loss:
    minibatch_stddev  minibatch discrimination in ProGAN's form (Karras et al. 2018): D's last features gain one,
                      the standard deviation of the features across a group of images, so a collapsed G's batch
                      (near-identical fakes) is easy to tell from a real one
    feature_matching  G also matches the batch mean of D's last features on real and fake images (Salimans et al.
                      2016): ||E phi(x) - E phi(G(z))||^2, averaged over the features, times this weight
    replay_size       experience replay: a buffer of past fakes, `replay_fraction` of every D batch's fakes drawn
                      from it, so D keeps penalising what G produced earlier and G cannot cycle between modes

Images are in [-1, 1] (tanh output, DCGAN's guideline). Divergence (NaN/Inf losses, or a discriminator that wins
outright for `max_discriminator_wins` consecutive steps) raises trainers.common.TrainingDiverged with the step.
"""
import dataclasses
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from evaluation import figures, scoring
from trainers import progressive, signatures
from trainers.common import (AdversarialModel, DivergenceMonitor, TrainingConfig, apply_gradients, average_loss,
                             conv_stack_sized, fit_epochs, make_optimizer, per_example_sum, precision_policy,
                             require, require_choice, require_ema_decay, require_layer_sizes, scaled_loss,
                             start_build, upsampling_plan, use_xla)
from trainers.ema import ExponentialMovingAverage
from trainers.family import Family, register, standard_normal, with_classes, without_base
from trainers.gan_layers import ClassProjection, MinibatchStddev, ReplayBuffer, SpectralNormalization

PIXEL_RANGE = "symmetric"
ARCHITECTURES = ("dense", "dcgan")
LOSSES = ("bce", "wgan_gp")
# A discriminator "wins outright" when it scores real images above 1 - WIN_MARGIN and fakes below WIN_MARGIN.
WIN_MARGIN = 0.01


@dataclasses.dataclass(frozen=True)
class GANConfig(TrainingConfig):
    """Defaults are the notebook's dense GAN: G 30-100-150-784, D 784-150-100-1, SELU, RMSprop, batch 32."""

    architecture: str = "dense"
    loss: str = "bce"
    coding_size: int = 30
    hidden_units: Tuple[int, ...] = (100, 150)  # dense G widths; D uses them reversed
    conv_filters: Tuple[int, ...] = (64, 128)  # dcgan D widths (stride 2 each); G uses them reversed
    activation: str = "selu"  # dense layers and G's transposed convolutions
    dropout: float = 0.4  # dcgan D
    label_smoothing: float = 0.0
    spectral_norm: bool = False
    critic_steps: int = 1
    gradient_penalty: float = 10.0
    r1_penalty: float = 0.0  # gamma (bce loss; 0: off)
    r1_interval: int = 1  # lazy R1: applied (times this) on every r1_interval-th discriminator step only
    discriminator_learning_rate: Optional[float] = None  # None: learning_rate
    max_discriminator_wins: int = 500  # consecutive steps; 0: never stop for it
    ema_decay: float = 0.999  # sample, score and export an average of the generator's weights (0: the raw ones)
    optimizer: str = "rmsprop"
    epochs: int = 50
    # Class conditioning (0: unconditional; `latentforge run` sets it from a labelled source for a conditional
    # preset). A real image without a label (-1: few-label training) and the fake drawn beside it get no
    # projection term: they train the discriminator's unconditional part only, so no label is invented.
    num_classes: int = 0
    label_embedding_dim: int = 50  # the generator's label embedding (the projection's is the features' width)
    # Mode-collapse remedies (see the module docstring); 0 turns each off.
    minibatch_stddev: int = 0  # group size (2 or more; a batch it does not divide is one group)
    feature_matching: float = 0.0  # weight of the feature-matching term in G's loss
    replay_size: int = 0  # past fakes kept (at least batch_size)
    replay_fraction: float = 0.5  # share of each D batch's fakes drawn from the buffer once it holds any
    # Progressive growing (trainers/progressive.py): from the coarsest resolution of the dcgan stack up, each new
    # block faded in over `fade_images` images, each resolution then trained alone for `stable_images`.
    progressive: bool = False
    fade_images: int = 60_000
    stable_images: int = 60_000

    def __post_init__(self):
        super().__post_init__()
        require_choice(self, "architecture", ARCHITECTURES)
        require_choice(self, "loss", LOSSES)
        require(self.activation in ("relu", "selu", "elu", "tanh", "leaky_relu"),
                f"activation={self.activation!r}: must be one of ('relu', 'selu', 'elu', 'tanh', 'leaky_relu')")
        require(self.coding_size >= 1, f"coding_size={self.coding_size}: must be at least 1")
        require_layer_sizes(self, "hidden_units", "unit")
        require_layer_sizes(self, "conv_filters", "filter")
        require(0 <= self.dropout < 1, f"dropout={self.dropout}: must be in [0, 1)")
        require(0 <= self.label_smoothing < 0.5, f"label_smoothing={self.label_smoothing}: must be in [0, 0.5)")
        require(self.critic_steps >= 1, f"critic_steps={self.critic_steps}: must be at least 1")
        require(self.gradient_penalty >= 0, f"gradient_penalty={self.gradient_penalty}: must be >= 0")
        require(math.isfinite(self.r1_penalty) and self.r1_penalty >= 0,
                f"r1_penalty={self.r1_penalty}: must be a weight >= 0 (0: off)")
        require(self.loss == "bce" or self.r1_penalty == 0,
                f"r1_penalty applies to loss='bce' (set r1_penalty=0 with loss={self.loss!r}: its critic has "
                "gradient_penalty)")
        require(self.r1_interval >= 1, f"r1_interval={self.r1_interval}: must be at least 1 (1: every step)")
        require(self.discriminator_learning_rate is None or self.discriminator_learning_rate > 0,
                f"discriminator_learning_rate={self.discriminator_learning_rate}: must be positive")
        require_ema_decay(self)
        require(self.num_classes >= 0 and self.num_classes != 1,
                f"num_classes={self.num_classes}: must be 0 (unconditional) or at least 2")
        require(self.label_embedding_dim >= 1, f"label_embedding_dim={self.label_embedding_dim}: must be at least 1")
        require(self.max_discriminator_wins >= 0, f"max_discriminator_wins={self.max_discriminator_wins}: must be >= 0")
        require(self.loss != "wgan_gp" or self.label_smoothing == 0,
                "label_smoothing applies to loss='bce' only: a Wasserstein critic has no labels")
        require(self.minibatch_stddev == 0 or 2 <= self.minibatch_stddev <= self.batch_size,
                f"minibatch_stddev={self.minibatch_stddev}: a group size between 2 and batch_size "
                f"({self.batch_size}), or 0 (off)")
        require(math.isfinite(self.feature_matching) and self.feature_matching >= 0,
                f"feature_matching={self.feature_matching}: must be a weight >= 0 (0: off)")
        require(self.replay_size == 0 or self.replay_size >= self.batch_size,
                f"replay_size={self.replay_size}: must hold at least one batch (batch_size={self.batch_size}), "
                "or be 0 (off)")
        require(0 < self.replay_fraction <= 1, f"replay_fraction={self.replay_fraction}: must be in (0, 1]")
        require(not self.progressive or self.architecture == "dcgan",
                f"progressive=true grows the convolutional stack: set architecture='dcgan' (not "
                f"{self.architecture!r})")
        require(not self.progressive or not self.num_classes,
                "progressive=true is for unconditional GANs (num_classes=0)")
        require(self.fade_images >= 1 and self.stable_images >= 0,
                f"fade_images={self.fade_images}, stable_images={self.stable_images}: fade over at least 1 image, "
                "stay stable for 0 or more")

    @property
    def code_units(self) -> int:
        return self.coding_size

    def check_input(self, input_shape: Sequence[int]) -> None:
        require(self.architecture != "dcgan" or len(input_shape) == 3,
                f"architecture='dcgan' needs images (H, W, C); got {tuple(input_shape)}")


class GAN(AdversarialModel):
    """generator: codings (B, K) -> images (B, H, W, C) in [-1, 1]; discriminator: images -> (B, 1) logit/score.
    A conditional GAN's (num_classes > 0) take [codings, labels] and [images, labels] (labels (B,) int32, -1 for
    an unlabeled real image). With `ema_decay` > 0 an exponential moving average of the generator's weights
    draws the samples. `feature_matching` > 0 adds that weight times the feature-matching term to G's loss (the
    discriminator's last features are its final layer's input); `replay` mixes past fakes into D's batches."""

    def __init__(self, generator: keras.Model, discriminator: keras.Model, loss: str = "bce",
                 label_smoothing: float = 0.0, critic_steps: int = 1, gradient_penalty: float = 10.0,
                 ema_decay: float = 0.0, num_classes: int = 0, feature_matching: float = 0.0, r1_penalty: float = 0.0,
                 replay: Optional[ReplayBuffer] = None, growth: Optional[progressive.Growth] = None,
                 r1_interval: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.generator, self.discriminator = generator, discriminator
        self.ema = ExponentialMovingAverage(generator, ema_decay) if ema_decay else None
        self.loss_kind, self.label_smoothing = loss, label_smoothing
        self.critic_steps, self.gradient_penalty, self.r1_penalty = critic_steps, gradient_penalty, r1_penalty
        self.r1_interval = r1_interval
        self.num_classes = num_classes
        self.coding_size = int(generator.inputs[0].shape[-1])
        self.feature_matching, self.replay, self.growth = feature_matching, replay, growth
        # The same layers, answering (score, last features) for the feature-matching term.
        self.scored_features = (keras.Model(discriminator.inputs, [discriminator.outputs[0], _features(discriminator)],
                                            name="discriminator_features") if feature_matching else None)
        names = ("d_loss", "g_loss") + (("feature_matching",) if feature_matching else ())
        if growth is not None:  # a network's level of detail: its resolution, fractional during a fade
            names += ("level_of_detail",)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    def call(self, inputs, training=False):
        """codings (B, K) -> images; a conditional GAN takes [codings, labels]."""
        return self.generator(inputs, training=training)

    def weight_averages(self):
        """(average, network) pairs: the generator's EMA (none without ema_decay)."""
        return [(self.ema, self.generator)] if self.ema is not None else []

    @property
    def sampling_generator(self) -> keras.Model:
        """The generator that samples (generate, the SavedModel, the pictures): the EMA's when there is one."""
        return self.ema.network if self.ema is not None else self.generator

    def sample_labels(self, n: int, labels=None) -> Optional[tf.Tensor]:
        """The (n,) int32 labels of n generated images: `labels` repeated cyclically, by default every class in
        turn; None for an unconditional GAN (signatures.class_labels)."""
        return signatures.class_labels(n, labels, self.num_classes, "GAN")

    def generate(self, n: int, seed: int = 0, labels=None, level_of_detail: Optional[float] = None) -> tf.Tensor:
        """n images (n, H, W, C) in [-1, 1] from codings drawn from N(0, I); the same seed, the same images. A
        conditional GAN draws `labels` (see `sample_labels`); a progressive one at the level of detail it has
        reached, or at `level_of_detail` (0: full resolution)."""
        codings = tf.random.stateless_normal([n, self.coding_size], seed=[seed, 0])
        labels = self.sample_labels(n, labels)
        inputs = self._with(codings, labels, level_of_detail)
        return tf.cast(self.sampling_generator(inputs, training=False), tf.float32)

    def _with(self, x, labels, level_of_detail=None):
        """A network's inputs: x, a conditional GAN's labels beside it, a progressive GAN's level of detail
        (its schedule's unless given) for each image."""
        inputs = [x] + ([] if labels is None else [labels])
        if self.growth is not None:
            lod = self.growth.level_of_detail() if level_of_detail is None else level_of_detail
            inputs.append(tf.fill(tf.shape(x)[:1], tf.cast(lod, tf.float32)))
        return inputs[0] if len(inputs) == 1 else inputs

    def _fake(self, batch_size, labels=None):
        """Fakes for a batch; a conditional GAN's of the batch's labels, a random class where a label is -1."""
        codings = tf.random.normal([batch_size, self.coding_size])
        if labels is not None:
            labels = tf.where(labels >= 0, labels,
                              tf.random.uniform(tf.shape(labels), 0, self.num_classes, dtype=tf.int32))
        return tf.cast(self.generator(self._with(codings, labels), training=True), tf.float32)

    def _logits(self, images, labels=None):
        """The discriminator's logits/scores (B,) in float32 whatever precision it computes in (a conditional
        one's given the labels: -1, no class term)."""
        return tf.cast(self.discriminator(self._with(images, labels), training=True)[:, 0], tf.float32)

    def _unpack(self, data):
        """A batch: images, or (images, labels) for a conditional GAN (labels (B,), -1 for an unlabeled image)."""
        if not self.num_classes:
            return data, None
        images, labels = data
        return images, tf.cast(labels, tf.int32)

    def _discriminator_step(self, real, labels):
        """Returns per-example D losses (B,) and the per-step mean D probabilities on real and fake images.
        A conditional GAN's fakes are of the real batch's labels and judged with them (-1 as for the real); a
        replayed fake with the label it was judged with when it was made."""
        fake, fake_labels = self._fake(tf.shape(real)[0], labels), labels
        if self.replay is not None:
            fake, fake_labels = self.replay.mix(fake, labels)
        with tf.GradientTape() as tape:
            real_logits = self._logits(real, labels)
            fake_logits = self._logits(fake, fake_labels)
            if self.loss_kind == "bce":
                # The notebook's phase 1: one batch of fakes and reals, so the mean over both halves.
                targets = tf.fill(tf.shape(real_logits), 1.0 - self.label_smoothing)
                per_example = 0.5 * (tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=real_logits)
                                     + tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.zeros_like(fake_logits),
                                                                               logits=fake_logits))
                if self.r1_penalty:
                    per_example += 0.5 * self.r1_penalty * self._r1_term(real, labels)
            else:
                per_example = fake_logits - real_logits + self.gradient_penalty * self._penalty(real, fake, labels)
            loss = scaled_loss(self.d_optimizer, average_loss(per_example, self.discriminator))
        apply_gradients(self.d_optimizer, tape, loss, self.discriminator.trainable_variables)
        return per_example, tf.reduce_mean(tf.sigmoid(real_logits)), tf.reduce_mean(tf.sigmoid(fake_logits))

    def _penalty(self, real, fake, labels=None):
        """WGAN-GP: (||grad_x critic(x)|| - 1)^2 at random points between real and fake images, (B,)."""
        mix = tf.random.uniform([tf.shape(real)[0]] + [1] * (len(real.shape) - 1))
        between = real + mix * (fake - real)
        norms = tf.sqrt(self._squared_input_gradient(between, labels) + 1e-12)
        return tf.square(norms - 1.0)

    def _r1_term(self, real, labels=None):
        """||grad_x D(x)||^2 at the real images (B,), or lazily: r1_interval times it on the steps where the
        discriminator's step count is a multiple of r1_interval, 0 on the others."""
        if self.r1_interval == 1:
            return self._squared_input_gradient(real, labels)
        due = tf.equal(self.d_optimizer.iterations % self.r1_interval, 0)
        return tf.cond(due, lambda: self.r1_interval * self._squared_input_gradient(real, labels),
                       lambda: tf.zeros(tf.shape(real)[:1]))

    def _squared_input_gradient(self, images, labels=None):
        """||grad_x D(x)||^2 per image, (B,): WGAN-GP's between real and fake, R1's at the real images."""
        with tf.GradientTape() as tape:
            tape.watch(images)
            scores = self._logits(images, labels)
        return per_example_sum(tf.square(tape.gradient(scores, images)))

    def feature_gap(self, real, fake, labels=None):
        """Feature matching's term: the squared distance between the batch means of the discriminator's last
        features on real and on fake images, averaged over the features; also the fakes' scores (B,)."""
        fake_scores, fake_features = self.scored_features(self._with(fake, labels), training=True)
        _, real_features = self.scored_features(self._with(real, labels), training=True)
        gap = tf.reduce_mean(tf.cast(real_features, tf.float32), axis=0) - tf.reduce_mean(
            tf.cast(fake_features, tf.float32), axis=0)
        return tf.reduce_mean(tf.square(gap)), tf.cast(fake_scores[:, 0], tf.float32)

    def train_step(self, data):
        real, labels = self._unpack(data)
        if self.growth is not None:  # the real images at the resolution the networks are at
            real = self.growth.blur_reals(real, self.growth.level_of_detail())
        # 1. Discriminator (critic_steps times for WGAN-GP): tell real images from the generator's.
        for _ in range(self.critic_steps):
            d_per_example, d_real, d_fake = self._discriminator_step(real, labels)
        # 2. Generator: make the discriminator call its images real (or score them high, for the critic).
        with tf.GradientTape() as tape:
            fake = self._fake(tf.shape(real)[0], labels)
            if self.feature_matching:
                gap, fake_logits = self.feature_gap(real, fake, labels)
            else:
                fake_logits = self._logits(fake, labels)
            if self.loss_kind == "bce":
                g_per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(fake_logits),
                                                                        logits=fake_logits)
            else:
                g_per_example = -fake_logits
            g_loss = average_loss(g_per_example, self.generator)
            if self.feature_matching:
                # A batch statistic: each replica's share, so the gradients summed over replicas average them.
                g_loss += self.feature_matching * gap / tf.distribute.get_strategy().num_replicas_in_sync
            g_loss = scaled_loss(self.g_optimizer, g_loss)
        apply_gradients(self.g_optimizer, tape, g_loss, self.generator.trainable_variables)
        for average, network in self.weight_averages():
            average.update(network, self.g_optimizer.iterations)
        self.trackers["d_loss"].update_state(d_per_example)
        self.trackers["g_loss"].update_state(g_per_example)
        logs = {}
        if self.growth is not None:
            self.trackers["level_of_detail"].update_state(self.growth.level_of_detail())
            logs["level_of_detail"] = self.trackers["level_of_detail"].result()
            self.growth.advance(tf.shape(real)[0])
        if self.feature_matching:
            self.trackers["feature_matching"].update_state(gap)
            logs["feature_matching"] = self.trackers["feature_matching"].result()
        # Per-step values (not epoch means) for the divergence monitor; the epoch log shows the last step's.
        return {"d_loss": self.trackers["d_loss"].result(), "g_loss": self.trackers["g_loss"].result(), **logs,
                "step_d_loss": tf.reduce_mean(d_per_example), "step_g_loss": tf.reduce_mean(g_per_example),
                "step_d_real": d_real, "step_d_fake": d_fake}


def _discriminator_layer(layer, config: GANConfig):
    return SpectralNormalization(layer) if config.spectral_norm else layer


def _last_features(config: GANConfig) -> List[keras.layers.Layer]:
    """What goes just before the discriminator's final layer: the minibatch-stddev feature when it is on."""
    return [MinibatchStddev(config.minibatch_stddev, name="minibatch_stddev")] if config.minibatch_stddev else []


def _features(discriminator: keras.Model):
    """The discriminator's last features phi (symbolic): what its final layer (and a conditional one's class
    projection) scores."""
    names = [layer.name for layer in discriminator.layers]
    if "class_projection" in names:
        return discriminator.get_layer("class_projection").input[0]
    return discriminator.layers[-1].input


def _generator_inputs(config: GANConfig) -> int:
    """The width the generator's layers read: the codings, and a conditional one's label embedding beside them."""
    return config.coding_size + (config.label_embedding_dim if config.num_classes else 0)


def _dense(config: GANConfig, input_shape) -> Tuple[keras.Model, keras.Model]:
    generator = keras.Sequential(
        [keras.layers.Input((_generator_inputs(config),))]
        + [keras.layers.Dense(units, activation=config.activation) for units in config.hidden_units]
        + [keras.layers.Dense(math.prod(input_shape), activation="tanh"), keras.layers.Reshape(input_shape)],
        name="generator")
    discriminator = keras.Sequential(
        [keras.layers.Input(input_shape), keras.layers.Flatten()]
        + [_discriminator_layer(keras.layers.Dense(units, activation=config.activation), config)
           for units in reversed(config.hidden_units)]
        + _last_features(config) + [_discriminator_layer(keras.layers.Dense(1), config)], name="discriminator")
    return generator, discriminator


def _dcgan(config: GANConfig, input_shape) -> Tuple[keras.Model, keras.Model]:
    height, width, channels = input_shape
    start_h, start_w, cropping = upsampling_plan(height, width, len(config.conv_filters))
    filters = list(reversed(config.conv_filters))
    layers = [keras.layers.Input((_generator_inputs(config),)), keras.layers.Dense(start_h * start_w * filters[0]),
              keras.layers.Reshape((start_h, start_w, filters[0])), keras.layers.BatchNormalization()]
    for f in filters[1:]:
        layers += [keras.layers.Conv2DTranspose(f, 5, strides=2, padding="same", activation=config.activation),
                   keras.layers.BatchNormalization()]
    layers += [keras.layers.Conv2DTranspose(channels, 5, strides=2, padding="same", activation="tanh"),
               keras.layers.Cropping2D(cropping)]
    return keras.Sequential(layers, name="generator"), dcgan_discriminator(config, input_shape)


def dcgan_discriminator(config: GANConfig, input_shape) -> keras.Sequential:
    """DCGAN's discriminator: strided 5x5 convolutions (`conv_filters`), leaky ReLU, dropout, then a dense score
    (what trainers.stylegan pairs its generator with too)."""
    layers = [keras.layers.Input(input_shape)]
    for f in config.conv_filters:
        # No BatchNorm in the discriminator: the gradient penalty is per example, and BatchNorm mixes examples.
        layers += [_discriminator_layer(keras.layers.Conv2D(f, 5, strides=2, padding="same"), config),
                   keras.layers.LeakyReLU(0.2), keras.layers.Dropout(config.dropout)]
    # The stddev feature as one more feature map (ProGAN puts it before D's last convolutions).
    layers += _last_features(config) + [keras.layers.Flatten(), _discriminator_layer(keras.layers.Dense(1), config)]
    return keras.Sequential(layers, name="discriminator")


def replay_buffer(config: GANConfig, input_shape) -> Optional[ReplayBuffer]:
    """The experience-replay buffer `replay_size` asks for (None when off)."""
    if not config.replay_size:
        return None
    return ReplayBuffer(config.replay_size, input_shape, config.replay_fraction, bool(config.num_classes))


def _conditional(config: GANConfig, generator: keras.Sequential, discriminator: keras.Sequential,
                 input_shape) -> Tuple[keras.Model, keras.Model]:
    """The class-conditional pair around the unconditional stacks: the generator reads [codings, labels] (the
    label's embedding concatenated to the codings); the discriminator scores [images, labels] as its last layer
    on its features phi plus ClassProjection's <embedding[label], phi>."""
    codings = keras.layers.Input((config.coding_size,), name="codings")
    labels = keras.layers.Input((), dtype=tf.int32, name="labels")
    embedded = keras.layers.Embedding(config.num_classes, config.label_embedding_dim, name="label_embedding")(labels)
    conditional_generator = keras.Model([codings, labels],
                                        generator(keras.layers.Concatenate()([codings, embedded])), name="generator")
    images = keras.layers.Input(input_shape, name="images")
    critic_labels = keras.layers.Input((), dtype=tf.int32, name="labels")
    features = images
    for layer in discriminator.layers[:-1]:
        features = layer(features)
    projection = ClassProjection(config.num_classes, name="class_projection")
    score = keras.layers.Add()([discriminator.layers[-1](features), projection([features, critic_labels])])
    return conditional_generator, keras.Model([images, critic_labels], score, name="discriminator")


def build_gan(config: GANConfig, input_shape: Sequence[int]) -> GAN:
    input_shape = start_build(config, input_shape)
    with precision_policy(config):
        growth = None
        if config.progressive:
            growth = progressive.Growth(len(config.conv_filters), config.fade_images, config.stable_images)
            generator = progressive.generator(config, input_shape, _generator_inputs(config), config.activation)
            discriminator = progressive.discriminator(config, input_shape, _last_features(config),
                                                      lambda layer: _discriminator_layer(layer, config))
        else:
            generator, discriminator = {"dense": _dense, "dcgan": _dcgan}[config.architecture](config, input_shape)
        if config.num_classes:
            generator, discriminator = _conditional(config, generator, discriminator, input_shape)
        model = GAN(generator, discriminator, loss=config.loss, label_smoothing=config.label_smoothing,
                    critic_steps=config.critic_steps, gradient_penalty=config.gradient_penalty,
                    ema_decay=config.ema_decay, num_classes=config.num_classes,
                    feature_matching=config.feature_matching, r1_penalty=config.r1_penalty,
                    r1_interval=config.r1_interval, replay=replay_buffer(config, input_shape),
                    growth=growth, name=f"{'progressive_' if growth else ''}{config.architecture}_{config.loss}_"
                                        f"{'conditional_' if config.num_classes else ''}gan")
        if config.num_classes:  # built already (functional); a call builds the wrapper (its weights tracked)
            model([tf.zeros((1, config.coding_size)), tf.zeros((1,), tf.int32)])
        elif growth is not None:
            model([tf.zeros((1, config.coding_size)), tf.zeros((1,))])
        else:
            model.build((None, config.coding_size))
            model.discriminator.build((None, *input_shape))
    model.compile(d_optimizer=make_optimizer(config, config.discriminator_learning_rate),
                  g_optimizer=make_optimizer(config), steps_per_execution=config.steps_per_execution,
                  jit_compile=use_xla(config))
    return model


def divergence_monitor(config: GANConfig) -> DivergenceMonitor:
    def discriminator_wins(logs):
        return logs.get("step_d_real", 0.5) > 1 - WIN_MARGIN and logs.get("step_d_fake", 0.5) < WIN_MARGIN
    # A Wasserstein critic's scores are not probabilities: only non-finite losses count there.
    return DivergenceMonitor(("step_d_loss", "step_g_loss"),
                             wins=discriminator_wins if config.loss == "bce" else None,
                             patience=config.max_discriminator_wins)


def fit(model: GAN, config: GANConfig, train_data: tf.data.Dataset, eval_data: Optional[tf.data.Dataset] = None,
        callbacks=None, initial_epoch: int = 0) -> Dict[str, List[float]]:
    """Trains a built GAN from `initial_epoch` to config.epochs; returns the per-epoch d_loss and g_loss.

    eval_data is unused: a GAN's losses on held-out images say little (the Evaluator scores samples instead).
    Raises TrainingDiverged when training diverges.
    """
    del eval_data
    history = fit_epochs(model, config, train_data, None, [divergence_monitor(config), *(callbacks or [])],
                         initial_epoch)
    return {k: v for k, v in history.items() if not k.startswith("step_")}


def train(config: GANConfig, input_shape: Sequence[int], train_data: tf.data.Dataset,
          eval_data: Optional[tf.data.Dataset] = None, callbacks=None) -> Tuple[GAN, Dict[str, List[float]]]:
    """Trains a GAN on batches of real images (B, H, W, C) in [-1, 1]; returns it and its per-epoch history."""
    model = build_gan(config, input_shape)
    return model, fit(model, config, train_data, eval_data, callbacks)


def serving_signatures(model, image_shape, pixel_range) -> Dict[str, Callable]:
    """The SavedModel's signatures (trainers/export.py writes them; see its docstring for the contract)."""
    del image_shape, pixel_range
    to_unit = lambda x: (x + 1.0) / 2.0

    def draw(codings, labels):
        labels = None if labels is None else signatures.cycled_labels(labels, tf.shape(codings)[0])
        return {"images": to_unit(model.sampling_generator(model._with(codings, labels), training=False))}

    def sample(n, seed, labels):
        n = signatures.checked_count(n, "n", signatures.MAX_GENERATED)
        codings = tf.random.stateless_normal(tf.stack([n, model.coding_size]), seed=tf.stack([seed, 0]))
        return draw(codings, labels if labels is None else signatures.checked_labels(labels, model.num_classes))

    if model.num_classes:
        generate = tf.function(lambda n, seed, labels: sample(n, seed, labels),
                               input_signature=[signatures.N, signatures.SEED, signatures.LABELS])
    else:
        generate = tf.function(lambda n, seed: sample(n, seed, None), input_signature=[signatures.N, signatures.SEED])

    @tf.function(input_signature=[signatures.codings_spec(model.coding_size)])
    def generate_from_codings(z):
        """codings -> images; a conditional GAN's image i is of class i mod num_classes (every class in turn)."""
        return draw(signatures.checked_codings(z), tf.range(model.num_classes) if model.num_classes else None)

    return {"serving_default": generate, "generate": generate, "generate_from_codings": generate_from_codings}


def export_metadata(model: GAN) -> Dict[str, object]:
    """A conditional GAN's classes and its generate's default labels (every class in turn); a progressive GAN's
    level of detail (0: it reached full resolution)."""
    metadata = {}
    if model.growth is not None:
        metadata["level_of_detail"] = float(model.growth.level_of_detail())
    if model.num_classes:
        metadata.update(generate_defaults={"labels": list(range(model.num_classes))},
                        num_classes=int(model.num_classes))
    return metadata


def size_rule(values: Mapping[str, Any], image_shape: Sequence[int]) -> Dict[str, Any]:
    """A DCGAN-style G and D one stride-2 stage deeper per doubling (G then starts at 8x8 for 64 pixels, as at 32)."""
    return conv_stack_sized("conv_filters", lambda v: v.get("architecture") == "dcgan")(values, image_shape)


# The family's description, registered on import (trainers/registry.py imports every family module).
DCGAN = dict(architecture="dcgan", coding_size=100)
# Gulrajani et al.'s settings: 5 critic steps, penalty 10, Adam(1e-4, beta_1 0.5).
WGAN_GP = dict(DCGAN, loss="wgan_gp", critic_steps=5, optimizer="adam", learning_rate=1e-4, beta_1=0.5)

register(Family(
    "gan", GANConfig, without_base(build_gan), fit, serving_signatures,
    signatures.output_of("generate_from_codings", "images"), key_metric=("fid", False),
    scorers=(scoring.score_generation,), figures=(figures.samples(64), figures.growth_rows(8)),
    pixel_range=PIXEL_RANGE, generate_signature="generate", export_metadata=export_metadata,
    latent_signature="generate_from_codings",
    input_example=standard_normal(lambda images, config: (int(config["coding_size"]),)), size_rule=size_rule,
    # The chapter's sensitive knobs: both learning rates, the optimizer and Adam's beta_1 (which RMSprop, the DCGAN
    # preset's, does not have: without the optimizer in the space beta_1 would change nothing), the batch, the
    # average and one remedy.
    search_space={"learning_rate": {"loguniform": [5e-5, 1e-3]},
                  "discriminator_learning_rate": {"loguniform": [5e-5, 1e-3]},
                  "optimizer": {"choice": ["rmsprop", "adam"]}, "beta_1": {"uniform": [0.0, 0.9]},
                  "batch_size": {"choice": [32, 64, 128]}, "ema_decay": {"choice": [0.99, 0.999, 0.9995]},
                  "minibatch_stddev": {"choice": [0, 4]}}),
    # Progressive growing: 7x7 -> 14x14 -> 28x28 on MNIST, full resolution after 120,000 images.
    {"gan": {}, "dcgan": DCGAN, "wgan_gp": WGAN_GP,
     "progressive_dcgan": dict(DCGAN, progressive=True, fade_images=30_000, stable_images=30_000)})


register(Family(
    "conditional_gan", GANConfig, without_base(with_classes(build_gan)), fit,
    serving_signatures, signatures.output_of("generate_from_codings", "images"), key_metric=("fid", False),
    scorers=(scoring.score_generation, scoring.score_conditional_generation), figures=(figures.class_rows(8),),
    pixel_range=PIXEL_RANGE, generate_signature="generate", export_metadata=export_metadata,
    latent_signature="generate_from_codings",
    input_example=standard_normal(lambda images, config: (int(config["coding_size"]),)), conditional=True,
    size_rule=size_rule,
    description="class-conditional DCGAN / WGAN-GP: label embedding into G, projection discriminator (labels at "
                "generate)"),
    {"dcgan_cond": DCGAN, "wgan_gp_cond": WGAN_GP})
