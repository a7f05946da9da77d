"""Denoising diffusion (DDPM): the config, the keras.Model that trains a noise predictor and samples with it, its
SavedModel signatures and the family's description. The process and its samplers are trainers/diffusion_process.py,
the networks trainers/diffusion_networks.py.

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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from evaluation import figures, scoring
from trainers import signatures
from trainers.common import (TrainingConfig, apply_gradients, average_loss, extra_stages, fit_epochs,
                             make_optimizer, per_example_mean, precision_policy, require, require_choice,
                             require_ema_decay, run_network, scaled_loss, start_build, use_xla)
from trainers.diffusion_networks import build_compact_unet, build_unet
from trainers.diffusion_process import PREDICTIONS, SAMPLERS, SCHEDULES, SPACINGS, GaussianDiffusion, noise_schedule
from trainers.ema import ExponentialMovingAverage
from trainers.family import Family, register, standard_normal, with_classes, without_base

PIXEL_RANGE = "symmetric"
LOSSES = ("mse", "huber")
ARCHITECTURES = ("unet", "compact")
WEIGHTINGS = ("uniform", "min_snr")


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
