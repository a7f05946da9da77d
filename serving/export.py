"""SavedModel export with named signatures a TF Serving user calls.

    autoencoder  reconstruct (serving_default), encode, decode, anomaly_score
    vae          the same, plus sample(n, seed)
    gan          generate(n, seed) (serving_default), generate_from_codings
    diffusion    generate(n, seed, steps) by DDIM (serving_default)
    classifier   classify (serving_default): class probabilities and the most likely class

Images go in as float32 (B, H, W, C) in the model's pixel range (see `latentforge models`). Generated images
come out in [0, 1] whatever the model's range, ready to look at.

Inputs are checked inside the graph, so a plain `tf.saved_model.load` user gets the same errors as our server:
images outside the pixel range or not finite, n outside [1, MAX_GENERATED], steps outside [1, T] raise
InvalidArgumentError naming the input (the input signature already rejects wrong shapes and dtypes).

Besides the signatures, the SavedModel carries `metadata`, a string variable holding JSON (family, pixel range,
image shape, generation limits, DDPM's T and default sampling steps): what a server needs to know and the
signatures cannot say. `json.loads(tf.saved_model.load(d).metadata.numpy())`.

The SavedModel is also callable (`loaded(array)`): the family's array-in, array-out function (reconstruct,
generate_from_codings, generate_from_noise, classify's probabilities), which MLflow's tensorflow flavor calls
for `pyfunc.predict`.
"""
import json
from typing import Any, Callable, Dict, Sequence

import tensorflow as tf

MAX_GENERATED = 4096  # images one generate/sample call may ask for
PIXEL_BOUNDS = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0)}
_TOLERANCE = 1e-3  # rounding slack on the pixel range


def _image_spec(image_shape):
    return tf.TensorSpec([None, *image_shape], tf.float32, name="images")


def _codings_spec(size: int):
    return tf.TensorSpec([None, size], tf.float32, name="codings")


_N = tf.TensorSpec([], tf.int32, name="n")
_SEED = tf.TensorSpec([], tf.int32, name="seed")
_STEPS = tf.TensorSpec([], tf.int32, name="steps")


def checked_images(x: tf.Tensor, pixel_range: str) -> tf.Tensor:
    """x, after asserting its values are finite and inside the model's pixel range."""
    low, high = PIXEL_BOUNDS[pixel_range]
    inside = tf.reduce_all(tf.math.is_finite(x)) & tf.reduce_all(
        (x >= low - _TOLERANCE) & (x <= high + _TOLERANCE))
    check = tf.debugging.Assert(inside, [f"images: every value must be finite and in [{low:g}, {high:g}] (the "
                                         f"model's pixel range); got min", tf.reduce_min(x), "max", tf.reduce_max(x)])
    with tf.control_dependencies([check]):
        return tf.identity(x)


def checked_count(n: tf.Tensor, name: str, limit) -> tf.Tensor:
    check = tf.debugging.Assert((n >= 1) & (n <= limit), [f"{name}: must be between 1 and", limit, "; got", n])
    with tf.control_dependencies([check]):
        return tf.identity(n)


def checked_codings(z: tf.Tensor) -> tf.Tensor:
    check = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(z)), ["codings: must be finite (no NaN or inf)"])
    with tf.control_dependencies([check]):
        return tf.identity(z)


def autoencoder_signatures(model, image_shape, pixel_range) -> Dict[str, Callable]:
    images, codings = _image_spec(image_shape), _codings_spec(int(model.encoder.output_shape[-1]))

    @tf.function(input_signature=[images])
    def reconstruct(x):
        return {"reconstructions": model(checked_images(x, pixel_range), training=False)}

    @tf.function(input_signature=[images])
    def encode(x):
        return {"codings": model.encoder(checked_images(x, pixel_range), training=False)}

    @tf.function(input_signature=[codings])
    def decode(z):
        return {"images": model.decoder(checked_codings(z), training=False)}

    @tf.function(input_signature=[images])
    def anomaly_score(x):
        return {"scores": model.anomaly_score(checked_images(x, pixel_range))}

    return {"serving_default": reconstruct, "reconstruct": reconstruct, "encode": encode, "decode": decode,
            "anomaly_score": anomaly_score}


def vae_signatures(model, image_shape, pixel_range) -> Dict[str, Callable]:
    images, codings = _image_spec(image_shape), _codings_spec(model.coding_size)

    @tf.function(input_signature=[images])
    def reconstruct(x):
        return {"reconstructions": model(checked_images(x, pixel_range), training=False)}

    @tf.function(input_signature=[images])
    def encode(x):
        mean, log_var = model.encoder(checked_images(x, pixel_range), training=False)
        return {"codings": mean, "log_var": log_var}

    @tf.function(input_signature=[codings])
    def decode(z):
        return {"images": model.decode(checked_codings(z))}

    @tf.function(input_signature=[images])
    def anomaly_score(x):
        # Mean squared reconstruction error through the codings' mean, as for the other autoencoders.
        x = checked_images(x, pixel_range)
        error = tf.square(model(x, training=False) - x)
        return {"scores": tf.reduce_mean(tf.reshape(error, [tf.shape(x)[0], -1]), axis=1)}

    @tf.function(input_signature=[_N, _SEED])
    def sample(n, seed):
        n = checked_count(n, "n", MAX_GENERATED)
        return {"images": model.decode(tf.random.stateless_normal(tf.stack([n, model.coding_size]),
                                                                  seed=tf.stack([seed, 0])))}

    return {"serving_default": reconstruct, "reconstruct": reconstruct, "encode": encode, "decode": decode,
            "anomaly_score": anomaly_score, "sample": sample}


def gan_signatures(model, image_shape, pixel_range) -> Dict[str, Callable]:
    del image_shape, pixel_range
    to_unit = lambda x: (x + 1.0) / 2.0

    @tf.function(input_signature=[_N, _SEED])
    def generate(n, seed):
        n = checked_count(n, "n", MAX_GENERATED)
        codings = tf.random.stateless_normal(tf.stack([n, model.coding_size]), seed=tf.stack([seed, 0]))
        return {"images": to_unit(model.generator(codings, training=False))}

    @tf.function(input_signature=[_codings_spec(model.coding_size)])
    def generate_from_codings(z):
        return {"images": to_unit(model.generator(checked_codings(z), training=False))}

    return {"serving_default": generate, "generate": generate, "generate_from_codings": generate_from_codings}


def diffusion_signatures(model, image_shape, pixel_range) -> Dict[str, Callable]:
    del pixel_range
    timesteps, eta = model.diffusion.timesteps, tf.constant(model.eta, tf.float32)

    @tf.function(input_signature=[_N, _SEED, _STEPS])
    def generate(n, seed, steps):
        n, steps = checked_count(n, "n", MAX_GENERATED), checked_count(steps, "steps", timesteps)
        images = model.diffusion.sample(model.network, tf.stack([n, *image_shape]), seed, steps, eta)
        return {"images": (images + 1.0) / 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name="noise"), _STEPS])
    def generate_from_noise(x, steps):
        """DDIM from the given x_T (standard normal noise): deterministic for the default eta=0."""
        steps = checked_count(steps, "steps", timesteps)
        images = model.diffusion.denoise(model.network, checked_codings(x), tf.constant(0), steps, eta)
        return {"images": (images + 1.0) / 2.0}

    return {"serving_default": generate, "generate": generate, "generate_from_noise": generate_from_noise}


def classifier_signatures(model, image_shape, pixel_range) -> Dict[str, Callable]:
    @tf.function(input_signature=[_image_spec(image_shape)])
    def classify(x):
        probabilities = model(checked_images(x, pixel_range), training=False)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

    return {"serving_default": classify, "classify": classify}


SIGNATURES = {"autoencoder": autoencoder_signatures, "vae": vae_signatures, "gan": gan_signatures,
              "diffusion": diffusion_signatures, "classifier": classifier_signatures}


def _array_function(family: str, signatures: Dict[str, Callable], model) -> Callable:
    """The family's one-array-in, one-array-out function: what `loaded(array)` and MLflow's pyfunc call."""
    if family in ("autoencoder", "vae"):
        name, key, spec = "reconstruct", "reconstructions", signatures["reconstruct"].input_signature[0]
    elif family == "gan":
        name, key, spec = "generate_from_codings", "images", signatures["generate_from_codings"].input_signature[0]
    elif family == "diffusion":
        noise_spec = signatures["generate_from_noise"].input_signature[0]
        return tf.function(lambda noise: signatures["generate_from_noise"](noise, tf.constant(model.sample_steps))[
            "images"], input_signature=[noise_spec])
    else:
        name, key, spec = "classify", "probabilities", signatures["classify"].input_signature[0]
    return tf.function(lambda x: signatures[name](x)[key], input_signature=[spec])


def export_metadata(family: str, model, image_shape: Sequence[int], pixel_range: str) -> Dict[str, Any]:
    metadata = {"family": family, "pixel_range": pixel_range, "image_shape": [int(d) for d in image_shape],
                "max_generated": MAX_GENERATED}
    if family == "diffusion":
        metadata.update(timesteps=int(model.diffusion.timesteps), sample_steps=int(model.sample_steps))
    return metadata


def export_model(family: str, model, image_shape: Sequence[int], export_dir: str,
                 pixel_range: str) -> Dict[str, Callable]:
    """Writes `model` as a SavedModel with its family's signatures; returns the signature functions.
    `pixel_range`: what image inputs must lie in ("unit" or "symmetric"; see PIXEL_BOUNDS)."""
    if pixel_range not in PIXEL_BOUNDS:
        raise ValueError(f"pixel_range={pixel_range!r}: must be one of {sorted(PIXEL_BOUNDS)}")
    signatures = SIGNATURES[family](model, tuple(int(d) for d in image_shape), pixel_range)
    # A plain tf.Module that owns the variables: the signatures are the whole interface, so the SavedModel
    # loads without the project's classes, and Keras's own (slow, input-shape hungry) model tracing is skipped.
    root = tf.Module()
    root.model_variables = list(model.variables)
    for name, function in signatures.items():
        setattr(root, name, function)
    root.__call__ = _array_function(family, signatures, model)
    root.metadata = tf.Variable(json.dumps(export_metadata(family, model, image_shape, pixel_range)),
                                trainable=False, name="metadata")
    tf.saved_model.save(root, export_dir, signatures=signatures)
    return signatures
