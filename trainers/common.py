"""What every model family shares: config checks, optimisers, distribution-safe losses, divergence detection.

Nothing here knows TFX, Ray or MLflow. Losses follow tf.distribute's rule so that the same train_step is right
with one device and under MultiWorkerMirroredStrategy: each replica's loss is the sum of its per-example
losses divided by the *global* batch size (tf.nn.compute_average_loss), because the optimizer sums gradients
across replicas.
"""
import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from trainers import autograph_rules  # noqa: F401  pylint: disable=unused-import  (its rule applies on import)
from trainers import progress

OPTIMIZERS = ("nadam", "adam", "rmsprop", "sgd")
# Keras mixed-precision policies (variables stay float32; layers compute in the low precision), or "auto":
# mixed_bfloat16 where the hardware computes bfloat16 natively (AVX512-BF16/AMX CPUs, GPUs from Ampere on), else
# float32. mixed_float16 is for GPUs and scales the loss (LossScaleOptimizer) so small gradients do not vanish.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")


def require(ok: bool, message: str) -> None:
    """Raises ValueError(message) unless ok: config checks read as a list of rules."""
    if not ok:
        raise ValueError(message)


def require_choice(config, name: str, allowed: Sequence[str]) -> None:
    value = getattr(config, name)
    require(value in allowed, f"{name}={value!r}: must be one of {tuple(allowed)}")


def require_ema_decay(config) -> None:
    """ema_decay: 0 (no average) or a decay in (0, 1) (trainers/ema.py)."""
    require(0 <= config.ema_decay < 1, f"ema_decay={config.ema_decay}: must be in [0, 1) (0.999 is usual; 0 turns "
                                       "the weight average off)")


def require_layer_sizes(config, name: str, unit: str) -> None:
    """A tuple of layer sizes (hidden_units, conv_filters): at least one layer, each of size >= 1."""
    sizes = getattr(config, name)
    require(sizes and all(int(size) >= 1 for size in sizes),
            f"{name}={sizes}: need at least one layer, each with >= 1 {unit}")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Settings every family has. Subclasses redeclare a field to change its default.

    steps_per_execution runs that many train steps per call into the graph (fewer Python round trips);
    jit_compile asks XLA to fuse each step (Keras falls back when an op has no XLA kernel).
    """

    optimizer: str = "nadam"
    learning_rate: float = 1e-3
    beta_1: float = 0.9  # Adam/Nadam first-moment decay (GANs use 0.5)
    epochs: int = 20
    batch_size: int = 32
    seed: int = 42
    steps_per_execution: int = 1
    jit_compile: bool = False
    precision: str = "float32"
    # Class-conditional models: the share of each training batch drawn from the labelled examples (repeated as
    # needed; 0: as they come). With 10 labels per class among 60,000 images the conditional path would otherwise
    # see a label once in 600 images. It adds no label: the same K per class are seen more often.
    labeled_share: float = 0.0

    def __post_init__(self):
        require_choice(self, "optimizer", OPTIMIZERS)
        require(0 <= self.labeled_share < 1, f"labeled_share={self.labeled_share}: must be in [0, 1)")
        require_choice(self, "precision", PRECISIONS)
        for name in ("epochs", "batch_size", "steps_per_execution"):
            require(getattr(self, name) >= 1, f"{name}={getattr(self, name)}: must be at least 1")
        require(self.learning_rate > 0, f"learning_rate={self.learning_rate}: must be positive")
        require(0 <= self.beta_1 < 1, f"beta_1={self.beta_1}: must be in [0, 1)")


@functools.lru_cache(maxsize=None)
def bfloat16_is_native() -> bool:
    """Whether this machine computes bfloat16 in hardware: a CPU with AVX512-BF16 or AMX-BF16, or a GPU of compute
    capability 8.0 or more."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if tuple(capability) >= (8, 0):
            return True
    return False


def resolve_precision(precision: str) -> str:
    """A Keras policy name for a config's precision ("auto": mixed_bfloat16 where bfloat16 is native)."""
    if precision == "auto":
        return "mixed_bfloat16" if bfloat16_is_native() else "float32"
    return precision


@contextlib.contextmanager
def precision_policy(config: TrainingConfig):
    """Layers built inside take the config's precision; the global policy is restored afterwards, so nothing
    built later (another model, the metric network) inherits it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(resolve_precision(config.precision))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def scaled_loss(optimizer: keras.optimizers.Optimizer, loss: tf.Tensor) -> tf.Tensor:
    """The loss to differentiate, inside the GradientTape: multiplied by the loss scale under mixed_float16."""
    if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        return optimizer.get_scaled_loss(loss)
    return loss


def apply_gradients(optimizer: keras.optimizers.Optimizer, tape: tf.GradientTape, loss: tf.Tensor,
                    variables: Sequence[tf.Variable]) -> None:
    """One optimizer step down `loss` (a `scaled_loss` recorded by `tape`), the gradients unscaled if needed."""
    gradients = tape.gradient(loss, variables)
    if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        gradients = optimizer.get_unscaled_gradients(gradients)
    optimizer.apply_gradients(zip(gradients, variables))


def use_xla(config: TrainingConfig) -> bool:
    """config.jit_compile, except across replicas: XLA cannot read a variable mirrored on another device."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync if tf.distribute.has_strategy() else 1
    return config.jit_compile and replicas == 1


def start_build(config: TrainingConfig, input_shape: Sequence[int]) -> Tuple[int, ...]:
    """What every family's build does first: the shape as ints, checked against the config; the seed set."""
    input_shape = tuple(int(d) for d in input_shape)
    config.check_input(input_shape)
    keras.utils.set_random_seed(config.seed)
    return input_shape


def make_optimizer(config: TrainingConfig, learning_rate: Optional[float] = None) -> keras.optimizers.Optimizer:
    rate = config.learning_rate if learning_rate is None else learning_rate
    # tf_keras optimizers XLA-compile their update per variable by default: minutes of compiling for a
    # U-Net's hundreds of variables on CPU. They follow the config's jit_compile instead.
    jit = use_xla(config)
    if config.optimizer == "nadam":
        optimizer = keras.optimizers.Nadam(rate, beta_1=config.beta_1, jit_compile=jit)
    elif config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(rate, beta_1=config.beta_1, jit_compile=jit)
    elif config.optimizer == "rmsprop":
        optimizer = keras.optimizers.RMSprop(rate, jit_compile=jit)
    else:
        optimizer = keras.optimizers.SGD(rate, jit_compile=jit)
    if resolve_precision(config.precision) == "mixed_float16":
        return keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def average_loss(per_example: tf.Tensor, model: Optional[keras.Model] = None) -> tf.Tensor:
    """The replica's share of the global mean loss, plus its share of `model.losses` (regularisers)."""
    loss = tf.nn.compute_average_loss(per_example)
    if model is not None and model.losses:
        loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
    return loss


@tf.autograph.experimental.do_not_convert
def run_network(network: keras.Model, inputs, training: bool):
    """network(inputs) without AutoGraph rewriting the layers' Python: Keras layers do not need it, and
    converting a U-Net's ~150 layers costs tens of seconds on every trace of a train step or sampler."""
    return network(inputs, training=training)


def per_example_sum(values: tf.Tensor) -> tf.Tensor:
    """(B, ...) -> (B,): sums everything but the batch axis."""
    return tf.reduce_sum(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)


def per_example_mean(values: tf.Tensor) -> tf.Tensor:
    """(B, ...) -> (B,): averages everything but the batch axis."""
    return tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)


def upsampling_plan(height: int, width: int, stages: int) -> Tuple[int, int, Tuple[Tuple[int, int], Tuple[int, int]]]:
    """Decoders that double the size `stages` times start at ceil(H / 2^n) x ceil(W / 2^n) and crop back.

    Returns (start_height, start_width, cropping for keras.layers.Cropping2D).
    """
    scale = 2 ** stages
    start_h, start_w = math.ceil(height / scale), math.ceil(width / scale)
    crop_h, crop_w = start_h * scale - height, start_w * scale - width
    return start_h, start_w, ((crop_h // 2, crop_h - crop_h // 2), (crop_w // 2, crop_w - crop_w // 2))


def with_known_size(dataset: Optional[tf.data.Dataset], config: TrainingConfig) -> Optional[tf.data.Dataset]:
    """Keras runs several steps per call only on datasets of known size; count an unknown one once (a full pass
    of the input pipeline: tf.data sources such as TFRecord files do not know their length)."""
    if dataset is None or config.steps_per_execution == 1:
        return dataset
    if dataset.cardinality() == tf.data.UNKNOWN_CARDINALITY:
        size = int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(size))
    return dataset


def fit_epochs(model: keras.Model, config: TrainingConfig, train_data: tf.data.Dataset,
               eval_data: Optional[tf.data.Dataset] = None, callbacks=None, initial_epoch: int = 0,
               epochs: Optional[int] = None) -> Dict[str, List[float]]:
    """model.fit from `initial_epoch` (a resumed run) to `epochs` (default config.epochs), with progress
    (trainers/progress.py: a bar per epoch on a terminal, unless `callbacks` bring their own EpochProgress);
    returns the per-epoch history as floats."""
    train_data, eval_data = with_known_size(train_data, config), with_known_size(eval_data, config)
    callbacks = list(callbacks or [])
    if not any(isinstance(c, progress.EpochProgress) for c in callbacks):
        callbacks.append(progress.EpochProgress(config.batch_size))
    history = model.fit(train_data, validation_data=eval_data, epochs=config.epochs if epochs is None else epochs,
                        initial_epoch=initial_epoch, verbose=0, callbacks=callbacks)
    return history_floats(history.history)


def history_floats(history: Dict[str, Iterable]) -> Dict[str, List[float]]:
    return {k: [float(v) for v in values] for k, values in history.items()}


class AdversarialModel(keras.Model):
    """A model that trains a generator and a discriminator in its own train_step, each with its optimizer (given
    at compile), and reports the metrics in `trackers` (name -> keras metric; Keras resets them each epoch)."""
    trackers: Dict[str, keras.metrics.Metric]

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

    @property
    def metrics(self):
        return list(self.trackers.values())


class TrainingDiverged(RuntimeError):
    """Training stopped because it diverged; `step` is the global train step (1-based) where it was seen."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"training diverged at step {step}: {reason}. Lower the learning rate, or (GANs) try "
                         "label_smoothing, spectral_norm or loss='wgan_gp'.")
        self.step, self.reason = step, reason

    def __reduce__(self):
        # Picklable with its own arguments: it travels from a Ray worker to the driver.
        return TrainingDiverged, (self.step, self.reason)


class DivergenceMonitor(keras.callbacks.Callback):
    """Raises TrainingDiverged when a watched log value is NaN/Inf, or when `wins(logs)` is true for
    `patience` consecutive steps (a GAN discriminator that wins outright gives its generator no gradient).

    The train step returns per-step values for the keys watched here (not epoch means), so a single bad step
    is seen at the step it happens. With steps_per_execution = N, Keras shows callbacks every Nth step only:
    GANs keep the default of 1.
    """

    def __init__(self, keys: Sequence[str], wins=None, patience: int = 0):
        super().__init__()
        self.keys, self.wins, self.patience = tuple(keys), wins, patience
        self.epoch_start_step, self.streak = 0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start_step = self.last_step if hasattr(self, "last_step") else 0

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self.last_step = step = self.epoch_start_step + batch + 1
        for key in self.keys:
            if key in logs and not math.isfinite(float(logs[key])):
                raise TrainingDiverged(step, f"{key} is {float(logs[key])}")
        if self.wins is not None and self.patience > 0:
            self.streak = self.streak + 1 if self.wins(logs) else 0
            if self.streak >= self.patience:
                raise TrainingDiverged(step, f"the discriminator won outright for {self.streak} consecutive steps "
                                             f"({', '.join(f'{k}={float(v):.4f}' for k, v in sorted(logs.items()))})")


# The presets are sized for 28x28 digits and serve up to 32 pixels; each doubling beyond adds a stage.
PRESET_PIXELS = 32


def extra_stages(image_shape: Sequence[int]) -> int:
    """Stages (a stride-2 layer, a U-Net level) an image of this size needs beyond the presets': one per doubling
    of its longer side past PRESET_PIXELS (0 for 28x28 and 32x32, 1 for 64x64, 2 for 128x128)."""
    side = max(int(image_shape[0]), int(image_shape[1]))
    return max(0, math.ceil(math.log2(side / PRESET_PIXELS))) if side > PRESET_PIXELS else 0


def deeper(filters: Sequence[int], stages: int, cap: int = 512) -> Tuple[int, ...]:
    """`filters` (a stack going down in resolution: an encoder's, a discriminator's) with `stages` more at the end,
    each doubling the last (at most `cap`)."""
    filters = tuple(int(f) for f in filters)
    for _ in range(stages):
        filters += (min(cap, 2 * filters[-1]),)
    return filters


def conv_stack_sized(field: str, when: Callable[[Mapping[str, Any]], bool] = lambda values: True):
    """A family whose `field` is a downsampling stack (each entry a stride-2 stage): deeper for larger images."""
    def sized(values: Mapping[str, Any], image_shape: Sequence[int]) -> Dict[str, Any]:
        stages = extra_stages(image_shape)
        if not stages or not when(values):
            return {}
        return {field: deeper(values[field], stages)}
    return sized


# The convolutional autoencoders' and VAEs' size rule: one more stride-2 (or pooling) stage per doubling past 32.
conv_architecture_sized = conv_stack_sized("conv_filters", lambda values: values["architecture"] == "conv")
