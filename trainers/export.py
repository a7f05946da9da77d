"""SavedModel export with named signatures a TF Serving user calls.

Each family's module builds its signatures (`serving_signatures`, from trainers/signatures.py's pieces) and its
description (trainers/registry.py) names them; this module writes whatever the family gives. Today's families:

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
image shape, generation limits, the generating signature and its default inputs, DDPM's T and default steps, an
autoencoder's calibrated anomaly threshold): what a server needs to know and the signatures cannot say.
`json.loads(tf.saved_model.load(d).metadata.numpy())`.

The SavedModel is also callable (`loaded(array)`): the family's array-in, array-out function (reconstruct,
generate_from_codings, generate_from_noise, classify's probabilities), which MLflow's tensorflow flavor calls
for `pyfunc.predict`.
"""
import json
from typing import Any, Callable, Dict, Optional, Sequence, Union

import tensorflow as tf

from trainers import registry
from trainers.signatures import MAX_GENERATED, PIXEL_BOUNDS  # noqa: F401  (re-exported: the exporter's limits)


def export_metadata(family: registry.Family, model, image_shape: Sequence[int], pixel_range: str,
                    class_names: Sequence[str] = (), extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    metadata = {"family": family.name, "pixel_range": pixel_range, "image_shape": [int(d) for d in image_shape],
                "max_generated": MAX_GENERATED}
    if family.generate_signature:
        metadata["generate_signature"] = family.generate_signature
    if family.latent_signature:
        metadata["latent_signature"] = family.latent_signature
    if class_names:  # the classes in id order (a conditional model takes these names for class ids)
        metadata["class_names"] = [str(name) for name in class_names]
    metadata.update(family.export_metadata(model))
    metadata.update(extra or {})
    return metadata


def _float32_outputs(function: Callable) -> Callable:
    """`function` if its floating outputs are float32; else the same signature with them cast to float32 (a model
    trained in mixed precision computes in bfloat16/float16, but its SavedModel takes and returns float32)."""
    outputs = function.get_concrete_function().structured_outputs
    if all(not t.dtype.is_floating or t.dtype == tf.float32 for t in outputs.values()):
        return function

    @tf.function(input_signature=function.input_signature)
    def float32_function(*args):
        return {name: tf.cast(value, tf.float32) if value.dtype.is_floating else value
                for name, value in function(*args).items()}
    return float32_function


def export_model(family: Union[str, registry.Family], model, image_shape: Sequence[int], export_dir: str,
                 pixel_range: str, class_names: Sequence[str] = (),
                 extra_metadata: Optional[Dict[str, Any]] = None) -> Dict[str, Callable]:
    """Writes `model` as a SavedModel with its family's signatures (a Family, or a family's name); returns the
    signature functions. `pixel_range`: what image inputs must lie in ("unit" or "symmetric"; see PIXEL_BOUNDS);
    `class_names`: the training data's, in class-id order (the metadata lists them for a conditional model);
    `extra_metadata`: what the Trainer measured besides the model (an autoencoder's calibrated `anomaly` threshold)."""
    family = registry.family(family) if isinstance(family, str) else family
    if pixel_range not in PIXEL_BOUNDS:
        raise ValueError(f"pixel_range={pixel_range!r}: must be one of {sorted(PIXEL_BOUNDS)}")
    signatures = family.signatures(model, tuple(int(d) for d in image_shape), pixel_range)
    wrapped = {}  # one wrapper per function (serving_default is often another signature's function)
    for function in signatures.values():
        if id(function) not in wrapped:
            wrapped[id(function)] = _float32_outputs(function)
    signatures = {name: wrapped[id(function)] for name, function in signatures.items()}
    # A plain tf.Module that owns the variables: the signatures are the whole interface, so the SavedModel
    # loads without the project's classes, and Keras's own (slow, input-shape hungry) model tracing is skipped.
    root = tf.Module()
    root.model_variables = list(model.variables)
    for name, function in signatures.items():
        setattr(root, name, function)
    root.__call__ = family.array_function(signatures, model)
    root.metadata = tf.Variable(json.dumps(export_metadata(family, model, image_shape, pixel_range, class_names,
                                                           extra_metadata)),
                                trainable=False, name="metadata")
    tf.saved_model.save(root, export_dir, signatures=signatures)
    return signatures
