"""A StyleGAN-style generator (Karras et al. 2019, with StyleGAN2's weight demodulation, Karras et al. 2020) at the
sizes latentforge handles (28x28 grey, 32x32 colour), trained by trainers.gans' GAN game.

    mapping network   z (coding_size) -> pixel norm -> `mapping_layers` dense layers -> w (style_size), with
                      StyleGAN's equalised learning rate at 1/100 of the synthesis network's
    synthesis         a learned constant (7x7 for 28 pixels, 8x8 for 32 with the default 3 resolutions) -> per resolution: bilinear upsampling, two
                      3x3 convolutions whose weights each layer's style modulates and demodulates, each followed by
                      a per-layer noise image times learned per-channel scales, a bias and leaky ReLU -> a
                      modulated 1x1 convolution to the image's channels, linear as StyleGAN2's toRGB (cropped
                      to the image size; sampling clips to [-1, 1])
    styles            w through a learned affine map per layer; with `style_mixing` probability a training image
                      takes a second z's w from a random layer on (style-mixing regularisation)
    truncation        w_avg, a moving average of w over training; at sampling w = w_avg + psi (w - w_avg)
    discriminator     DCGAN's convolutional stack (`conv_filters`) with the minibatch-stddev feature
                      (`minibatch_stddev`, on by default) and the R1 penalty (`r1_penalty`); every remedy of
                      trainers.gans applies

Layers are numbered 0..L-1 from the coarsest (the constant's convolution) to the last (the 1x1 to pixels): L =
2 * len(synthesis_filters) (6 layers for the default 3-resolution stack). A style-mixed image takes its layers
0..crossover-1 from A and crossover..L-1 from B (crossover 0: pure B; L: pure A), and its noise images from the
seed whose style its last layer uses.

Unconditional only (num_classes 0). Sampling is deterministic given a seed: z from stateless_normal([n, K],
[seed, 0]), the noise images from [seed, 1] (one draw per layer for the whole batch).
"""
import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from evaluation import figures, scoring
from trainers import gans, signatures
from trainers.common import (deeper, extra_stages, make_optimizer, precision_policy, require, require_layer_sizes,
                             start_build, upsampling_plan, use_xla)
from trainers.family import Family, register, standard_normal, without_base

PIXEL_RANGE = gans.PIXEL_RANGE
TRUNCATION = tf.TensorSpec([], tf.float32, name="truncation")
CROSSOVER = tf.TensorSpec([], tf.int32, name="crossover")


@dataclasses.dataclass(frozen=True)
class StyleGANConfig(gans.GANConfig):
    """The GAN game of trainers.gans (loss, remedies, EMA, optimizers) around a style-based generator."""

    architecture: str = "dcgan"  # the discriminator's: DCGAN's convolutional stack
    coding_size: int = 64  # z
    style_size: int = 64  # w
    mapping_layers: int = 4
    # Per resolution, from the constant's on: 3 resolutions (7->14->28) rather than 4x4->32 cropped to 28. Measured
    # (batch 32, 2 cores): 98 ms a step against 150, and in 15 minutes FID 28 against 191 (docs/benchmarks.md).
    synthesis_filters: Tuple[int, ...] = (128, 64, 32)
    noise_inputs: bool = True  # per-layer noise images (False: the synthesis is a function of w only)
    style_mixing: float = 0.9  # probability that a training image mixes two styles (StyleGAN's 90 %)
    truncation: float = 1.0  # psi, generate's default (1: none)
    w_average_decay: float = 0.995  # w_avg's moving-average decay, per generator call in training
    minibatch_stddev: int = 4
    r1_penalty: float = 0.02  # StyleGAN2's regulariser, gamma at the small end of its range for 28-32 pixels
    r1_interval: int = 16  # lazy R1, as StyleGAN2: every 16th discriminator step, times 16
    conv_filters: Tuple[int, ...] = (64, 128)  # DCGAN's discriminator
    dropout: float = 0.0
    optimizer: str = "adam"
    learning_rate: float = 2e-4
    beta_1: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        require(self.architecture == "dcgan", f"architecture={self.architecture!r}: a StyleGAN's discriminator is "
                                              "the convolutional 'dcgan' stack")
        require(self.num_classes == 0, f"num_classes={self.num_classes}: stylegan is unconditional")
        require(self.style_size >= 1, f"style_size={self.style_size}: must be at least 1")
        require(self.mapping_layers >= 1, f"mapping_layers={self.mapping_layers}: must be at least 1")
        require_layer_sizes(self, "synthesis_filters", "filter")
        require(0 <= self.style_mixing <= 1, f"style_mixing={self.style_mixing}: a probability in [0, 1]")
        require(0 <= self.truncation <= 1, f"truncation={self.truncation}: psi must be in [0, 1] (1: none)")
        require(0 < self.w_average_decay < 1, f"w_average_decay={self.w_average_decay}: must be in (0, 1)")

    @property
    def style_layers(self) -> int:
        return 2 * len(self.synthesis_filters)


@keras.saving.register_keras_serializable("latentforge")
class PixelNorm(keras.layers.Layer):
    """z / sqrt(mean(z^2)): the mapping network's input on the unit sphere's scale."""

    def call(self, x):
        return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + 1e-8)


@keras.saving.register_keras_serializable("latentforge")
class TruncatedStyles(keras.layers.Layer):
    """[w (B, D), psi (B,)] -> w_avg + psi (w - w_avg). In training it first moves w_avg toward the batch's mean w
    (non-trainable; per replica, averaged across replicas when read, like BatchNormalization's statistics)."""

    def __init__(self, decay: float, **kwargs):
        super().__init__(**kwargs)
        self.decay = decay

    def build(self, input_shape):
        # float32 and never autocast (as BatchNormalization's moving statistics): under mixed_bfloat16 a read
        # inside call() would come back bfloat16 and the float32 update below would not type-check.
        self.w_average = self.add_weight(name="w_average", shape=(int(input_shape[0][-1]),), initializer="zeros",
                                         dtype="float32", trainable=False, experimental_autocast=False,
                                         synchronization=tf.VariableSynchronization.ON_READ,
                                         aggregation=tf.VariableAggregation.MEAN)
        super().build(input_shape)

    def call(self, inputs, training=None):
        w, psi = inputs
        if training:
            batch_mean = tf.reduce_mean(tf.cast(w, tf.float32), axis=0)
            self.w_average.assign(batch_mean + self.decay * (self.w_average - batch_mean))
        average = tf.cast(self.w_average, w.dtype)
        return average + tf.cast(psi, w.dtype)[:, None] * (w - average)

    def get_config(self):
        return {**super().get_config(), "decay": self.decay}


@keras.saving.register_keras_serializable("latentforge")
class MixStyles(keras.layers.Layer):
    """[w_a (B, D), w_b (B, D), crossover (B,)] -> the per-layer styles (B, L, D): layer i takes w_a where
    i < crossover, else w_b."""

    def __init__(self, layers: int, **kwargs):
        super().__init__(**kwargs)
        self.style_layers = layers

    def call(self, inputs):
        w_a, w_b, crossover = inputs
        from_a = tf.range(self.style_layers)[None, :] < tf.cast(crossover, tf.int32)[:, None]  # (B, L)
        return tf.where(from_a[:, :, None], w_a[:, None, :], w_b[:, None, :])

    def get_config(self):
        return {**super().get_config(), "layers": self.style_layers}


@keras.saving.register_keras_serializable("latentforge")
class ConstantInput(keras.layers.Layer):
    """The synthesis network's learned starting block (H, W, C), the same for every image of the batch."""

    def __init__(self, height: int, width: int, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width, self.channels = height, width, channels

    def build(self, input_shape):
        self.constant = self.add_weight(name="constant", shape=(self.height, self.width, self.channels),
                                        initializer=keras.initializers.RandomNormal(stddev=1.0))
        super().build(input_shape)

    def call(self, styles):
        return tf.tile(tf.cast(self.constant, self.compute_dtype)[None], [tf.shape(styles)[0], 1, 1, 1])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width, "channels": self.channels}


@keras.saving.register_keras_serializable("latentforge")
class ModulatedConv2D(keras.layers.Layer):
    """[x (B, H, W, C), styles (B, L, D)] -> conv(x, w modulated by layer `index`'s style), StyleGAN2's way.

    The style s = A w + b (bias initialised to 1) scales the kernel's input channels; demodulation rescales each
    output channel to unit expected variance: w'_ijk = s_j w_ijk / sqrt(sum_jk (s_j w_ijk)^2). Computed as
    conv(x * s, w) * d (d the demodulation factors): the same result without a kernel per image."""

    def __init__(self, filters: int, kernel_size: int, index: int, demodulate: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.index, self.demodulate = filters, kernel_size, index, demodulate

    def build(self, input_shape):
        channels, style_size = int(input_shape[0][-1]), int(input_shape[1][-1])
        fan_in = self.kernel_size * self.kernel_size * channels
        # He's scale; demodulation makes the output's scale independent of it, Adam's step size is not.
        self.kernel = self.add_weight(name="kernel", shape=(self.kernel_size, self.kernel_size, channels, self.filters),
                                      initializer=keras.initializers.RandomNormal(stddev=fan_in ** -0.5))
        self.affine = self.add_weight(name="affine", shape=(style_size, channels),
                                      initializer=keras.initializers.RandomNormal(stddev=1.0 / style_size ** 0.5))
        self.affine_bias = self.add_weight(name="affine_bias", shape=(channels,), initializer="ones")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        x, styles = inputs
        kernel = tf.cast(self.kernel, x.dtype)
        style = tf.matmul(styles[:, self.index], tf.cast(self.affine, x.dtype)) + tf.cast(self.affine_bias, x.dtype)
        y = tf.nn.conv2d(x * style[:, None, None, :], kernel, strides=1, padding="SAME")
        if self.demodulate:
            # sum over kernel positions and input channels of (s_j w_ijk)^2 = (s^2) @ sum_positions(w^2).
            energy = tf.matmul(tf.square(style), tf.reduce_sum(tf.square(kernel), axis=[0, 1]))  # (B, filters)
            y = y * tf.math.rsqrt(energy + 1e-8)[:, None, None, :]
        return y + tf.cast(self.bias, x.dtype)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "index": self.index, "demodulate": self.demodulate}


@keras.saving.register_keras_serializable("latentforge")
class NoiseInput(keras.layers.Layer):
    """[x (B, H, W, C), noise_seed (B, 2)] -> x + scale * noise, the noise one (B, H, W, 1) image per layer drawn
    by stateless_normal from the batch's seed (its first row) and this layer's index; `scale` (C,) is learned,
    starting at 0 (StyleGAN's initialisation: noise earns its influence during training)."""

    def __init__(self, index: int, **kwargs):
        super().__init__(**kwargs)
        self.index = index

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(int(input_shape[0][-1]),), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        x, noise_seed = inputs
        seed = tf.cast(noise_seed[0], tf.int32) + tf.constant([0, 7919], tf.int32) * (self.index + 1)
        shape = tf.concat([tf.shape(x)[:-1], [1]], axis=0)
        noise = tf.random.stateless_normal(shape, seed=seed, dtype=x.dtype)
        return x + noise * tf.cast(self.scale, x.dtype)

    def get_config(self):
        return {**super().get_config(), "index": self.index}


@keras.saving.register_keras_serializable("latentforge")
class MappingDense(keras.layers.Layer):
    """StyleGAN's mapping layer: equalised learning rate with a multiplier (weights stored as N(0, 1/lr_mul),
    used times lr_mul / sqrt(fan_in)), so Adam moves the mapping lr_mul times slower than the synthesis; leaky
    ReLU with gain sqrt(2) keeps w's scale through the layers."""

    def __init__(self, units: int, lr_multiplier: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.units, self.lr_multiplier = units, lr_multiplier

    def build(self, input_shape):
        self.fan_in = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(self.fan_in, self.units),
                                      initializer=keras.initializers.RandomNormal(stddev=1.0 / self.lr_multiplier))
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        super().build(input_shape)

    def call(self, x):
        scale = self.lr_multiplier / self.fan_in ** 0.5
        y = tf.matmul(x, tf.cast(self.kernel, x.dtype) * scale) + tf.cast(self.bias, x.dtype) * self.lr_multiplier
        return tf.nn.leaky_relu(y, 0.2) * 2 ** 0.5

    def get_config(self):
        return {**super().get_config(), "units": self.units, "lr_multiplier": self.lr_multiplier}


def _mapping(config: StyleGANConfig) -> keras.Model:
    return keras.Sequential(
        [keras.layers.Input((config.coding_size,)), PixelNorm()]
        + [MappingDense(config.style_size) for _ in range(config.mapping_layers)], name="mapping")


def build_generator(config: StyleGANConfig, input_shape: Sequence[int]) -> keras.Model:
    """[z_a (B, K), z_b (B, K), crossover (B,), truncation (B,), noise_seed (B, 2)] -> images (B, H, W, C) in
    [-1, 1] once trained (a linear output, as StyleGAN2's; StyleGAN.draw clips). A functional model (its EMA copy
    is a clone)."""
    height, width, channels = input_shape
    filters = config.synthesis_filters
    start_h, start_w, cropping = upsampling_plan(height, width, len(filters) - 1)
    z_a = keras.layers.Input((config.coding_size,), name="z_a")
    z_b = keras.layers.Input((config.coding_size,), name="z_b")
    crossover = keras.layers.Input((), dtype=tf.int32, name="crossover")
    truncation = keras.layers.Input((), name="truncation")
    noise_seed = keras.layers.Input((2,), dtype=tf.int32, name="noise_seed")
    mapping, truncate = _mapping(config), TruncatedStyles(config.w_average_decay, name="truncated_styles")
    styles = MixStyles(config.style_layers, name="mix_styles")(
        [truncate([mapping(z_a), truncation]), truncate([mapping(z_b), truncation]), crossover])

    x = ConstantInput(start_h, start_w, filters[0], name="constant")(styles)
    index = 0

    def styled(x, width):
        nonlocal index
        x = ModulatedConv2D(width, 3, index, name=f"modulated_conv_{index}")([x, styles])
        if config.noise_inputs:
            x = NoiseInput(index, name=f"noise_{index}")([x, noise_seed])
        index += 1
        return keras.layers.LeakyReLU(0.2)(x)

    x = styled(x, filters[0])
    for width in filters[1:]:
        x = keras.layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = styled(styled(x, width), width)
    x = ModulatedConv2D(channels, 1, index, demodulate=False, name="to_pixels")([x, styles])
    images = keras.layers.Cropping2D(cropping)(keras.layers.Activation("linear", dtype="float32")(x))
    return keras.Model([z_a, z_b, crossover, truncation, noise_seed], images, name="generator")


class StyleGAN(gans.GAN):
    """trainers.gans.GAN's game (discriminator step, losses, remedies, EMA) with a style-based generator: fakes
    for training mix styles with probability `style_mixing`; generate takes a truncation psi; mix_styles."""

    def __init__(self, generator, discriminator, style_layers: int, style_mixing: float, truncation: float,
                 **kwargs):
        super().__init__(generator, discriminator, **kwargs)
        self.style_layers, self.style_mixing, self.truncation = style_layers, style_mixing, truncation

    def call(self, inputs, training=False):
        """[z_a, z_b, crossover, truncation, noise_seed] -> images (the generator's inputs)."""
        return self.generator(inputs, training=training)

    def _fake(self, batch_size, labels=None):
        del labels  # unconditional
        z_a = tf.random.normal([batch_size, self.coding_size])
        z_b = tf.random.normal([batch_size, self.coding_size])
        mixed = tf.random.uniform([batch_size]) < self.style_mixing
        cut = tf.random.uniform([batch_size], 1, self.style_layers, dtype=tf.int32)
        crossover = tf.where(mixed, cut, self.style_layers)
        noise_seed = tf.tile(tf.random.uniform([1, 2], 0, 2 ** 31 - 1, dtype=tf.int32), [batch_size, 1])
        images = self.generator([z_a, z_b, crossover, tf.ones([batch_size]), noise_seed], training=True)
        return tf.cast(images, tf.float32)

    def draw(self, z_a, z_b, crossover, truncation, noise_seed, generator=None):
        """Images from the sampling generator (the EMA's): z (n, K) each, crossover and psi scalars, noise_seed (2,)."""
        n = tf.shape(z_a)[0]
        inputs = [z_a, z_b, tf.fill([n], tf.cast(crossover, tf.int32)),
                  tf.fill([n], tf.cast(truncation, tf.float32)), tf.tile(tf.reshape(noise_seed, [1, 2]), [n, 1])]
        images = tf.cast((generator or self.sampling_generator)(inputs, training=False), tf.float32)
        return tf.clip_by_value(images, -1.0, 1.0)

    def generate(self, n: int, seed: int = 0, labels=None, truncation: Optional[float] = None) -> tf.Tensor:
        """n images in [-1, 1]; the same seed, the same images. truncation psi: the model's default if None."""
        signatures.class_labels(n, labels, 0, "stylegan")  # an error for labels
        z = tf.random.stateless_normal([n, self.coding_size], seed=[seed, 0])
        psi = self.truncation if truncation is None else truncation
        return self.draw(z, z, self.style_layers, psi, tf.constant([seed, 1]))

    def mix_styles(self, seed_a: int, seed_b: int, crossover: int, truncation: Optional[float] = None) -> tf.Tensor:
        """One image (1, H, W, C): layers 0..crossover-1 styled by seed_a's w, the rest by seed_b's; noise from the
        seed that styles the last layer. crossover 0 is generate(1, seed_b), crossover L generate(1, seed_a)."""
        if not 0 <= crossover <= self.style_layers:
            raise ValueError(f"crossover={crossover}: must be in [0, {self.style_layers}] (the style layers)")
        z_a = tf.random.stateless_normal([1, self.coding_size], seed=[seed_a, 0])
        z_b = tf.random.stateless_normal([1, self.coding_size], seed=[seed_b, 0])
        psi = self.truncation if truncation is None else truncation
        noise_seed = [seed_a if crossover == self.style_layers else seed_b, 1]
        return self.draw(z_a, z_b, crossover, psi, tf.constant(noise_seed))


def build_stylegan(config: StyleGANConfig, input_shape: Sequence[int]) -> StyleGAN:
    input_shape = start_build(config, input_shape)
    with precision_policy(config):
        generator = build_generator(config, input_shape)
        discriminator = gans.dcgan_discriminator(config, input_shape)
        model = StyleGAN(generator, discriminator, style_layers=config.style_layers,
                         style_mixing=config.style_mixing, truncation=config.truncation, loss=config.loss,
                         label_smoothing=config.label_smoothing, critic_steps=config.critic_steps,
                         gradient_penalty=config.gradient_penalty, ema_decay=config.ema_decay,
                         feature_matching=config.feature_matching, r1_penalty=config.r1_penalty,
                         r1_interval=config.r1_interval,
                         replay=gans.replay_buffer(config, input_shape),
                         name="stylegan")
        z = tf.zeros((1, config.coding_size))
        model([z, z, tf.constant([config.style_layers]), tf.ones((1,)), tf.zeros((1, 2), tf.int32)])
        discriminator.build((None, *input_shape))
    model.compile(d_optimizer=make_optimizer(config, config.discriminator_learning_rate),
                  g_optimizer=make_optimizer(config), steps_per_execution=config.steps_per_execution,
                  jit_compile=use_xla(config))
    return model


def fit(model: StyleGAN, config: StyleGANConfig, train_data, eval_data=None, callbacks=None, initial_epoch: int = 0):
    return gans.fit(model, config, train_data, eval_data, callbacks, initial_epoch)


def serving_signatures(model: StyleGAN, image_shape, pixel_range) -> Dict[str, Callable]:
    """generate(n, seed, truncation), mix_styles(seed_a, seed_b, crossover) (one image; the model's default psi)
    and generate_from_codings(z) (no mixing, default psi, noise seed 0); images in [0, 1]."""
    del image_shape, pixel_range
    to_unit = lambda x: (x + 1.0) / 2.0

    def checked_truncation(psi):
        check = tf.debugging.Assert(tf.math.is_finite(psi) & (psi >= 0.0) & (psi <= 1.0),
                                    ["truncation: psi must be in [0, 1] (1: none, 0: the average image); got", psi])
        with tf.control_dependencies([check]):
            return tf.identity(psi)

    @tf.function(input_signature=[signatures.N, signatures.SEED, TRUNCATION])
    def generate(n, seed, truncation):
        n = signatures.checked_count(n, "n", signatures.MAX_GENERATED)
        z = tf.random.stateless_normal(tf.stack([n, model.coding_size]), seed=tf.stack([seed, 0]))
        return {"images": to_unit(model.draw(z, z, model.style_layers, checked_truncation(truncation),
                                             tf.stack([seed, 1])))}

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="seed_a"),
                                  tf.TensorSpec([], tf.int32, name="seed_b"), CROSSOVER])
    def mix_styles(seed_a, seed_b, crossover):
        check = tf.debugging.Assert((crossover >= 0) & (crossover <= model.style_layers),
                                    [f"crossover: must be in [0, {model.style_layers}] (the style layers); got",
                                     crossover])
        with tf.control_dependencies([check]):
            crossover = tf.identity(crossover)
        z_a = tf.random.stateless_normal([1, model.coding_size], seed=tf.stack([seed_a, 0]))
        z_b = tf.random.stateless_normal([1, model.coding_size], seed=tf.stack([seed_b, 0]))
        noise_seed = tf.stack([tf.where(crossover == model.style_layers, seed_a, seed_b), 1])
        return {"images": to_unit(model.draw(z_a, z_b, crossover, model.truncation, noise_seed))}

    @tf.function(input_signature=[signatures.codings_spec(model.coding_size)])
    def generate_from_codings(z):
        z = signatures.checked_codings(z)
        return {"images": to_unit(model.draw(z, z, model.style_layers, model.truncation, tf.constant([0, 1])))}

    return {"serving_default": generate, "generate": generate, "mix_styles": mix_styles,
            "generate_from_codings": generate_from_codings}


def export_metadata(model: StyleGAN) -> Dict[str, object]:
    """generate's default truncation and the number of style layers (mix_styles' crossover range)."""
    return {"generate_defaults": {"truncation": float(model.truncation)}, "style_layers": int(model.style_layers)}


def size_rule(values: Mapping[str, Any], image_shape: Sequence[int]) -> Dict[str, Any]:
    """One more synthesis resolution per doubling (half the filters of the one before, at least 8) and one more
    discriminator stage: the learned constant stays 8x8 at 64 pixels, as at 32."""
    stages = extra_stages(image_shape)
    if not stages:
        return {}
    synthesis = tuple(int(f) for f in values["synthesis_filters"])
    for _ in range(stages):
        synthesis += (max(8, synthesis[-1] // 2),)
    return {"synthesis_filters": synthesis, "conv_filters": deeper(values["conv_filters"], stages)}


# The family's description, registered on import (trainers/registry.py imports every family module).
register(Family(
    "stylegan", StyleGANConfig, without_base(build_stylegan), fit,
    serving_signatures, signatures.output_of("generate_from_codings", "images"), key_metric=("fid", False),
    scorers=(scoring.score_generation,),
    figures=(figures.samples(64), figures.style_mixing(), figures.truncation_strip()),
    pixel_range=PIXEL_RANGE, generate_signature="generate", export_metadata=export_metadata,
    latent_signature="generate_from_codings",
    input_example=standard_normal(lambda images, config: (int(config["coding_size"]),)), size_rule=size_rule,
    description="StyleGAN-style generator: mapping network, modulated convolutions, noise inputs, style mixing, "
                "truncation (generate takes truncation; mix_styles)"),
    {"stylegan": {}})
