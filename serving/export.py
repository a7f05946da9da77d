"""SavedModel export with named signatures a TF Serving user calls.

    autoencoder  reconstruct (serving_default), encode, decode, anomaly_score
    vae          the same, plus sample(n, seed)
    gan          generate(n, seed) (serving_default), generate_from_codings
    diffusion    generate(n, seed, steps) by DDIM (serving_default)
    classifier   classify (serving_default): class probabilities and the most likely class

Images go in as float32 (B, H, W, C) in the model's pixel range (see `latentforge models`). Generated images
come out in [0, 1] whatever the model's range, ready to look at.
"""
from typing import Callable, Dict, Sequence

import tensorflow as tf


def _image_spec(image_shape):
    return tf.TensorSpec([None, *image_shape], tf.float32, name="images")


def _codings_spec(size: int):
    return tf.TensorSpec([None, size], tf.float32, name="codings")


_N = tf.TensorSpec([], tf.int32, name="n")
_SEED = tf.TensorSpec([], tf.int32, name="seed")


def autoencoder_signatures(model, image_shape) -> Dict[str, Callable]:
    images, codings = _image_spec(image_shape), _codings_spec(int(model.encoder.output_shape[-1]))

    @tf.function(input_signature=[images])
    def reconstruct(x):
        return {"reconstructions": model(x, training=False)}

    @tf.function(input_signature=[images])
    def encode(x):
        return {"codings": model.encoder(x, training=False)}

    @tf.function(input_signature=[codings])
    def decode(z):
        return {"images": model.decoder(z, training=False)}

    @tf.function(input_signature=[images])
    def anomaly_score(x):
        return {"scores": model.anomaly_score(x)}

    return {"serving_default": reconstruct, "reconstruct": reconstruct, "encode": encode, "decode": decode,
            "anomaly_score": anomaly_score}


def vae_signatures(model, image_shape) -> Dict[str, Callable]:
    images, codings = _image_spec(image_shape), _codings_spec(model.coding_size)

    @tf.function(input_signature=[images])
    def reconstruct(x):
        return {"reconstructions": model(x, training=False)}

    @tf.function(input_signature=[images])
    def encode(x):
        mean, log_var = model.encoder(x, training=False)
        return {"codings": mean, "log_var": log_var}

    @tf.function(input_signature=[codings])
    def decode(z):
        return {"images": model.decode(z)}

    @tf.function(input_signature=[images])
    def anomaly_score(x):
        # Mean squared reconstruction error through the codings' mean, as for the other autoencoders.
        error = tf.square(model(x, training=False) - x)
        return {"scores": tf.reduce_mean(tf.reshape(error, [tf.shape(x)[0], -1]), axis=1)}

    @tf.function(input_signature=[_N, _SEED])
    def sample(n, seed):
        return {"images": model.decode(tf.random.stateless_normal(tf.stack([n, model.coding_size]),
                                                                  seed=tf.stack([seed, 0])))}

    return {"serving_default": reconstruct, "reconstruct": reconstruct, "encode": encode, "decode": decode,
            "anomaly_score": anomaly_score, "sample": sample}


def gan_signatures(model, image_shape) -> Dict[str, Callable]:
    del image_shape
    to_unit = lambda x: (x + 1.0) / 2.0

    @tf.function(input_signature=[_N, _SEED])
    def generate(n, seed):
        codings = tf.random.stateless_normal(tf.stack([n, model.coding_size]), seed=tf.stack([seed, 0]))
        return {"images": to_unit(model.generator(codings, training=False))}

    @tf.function(input_signature=[_codings_spec(model.coding_size)])
    def generate_from_codings(z):
        return {"images": to_unit(model.generator(z, training=False))}

    return {"serving_default": generate, "generate": generate, "generate_from_codings": generate_from_codings}


def diffusion_signatures(model, image_shape) -> Dict[str, Callable]:
    @tf.function(input_signature=[_N, _SEED, tf.TensorSpec([], tf.int32, name="steps")])
    def generate(n, seed, steps):
        images = model.diffusion.sample(model.network, tf.stack([n, *image_shape]), seed, steps,
                                        tf.constant(model.eta, tf.float32))
        return {"images": (images + 1.0) / 2.0}

    return {"serving_default": generate, "generate": generate}


def classifier_signatures(model, image_shape) -> Dict[str, Callable]:
    @tf.function(input_signature=[_image_spec(image_shape)])
    def classify(x):
        probabilities = model(x, training=False)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

    return {"serving_default": classify, "classify": classify}


SIGNATURES = {"autoencoder": autoencoder_signatures, "vae": vae_signatures, "gan": gan_signatures,
              "diffusion": diffusion_signatures, "classifier": classifier_signatures}


def export_model(family: str, model, image_shape: Sequence[int], export_dir: str) -> Dict[str, Callable]:
    """Writes `model` as a SavedModel with its family's signatures; returns the signature functions."""
    signatures = SIGNATURES[family](model, tuple(int(d) for d in image_shape))
    # A plain tf.Module that owns the variables: the signatures are the whole interface, so the SavedModel
    # loads without the project's classes, and Keras's own (slow, input-shape hungry) model tracing is skipped.
    root = tf.Module()
    root.model_variables = list(model.variables)
    for name, function in signatures.items():
        setattr(root, name, function)
    tf.saved_model.save(root, export_dir, signatures=signatures)
    return signatures
