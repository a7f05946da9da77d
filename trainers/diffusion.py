"""Denoising diffusion (DDPM) with a small U-Net noise predictor, ancestral and DDIM samplers.

The schedule is plain data from a named function (improved-diffusion's layout); `GaussianDiffusion` holds the
maths in float64, stored as float32, and takes the network as an argument; `DiffusionModel` is the keras.Model
that trains the network and samples with it (from the exponential moving average of its weights by default).

Objectives: the network predicts the noise eps (DDPM) or v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 (progressive
distillation's v-prediction, better behaved at high noise); the squared error is averaged uniformly over time
steps or weighted by min-SNR-gamma (Hang et al. 2023), which converges faster for small models.

Sampling: DDIM (Song et al. 2021) over a chosen number of steps, deterministic (eta 0) or with DDPM's noise
(eta 1, the default: on a small model it corrects the network's errors that a deterministic path keeps); with all
T steps and eta=1 its update is exactly DDPM's ancestral step (posterior mean, variance beta~_t), which is how
`ancestral_sample` runs. DPM-Solver++(2M) (Lu et al. 2022) solves the same deterministic path to second order.
Images are in [-1, 1].
"""
import dataclasses
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from evaluation import figures, scoring
from trainers import signatures
from trainers.common import (TrainingConfig, apply_gradients, average_loss, extra_stages, fit_epochs,
                             make_optimizer, per_example_mean, precision_policy, require, require_choice,
                             require_ema_decay, run_network, scaled_loss, start_build, upsampling_plan, use_xla)
from trainers.ema import ExponentialMovingAverage
from trainers.family import Family, register, standard_normal, with_classes, without_base

PIXEL_RANGE = "symmetric"
SCHEDULES = ("cosine", "linear")
LOSSES = ("mse", "huber")
ARCHITECTURES = ("unet", "compact")
PREDICTIONS = ("epsilon", "v")  # what the network outputs: the noise, or v = sqrt(a) eps - sqrt(1 - a) x_0
WEIGHTINGS = ("uniform", "min_snr")
SAMPLERS = ("ddim", "dpm_solver")  # DDIM (eta: its noise) or DPM-Solver++(2M), deterministic, second order
SPACINGS = ("uniform", "quadratic")  # the sampler's time steps: evenly spaced in t or in sqrt(t)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(TrainingConfig):
    """Defaults (what the generative benchmark showed best at equal wall-clock on this CPU, docs/benchmarks.md): the notebook's
    cosine schedule (s = 0.008, max beta 0.999) with T = 1000 (the notebook: 4000), the notebook's compact U-Net
    (separable convolutions + BatchNorm, widths 16 -> 32/64/128), v-prediction with min-SNR-5 weighting, mixed
    bfloat16 where the hardware computes it natively, EMA 0.999, sampling by DDIM at eta 1 in 40 steps, Adam 1e-3,
    batch 32.
    architecture="unet" (the `ddpm_unet` preset) is the GroupNorm U-Net with attention, 5x slower per image."""

    architecture: str = "compact"  # unet: residual blocks, GroupNorm, attention at the lowest resolution
    schedule: str = "cosine"
    timesteps: int = 1000
    cosine_offset: float = 0.008
    max_beta: float = 0.999
    base_channels: int = 16
    channel_multipliers: Tuple[int, ...] = (2, 4, 8)  # one U-Net level each; all but the last halve H and W
    res_blocks: int = 1  # residual blocks per level (unet)
    attention: bool = True  # self-attention at the lowest resolution (unet)
    time_embedding_dim: int = 64
    dropout: float = 0.0
    loss: str = "mse"
    prediction: str = "v"  # at 8 min on MNIST, v + min-SNR: FID 26.5 against epsilon + uniform's 39.6 (docs/benchmarks.md)
    loss_weighting: str = "min_snr"  # Hang et al. 2023's min(SNR(t), gamma) weighting; uniform: plain MSE
    min_snr_gamma: float = 5.0
    sample_steps: int = 40  # steps of `generate`: the fewest within 10 % of full ancestral sampling's FID (docs/benchmarks.md)
    # DDIM's noise: 0 deterministic (the probability-flow ODE), 1 DDPM-like. At 15 min on MNIST, eta 1 at 40 steps:
    # FID 14.1 against ancestral's 13.5 at 1/24 of its time; eta 0 plateaus at 17.0 even at 50 steps (docs/benchmarks.md).
    eta: float = 1.0
    sampler: str = "ddim"  # or "dpm_solver": DPM-Solver++(2M), second order in the same network evaluations
    sample_spacing: str = "uniform"  # the sampler's time steps: evenly spaced in t, or "quadratic" (in sqrt(t))
    optimizer: str = "adam"  # the notebook's Nadam traces twice as slowly for a U-Net's many variables
    ema_decay: float = 0.999  # sample, score and export an average of the weights (0: the raw weights)
    # Class conditioning (the `ddpm_cond` preset; 0: unconditional): the label enters beside the time step, as
    # an embedding of num_classes + 1 ids, the last the "null" label that classifier-free guidance samples with.
    num_classes: int = 0
    p_uncond: float = 0.1  # the share of training labels replaced by the null label (and unlabeled images: all)
    guidance: float = 2.0  # w of eps_null + w (eps_label - eps_null): 0 unconditional, 1 conditional, >1 guided
    precision: str = "auto"  # mixed_bfloat16 where native: 1.4x the images/s, FID not worse (docs/benchmarks.md)
    epochs: int = 20

    def __post_init__(self):
        super().__post_init__()
        require_choice(self, "architecture", ARCHITECTURES)
        require_choice(self, "schedule", SCHEDULES)
        require_choice(self, "loss", LOSSES)
        require_choice(self, "prediction", PREDICTIONS)
        require_choice(self, "loss_weighting", WEIGHTINGS)
        require(self.min_snr_gamma > 0, f"min_snr_gamma={self.min_snr_gamma}: must be positive")
        require(self.timesteps >= 2, f"timesteps={self.timesteps}: must be at least 2")
        require(0 < self.cosine_offset < 1, f"cosine_offset={self.cosine_offset}: must be in (0, 1)")
        require(0 < self.max_beta < 1, f"max_beta={self.max_beta}: must be in (0, 1)")
        require(self.architecture != "unet" or (self.base_channels >= 8 and self.base_channels % 8 == 0),
                f"base_channels={self.base_channels}: must be a multiple of 8 (GroupNorm uses 8 groups)")
        require(self.base_channels >= 1, f"base_channels={self.base_channels}: must be at least 1")
        require(self.channel_multipliers and all(int(m) >= 1 for m in self.channel_multipliers),
                f"channel_multipliers={self.channel_multipliers}: need at least one level, each >= 1")
        require(self.res_blocks >= 1, f"res_blocks={self.res_blocks}: must be at least 1")
        require(self.time_embedding_dim >= 2 and self.time_embedding_dim % 2 == 0,
                f"time_embedding_dim={self.time_embedding_dim}: must be an even number >= 2")
        require(0 <= self.dropout < 1, f"dropout={self.dropout}: must be in [0, 1)")
        require(1 <= self.sample_steps <= self.timesteps,
                f"sample_steps={self.sample_steps}: must be between 1 and timesteps ({self.timesteps})")
        require(0 <= self.eta <= 1, f"eta={self.eta}: must be in [0, 1]")
        require_choice(self, "sampler", SAMPLERS)
        require_choice(self, "sample_spacing", SPACINGS)
        require(self.sampler == "ddim" or self.eta == 0,
                f"eta={self.eta}: sampler=dpm_solver is deterministic; set eta=0 with it (eta is DDIM's noise)")
        require_ema_decay(self)
        require(self.num_classes >= 0 and self.num_classes != 1,
                f"num_classes={self.num_classes}: must be 0 (unconditional) or at least 2")
        require(0 < self.p_uncond < 1, f"p_uncond={self.p_uncond}: must be in (0, 1) (guidance needs the null label)")
        require(self.guidance >= 0, f"guidance={self.guidance}: must be >= 0 (0: unconditional, 1: conditional)")

    def check_input(self, input_shape: Sequence[int]) -> None:
        require(len(input_shape) == 3, f"DDPM needs images (H, W, C); got {tuple(input_shape)}")
        if self.architecture == "compact":
            return  # pads the images to a size it can halve, and crops back
        factor = 2 ** (len(self.channel_multipliers) - 1)
        require(input_shape[0] % factor == 0 and input_shape[1] % factor == 0,
                f"images {input_shape[0]}x{input_shape[1]} cannot be halved {len(self.channel_multipliers) - 1} "
                f"times: use fewer channel_multipliers or sizes divisible by {factor}")


def noise_schedule(name: str, timesteps: int, cosine_offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """betas (T,) float64. cosine: Improved DDPM's alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), betas
    clipped at max_beta; linear: DDPM's 1e-4 .. 0.02, rescaled so that any T gives the same total noise."""
    if name == "cosine":
        alpha_bar = lambda t: math.cos((t / timesteps + cosine_offset) / (1 + cosine_offset) * math.pi / 2) ** 2
        return np.array([min(1 - alpha_bar(i + 1) / alpha_bar(i), max_beta) for i in range(timesteps)])
    if name == "linear":
        scale = 1000 / timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
    raise ValueError(f"schedule={name!r}: must be one of {SCHEDULES}")


class GaussianDiffusion:
    """The forward process q and the reverse steps, for a noise schedule betas (T,) and a network that predicts
    `prediction` ("epsilon": the noise; "v": v = sqrt(a_t) eps - sqrt(1 - a_t) x_0, Salimans & Ho 2022)."""

    def __init__(self, betas: np.ndarray, prediction: str = "epsilon"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r}: must be one of {PREDICTIONS}")
        self.prediction = prediction
        betas = np.asarray(betas, np.float64)
        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        self.timesteps = len(betas)
        as32 = lambda a: tf.constant(a, tf.float32)
        self.betas, self.alphas_cumprod = as32(betas), as32(alphas_cumprod)
        self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod = (as32(np.sqrt(alphas_cumprod)),
                                                                       as32(np.sqrt(1.0 - alphas_cumprod)))
        # q(x_{t-1} | x_t, x_0) = N(coef_x0 * x_0 + coef_xt * x_t, beta~_t)
        self.posterior_variance = as32(betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.posterior_coef_x0 = as32(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.posterior_coef_xt = as32((1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod))
        self.snr = as32(alphas_cumprod / (1.0 - alphas_cumprod))

    @staticmethod
    def _at(values: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        """values[t] shaped (B, 1, 1, 1) to broadcast over images."""
        return tf.reshape(tf.gather(values, t), [-1, 1, 1, 1])

    def q_mean_variance(self, x0: tf.Tensor, t: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Mean (B, H, W, C) and variance (B, 1, 1, 1) of q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I)."""
        return self._at(self.sqrt_alphas_cumprod, t) * x0, 1.0 - self._at(self.alphas_cumprod, t)

    def q_sample(self, x0: tf.Tensor, t: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
        """x_t for x_0 (B, H, W, C), t (B,) int, noise ~ N(0, I): one draw from q(x_t | x_0)."""
        return self._at(self.sqrt_alphas_cumprod, t) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t) * noise

    def target(self, x0: tf.Tensor, t: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
        """What the network is trained to output for x_t = q_sample(x0, t, noise)."""
        if self.prediction == "v":
            return self._at(self.sqrt_alphas_cumprod, t) * noise - self._at(self.sqrt_one_minus_alphas_cumprod, t) * x0
        return noise

    def loss_weight(self, t: tf.Tensor, weighting: str, gamma: float) -> tf.Tensor:
        """Per-example weights (B,) of the regression loss: 1, or min-SNR-gamma (Hang et al. 2023), which for
        a network predicting eps is min(SNR, gamma) / SNR and for one predicting v is min(SNR, gamma) / (SNR + 1):
        the easy low-noise steps stop dominating the gradient."""
        if weighting == "uniform":
            return tf.ones_like(t, tf.float32)
        snr = tf.gather(self.snr, t)
        return tf.minimum(snr, gamma) / (snr + 1.0 if self.prediction == "v" else snr)

    def predicted_x0(self, output: tf.Tensor, xt: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        """x_0 implied by the network's output at x_t (t (B,))."""
        signal, noise = self._at(self.sqrt_alphas_cumprod, t), self._at(self.sqrt_one_minus_alphas_cumprod, t)
        if self.prediction == "v":
            return signal * xt - noise * output
        return (xt - noise * output) / signal

    def q_posterior_mean_variance(self, x0, xt, t) -> Tuple[tf.Tensor, tf.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0), the target of DDPM's ancestral step."""
        mean = self._at(self.posterior_coef_x0, t) * x0 + self._at(self.posterior_coef_xt, t) * xt
        return mean, self._at(self.posterior_variance, t)

    def ddim_step(self, network, x, t, t_prev, eta, noise):
        """One reverse step from time t to t_prev (-1: the end) for x (B, H, W, C); t, t_prev int scalars."""
        batch = tf.shape(x)[0]
        alpha_bar = tf.gather(self.alphas_cumprod, t)
        alpha_bar_prev = tf.where(t_prev >= 0, tf.gather(self.alphas_cumprod, tf.maximum(t_prev, 0)), 1.0)
        times = tf.fill([batch], t)
        output = tf.cast(run_network(network, [x, times], training=False), tf.float32)
        x0 = tf.clip_by_value(self.predicted_x0(output, x, times), -1.0, 1.0)
        eps = (x - tf.sqrt(alpha_bar) * x0) / tf.sqrt(1.0 - alpha_bar)  # consistent with the clipped x0
        sigma = eta * tf.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))
        direction = tf.sqrt(tf.maximum(1.0 - alpha_bar_prev - tf.square(sigma), 0.0)) * eps
        return tf.sqrt(alpha_bar_prev) * x0 + direction + sigma * noise

    def dpm_solver_step(self, network, x, t, t_prev, x0_last, h_last):
        """One DPM-Solver++(2M) step (Lu et al. 2022, multistep, data prediction) from time t to t_prev (-1: the
        end) for x (B, H, W, C): the exponential integrator in lambda = log(alpha / sigma), second order from the
        previous step's x0 prediction `x0_last` and log-SNR step `h_last` (h_last = 0: the first step, first
        order). Returns (x at t_prev, this step's x0, this step's h). The last step (to sigma = 0) is first order,
        which is the clipped x0 prediction itself."""
        batch = tf.shape(x)[0]
        alpha_bar = tf.gather(self.alphas_cumprod, t)
        # A stand-in for the end's alpha_bar = 1 (lambda = inf) so the untaken branch below stays finite.
        alpha_bar_prev = tf.gather(self.alphas_cumprod, tf.maximum(t_prev, 0))
        output = tf.cast(run_network(network, [x, tf.fill([batch], t)], training=False), tf.float32)
        x0 = tf.clip_by_value(self.predicted_x0(output, x, tf.fill([batch], t)), -1.0, 1.0)
        log_snr = lambda a: 0.5 * (tf.math.log(a) - tf.math.log(1.0 - a))  # lambda_t = log(alpha_t / sigma_t)
        h = log_snr(alpha_bar_prev) - log_snr(alpha_bar)
        ratio = h_last / tf.maximum(h, 1e-12)  # r = h_{i-1} / h_i
        second_order = tf.where(h_last > 0.0, 1.0 / (2.0 * tf.maximum(ratio, 1e-12)), 0.0)
        x0_combined = (1.0 + second_order) * x0 - second_order * x0_last
        step = (tf.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar)) * x
                - tf.sqrt(alpha_bar_prev) * tf.math.expm1(-h) * x0_combined)
        return tf.where(t_prev >= 0, step, x0), x0, h

    def sample(self, network, shape, seed, steps, eta, sampler="ddim", spacing="uniform"):
        """Images of `shape` (n, H, W, C) in [-1, 1] after `steps` reverse steps spread evenly over [T-1, 0].

        Every random draw is stateless from (seed, step), so one seed gives one result in eager and graph mode.
        """
        return self.denoise(network, tf.random.stateless_normal(shape, seed=[seed, 0]), seed, steps, eta, sampler,
                            spacing)

    def sample_times(self, steps, spacing="uniform") -> tf.Tensor:
        """The `steps` time steps (steps,) int32 a sampler visits, from T-1 down to 0: evenly spaced in t, or in
        sqrt(t) ("quadratic", DDIM's CIFAR-10 choice), which spends the steps where the noise is low and the
        details form, and keeps the first step away from the cosine schedule's last, near-pure-noise interval
        (alpha_bar 1e-9 at t = T-1), which multistep solvers extrapolate badly from. At many steps quadratic
        spacing repeats t = 0 or 1; a repeated step leaves x as it is."""
        if spacing not in SPACINGS:
            raise ValueError(f"spacing={spacing!r}: must be one of {SPACINGS}")
        if spacing == "quadratic":
            return tf.cast(tf.round(tf.square(tf.linspace(math.sqrt(self.timesteps - 1), 0.0, steps))), tf.int32)
        return tf.cast(tf.round(tf.linspace(float(self.timesteps - 1), 0.0, steps)), tf.int32)

    def denoise(self, network, x, seed, steps, eta, sampler="ddim", spacing="uniform"):
        """`sample` from the given x_T (B, H, W, C) instead of drawn noise: with eta=0 (or DPM-Solver) a
        deterministic map. `sampler` and `spacing` are Python strings (each pair traces its own graph): "ddim"
        or "dpm_solver"; see `sample_times`."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}: must be one of {SAMPLERS}")
        shape = tf.shape(x)
        times = self.sample_times(steps, spacing)
        prev_times = tf.concat([times[1:], [-1]], axis=0)
        if sampler == "dpm_solver":
            x0_last, h_last = tf.zeros_like(x), tf.constant(0.0)
            for i in tf.range(steps):
                x, x0_last, h_last = self.dpm_solver_step(network, x, times[i], prev_times[i], x0_last, h_last)
            return tf.clip_by_value(x, -1.0, 1.0)
        for i in tf.range(steps):
            noise = tf.random.stateless_normal(shape, seed=[seed, i + 1])
            x = self.ddim_step(network, x, times[i], prev_times[i], eta, noise)
        return tf.clip_by_value(x, -1.0, 1.0)


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


def _with_labels(config: DiffusionConfig, inputs: list, embedding):
    """For a class-conditional network (config.num_classes > 0): a third input, labels (B,) int32 in
    [0, num_classes] (num_classes: the null label), whose learned embedding is added to the time embedding, so
    the class reaches every place the time step does. Returns (inputs, embedding)."""
    if not config.num_classes:
        return inputs, embedding
    labels = keras.layers.Input((), dtype=tf.int32, name="labels")
    label_embedding = keras.layers.Embedding(config.num_classes + 1, embedding.shape[-1])(labels)
    return [*inputs, labels], keras.layers.Add()([embedding, label_embedding])


def build_unet(config: DiffusionConfig, input_shape: Sequence[int]) -> keras.Model:
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


def build_compact_unet(config: DiffusionConfig, input_shape: Sequence[int]) -> keras.Model:
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


class DiffusionModel(keras.Model):
    """Trains `network` to predict the noise added by `diffusion`'s forward process; samples with it (with the
    exponential moving average of its weights when `ema_decay` > 0)."""

    def __init__(self, network: keras.Model, diffusion: GaussianDiffusion, loss: str = "mse",
                 sample_steps: int = 50, eta: float = 0.0, ema_decay: float = 0.0, loss_weighting: str = "uniform",
                 min_snr_gamma: float = 5.0, sampler: str = "ddim", sample_spacing: str = "uniform",
                 num_classes: int = 0, p_uncond: float = 0.1, guidance: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.network, self.diffusion = network, diffusion
        self.loss_weighting, self.min_snr_gamma = loss_weighting, min_snr_gamma
        self.ema = ExponentialMovingAverage(network, ema_decay) if ema_decay else None
        self.loss_kind, self.sample_steps, self.eta = loss, sample_steps, eta
        self.sampler, self.sample_spacing = sampler, sample_spacing
        self.image_shape = tuple(network.inputs[0].shape[1:])
        self.tracker = keras.metrics.Mean(name="loss")
        self.num_classes, self.p_uncond, self.guidance = num_classes, p_uncond, guidance
        self._sample = tf.function(self._sample_images)

    @property
    def metrics(self):
        return [self.tracker]

    def weight_averages(self):
        """(average, network) pairs: the denoiser's EMA (none without ema_decay)."""
        return [(self.ema, self.network)] if self.ema is not None else []

    @property
    def sampling_network(self) -> keras.Model:
        """The network that samples (generate, the SavedModel, the pictures): the EMA's when there is one."""
        return self.ema.network if self.ema is not None else self.network

    def call(self, inputs, training=False):
        """[x_t, t(, labels)] -> the network's prediction."""
        return self.network(inputs, training=training)

    @property
    def null_label(self) -> int:
        """The label id of "no class" (classifier-free guidance's unconditional path): num_classes."""
        return self.num_classes

    def _unpack(self, data):
        """A batch: images (unconditional) or (images, labels) with labels (B,), -1 for an unlabeled image."""
        if not self.num_classes:
            return data, None
        images, labels = data
        return images, tf.cast(labels, tf.int32)

    def training_labels(self, labels: tf.Tensor) -> tf.Tensor:
        """Classifier-free guidance's training labels: unlabeled images (-1) and a random p_uncond share of the
        labelled ones get the null label, so one network learns the conditional and unconditional predictions."""
        dropped = tf.random.uniform(tf.shape(labels)) < self.p_uncond
        return tf.where(dropped | (labels < 0), self.null_label, labels)

    def per_example_loss(self, images: tf.Tensor, training: bool, labels: Optional[tf.Tensor] = None) -> tf.Tensor:
        """The network's (weighted) regression error (B,) at a uniformly drawn time step per image (given its
        label, for a conditional model: `training_labels` of them when training, as they are otherwise)."""
        batch = tf.shape(images)[0]
        t = tf.random.uniform([batch], 0, self.diffusion.timesteps, dtype=tf.int32)
        noise = tf.random.normal(tf.shape(images))
        inputs = [self.diffusion.q_sample(images, t, noise), t]
        if self.num_classes:
            labels = self.training_labels(labels) if training else tf.where(labels < 0, self.null_label, labels)
            inputs.append(labels)
        predicted = run_network(self.network, inputs, training=training)
        error = tf.cast(predicted, tf.float32) - self.diffusion.target(images, t, noise)
        if self.loss_kind == "huber":
            error = tf.abs(error)
            per_example = per_example_mean(tf.where(error < 1.0, 0.5 * tf.square(error), error - 0.5))
        else:
            per_example = per_example_mean(tf.square(error))
        return self.diffusion.loss_weight(t, self.loss_weighting, self.min_snr_gamma) * per_example

    def train_step(self, data):
        # 1. Noise each image to a random time step; 2. regress the noise; 3. one optimiser step.
        images, labels = self._unpack(data)
        with tf.GradientTape() as tape:
            per_example = self.per_example_loss(images, training=True, labels=labels)
            loss = scaled_loss(self.optimizer, average_loss(per_example, self.network))
        apply_gradients(self.optimizer, tape, loss, self.network.trainable_variables)
        for average, network in self.weight_averages():
            average.update(network, self.optimizer.iterations)
        self.tracker.update_state(per_example)
        return {"loss": self.tracker.result()}

    def test_step(self, data):
        images, labels = self._unpack(data)
        self.tracker.update_state(self.per_example_loss(images, training=False, labels=labels))
        return {"loss": self.tracker.result()}

    def guided_network(self, network, labels: Optional[tf.Tensor], guidance: tf.Tensor) -> Callable:
        """What the samplers call, [x_t, t] -> prediction: the network itself, or for a conditional model
        classifier-free guidance, pred_null + guidance * (pred_label - pred_null), both halves from one call on
        a doubled batch. `labels` (B,) int32 (the null label: unconditional whatever the guidance)."""
        if not self.num_classes:
            return network

        def guided(inputs, training):
            x, t = inputs
            null = tf.fill(tf.shape(labels), self.null_label)
            both = run_network(network, [tf.concat([x, x], 0), tf.concat([t, t], 0), tf.concat([labels, null], 0)],
                               training=training)
            conditional, unconditional = tf.split(tf.cast(both, tf.float32), 2)
            return unconditional + guidance * (conditional - unconditional)
        return guided

    def _sample_images(self, network, shape, seed, steps, eta, labels, guidance, sampler, spacing):
        return self.diffusion.sample(self.guided_network(network, labels, guidance), shape, seed, steps, eta,
                                     sampler, spacing)

    def sample_labels(self, n, labels=None) -> Optional[tf.Tensor]:
        """The (n,) int32 labels of n generated images: `labels` (m,) repeated cyclically (one label: n images of
        that class), by default every class in turn; None for an unconditional model. Labels must be in
        [0, num_classes] (num_classes: unconditional)."""
        if not self.num_classes:
            if labels is not None:
                raise ValueError("labels: this DDPM is unconditional (train the ddpm_cond preset on labelled data)")
            return None
        labels = tf.range(self.num_classes) if labels is None else tf.convert_to_tensor(labels, tf.int32)
        return signatures.cycled_labels(labels, n)

    def generate(self, n: int, seed: int = 0, steps: Optional[int] = None, eta: Optional[float] = None,
                 sampler: Optional[str] = None, spacing: Optional[str] = None, labels=None,
                 guidance: Optional[float] = None) -> tf.Tensor:
        """n images (n, H, W, C) in [-1, 1] by the config's sampler and spacing (or `sampler`, `spacing`) with
        `steps` steps (default: the config's sample_steps); for a conditional model, of `labels` (see
        `sample_labels`) at the config's guidance (or `guidance`)."""
        steps = self.sample_steps if steps is None else steps
        if not 1 <= steps <= self.diffusion.timesteps:
            raise ValueError(f"steps={steps}: must be between 1 and the model's {self.diffusion.timesteps} timesteps")
        labels = self.sample_labels(n, labels)
        if labels is not None and not np.all((0 <= labels.numpy()) & (labels.numpy() <= self.num_classes)):
            raise ValueError(f"labels: must be class ids in [0, {self.num_classes - 1}] (or {self.null_label}: none)")
        guidance = tf.constant(self.guidance if guidance is None else guidance, tf.float32)
        return self._sample(self.sampling_network, [n, *self.image_shape], tf.constant(seed, tf.int32),
                            tf.constant(steps, tf.int32), tf.constant(self.eta if eta is None else eta, tf.float32),
                            labels, guidance, sampler=sampler or self.sampler, spacing=spacing or self.sample_spacing)

    def ancestral_sample(self, n: int, seed: int = 0) -> tf.Tensor:
        """DDPM's full ancestral sampling: all T steps with the posterior variance (DDIM at eta=1)."""
        return self.generate(n, seed, steps=self.diffusion.timesteps, eta=1.0, sampler="ddim", spacing="uniform")


def build_diffusion_model(config: DiffusionConfig, input_shape: Sequence[int]) -> DiffusionModel:
    input_shape = start_build(config, input_shape)
    diffusion = GaussianDiffusion(noise_schedule(config.schedule, config.timesteps, config.cosine_offset,
                                                 config.max_beta), prediction=config.prediction)
    with precision_policy(config):
        network = (build_compact_unet if config.architecture == "compact" else build_unet)(config, input_shape)
        model = DiffusionModel(network, diffusion, loss=config.loss,
                               sample_steps=config.sample_steps, eta=config.eta, ema_decay=config.ema_decay,
                               loss_weighting=config.loss_weighting, min_snr_gamma=config.min_snr_gamma,
                               sampler=config.sampler, sample_spacing=config.sample_spacing,
                               num_classes=config.num_classes, p_uncond=config.p_uncond, guidance=config.guidance,
                               name=f"ddpm_{config.schedule}")
    model.compile(optimizer=make_optimizer(config), steps_per_execution=config.steps_per_execution,
                  jit_compile=use_xla(config))
    return model


def fit(model: DiffusionModel, config: DiffusionConfig, train_data: tf.data.Dataset,
        eval_data: Optional[tf.data.Dataset] = None, callbacks=None, initial_epoch: int = 0) -> Dict[str, List[float]]:
    """Trains a built DDPM from `initial_epoch` to config.epochs; returns the per-epoch history."""
    return fit_epochs(model, config, train_data, eval_data, callbacks, initial_epoch)


def train(config: DiffusionConfig, input_shape: Sequence[int], train_data: tf.data.Dataset,
          eval_data: Optional[tf.data.Dataset] = None, callbacks=None) -> Tuple[DiffusionModel, Dict[str, List[float]]]:
    """Trains the noise predictor on batches of images (B, H, W, C) in [-1, 1]; returns the model and history."""
    model = build_diffusion_model(config, input_shape)
    return model, fit(model, config, train_data, eval_data, callbacks)


def serving_signatures(model, image_shape, pixel_range) -> Dict[str, Callable]:
    """The SavedModel's signatures (trainers/export.py writes them; see its docstring for the contract). A
    conditional model's generate takes labels (m,) (repeated over the n images) and a guidance scale too."""
    del pixel_range
    timesteps, eta = model.diffusion.timesteps, tf.constant(model.eta, tf.float32)

    def sample(n, seed, steps, labels, guidance):
        n = signatures.checked_count(n, "n", signatures.MAX_GENERATED)
        steps = signatures.checked_count(steps, "steps", timesteps)
        network = model.sampling_network
        if model.num_classes:
            labels = signatures.checked_labels(labels, model.num_classes)
            network = model.guided_network(network, signatures.cycled_labels(labels, n),
                                           signatures.checked_guidance(guidance))
        images = model.diffusion.sample(network, tf.stack([n, *image_shape]), seed, steps, eta, model.sampler,
                                        model.sample_spacing)
        return {"images": (images + 1.0) / 2.0}

    if model.num_classes:
        generate = tf.function(lambda n, seed, steps, labels, guidance: sample(n, seed, steps, labels, guidance),
                               input_signature=[signatures.N, signatures.SEED, signatures.STEPS, signatures.LABELS,
                                                signatures.GUIDANCE])
    else:
        generate = tf.function(lambda n, seed, steps: sample(n, seed, steps, None, None),
                               input_signature=[signatures.N, signatures.SEED, signatures.STEPS])

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name="noise"), signatures.STEPS])
    def generate_from_noise(x, steps):
        """The deterministic map from x_T (standard normal noise) to images: the probability-flow ODE solved by
        the model's sampler at eta = 0 whatever its `eta` (a stochastic sampler's images would depend on more
        than x_T), so that nearby noises give nearby images (DDIM's latent interpolation). A conditional model
        draws every class in turn at its configured guidance here."""
        steps = signatures.checked_count(steps, "steps", timesteps)
        x = signatures.checked_codings(x)
        network = model.sampling_network
        if model.num_classes:
            network = model.guided_network(network,
                                           signatures.cycled_labels(tf.range(model.num_classes), tf.shape(x)[0]),
                                           tf.constant(model.guidance, tf.float32))
        images = model.diffusion.denoise(network, x, tf.constant(0), steps, tf.constant(0.0), model.sampler,
                                         model.sample_spacing)
        return {"images": (images + 1.0) / 2.0}

    return {"serving_default": generate, "generate": generate, "generate_from_noise": generate_from_noise}


def array_function(serving: Dict[str, Callable], model) -> Callable:
    """The SavedModel's callable: x_T noise -> images by DDIM with the model's default steps."""
    noise_spec = serving["generate_from_noise"].input_signature[0]
    return tf.function(lambda noise: serving["generate_from_noise"](noise, tf.constant(model.sample_steps))["images"],
                       input_signature=[noise_spec])


def export_metadata(model) -> Dict[str, object]:
    """What a server needs and the signatures cannot say: T (the steps limit) and the default DDIM steps."""
    return {"timesteps": int(model.diffusion.timesteps), "sample_steps": int(model.sample_steps),
            "sampler": model.sampler, "sample_spacing": model.sample_spacing,
            "generate_defaults": {"steps": int(model.sample_steps),
                                  **({"labels": list(range(model.num_classes)), "guidance": float(model.guidance)}
                                     if model.num_classes else {})},
            "num_classes": int(model.num_classes)}


def size_rule(values: Mapping[str, Any], image_shape: Sequence[int]) -> Dict[str, Any]:
    """One more U-Net level per doubling, at full resolution with half the first level's channels: the lowest
    resolution (and its attention) stays where the presets put it (8x8 at 64 pixels, as 7x7 at 28)."""
    stages = extra_stages(image_shape)
    if not stages:
        return {}
    multipliers = tuple(int(m) for m in values["channel_multipliers"])
    for _ in range(stages):
        multipliers = (max(1, multipliers[0] // 2),) + multipliers
    return {"channel_multipliers": multipliers}


# The family's description, registered on import (trainers/registry.py imports every family module).
register(Family(
    "diffusion", DiffusionConfig, without_base(build_diffusion_model), fit,
    serving_signatures, array_function, key_metric=("fid", False),
    scorers=(scoring.score_generation,), figures=(figures.samples(32),), pixel_range=PIXEL_RANGE,
    generate_signature="generate", export_metadata=export_metadata,
    latent_signature="generate_from_noise",
    input_example=standard_normal(lambda images, config: images.shape[1:]), size_rule=size_rule,
    search_space={"learning_rate": {"loguniform": [2e-4, 3e-3]}, "ema_decay": {"choice": [0.99, 0.999, 0.9995]},
                  "prediction": {"choice": ["epsilon", "v"]}, "batch_size": {"choice": [32, 64]}}),
    {"ddpm": {}, "ddpm_linear": dict(schedule="linear"),
     "ddpm_unet": dict(architecture="unet", base_channels=32, channel_multipliers=(1, 2, 2))})


register(Family(
    "conditional_diffusion", DiffusionConfig, without_base(with_classes(build_diffusion_model)),
    fit, serving_signatures, array_function, key_metric=("fid", False),
    scorers=(scoring.score_generation, scoring.score_conditional_generation),
    figures=(figures.class_rows(8), figures.guidance_strip((0.0, 1.0, 2.0, 4.0))), pixel_range=PIXEL_RANGE,
    generate_signature="generate", export_metadata=export_metadata,
    latent_signature="generate_from_noise",
    input_example=standard_normal(lambda images, config: images.shape[1:]), conditional=True,
    size_rule=size_rule,
    description="class-conditional DDPM with classifier-free guidance (labels + guidance at generate)"),
    {"ddpm_cond": {}})
