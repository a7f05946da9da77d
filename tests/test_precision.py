"""Mixed precision (TrainingConfig.precision): every family trains with its layers in bfloat16 and its variables
(the EMA's included) in float32, learns, and exports a SavedModel that takes and returns float32; float16 scales
its loss; "auto" follows the hardware; the global Keras policy never leaks out of a build."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainers import export
from tests.conftest import sample_digits
from tests.test_gans import pixel_gap
from trainers import common, registry

TINY = {
    "stacked_ae": {"epochs": 3},
    "conv_vae": {"epochs": 2, "ema_decay": 0.99},
    "dcgan": {"epochs": 20, "coding_size": 8, "conv_filters": (16, 32)},
    "ddpm": {"epochs": 2, "timesteps": 20, "sample_steps": 4, "base_channels": 8},
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "ddpm" else name
                                  for name in sorted(TINY)])  # the DDPM trains ~20 s on 2 cores
def test_a_family_trains_in_bfloat16_and_exports_float32(name, tmp_path):
    entry = registry.get_model(name)
    config = registry.make_config(name, {**TINY[name], "precision": "mixed_bfloat16", "batch_size": 32})
    model = entry.build(config, (28, 28, 1))
    assert keras.mixed_precision.global_policy().name == "float32"  # the build's policy did not leak
    conv_or_dense = [layer for layer in _layers(model) if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert conv_or_dense and {layer.compute_dtype for layer in conv_or_dense} == {"bfloat16"}
    assert {v.dtype for v in model.variables} == {tf.float32}  # weights, optimizer-independent state, EMA

    digits = sample_digits(320)
    images = digits * 2.0 - 1.0 if entry.pixel_range == "symmetric" else digits
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(32)
    generator = getattr(model, "generator", None)
    codings = tf.random.stateless_normal([256, config.coding_size], seed=[1, 0]) if generator else None
    untrained = generator(codings, training=False).numpy().astype(np.float32) if generator else None
    history = entry.family.fit(model, config, dataset, dataset, None, 0)
    losses = history.get("loss") or history["g_loss"]
    assert np.all(np.isfinite(losses))
    if "loss" in history and len(losses) > 1:
        assert losses[-1] < losses[0], losses  # it learns in bfloat16
    if generator:  # a GAN learns in bfloat16 too: its samples' pixel statistics move toward the data's
        trained = generator(codings, training=False).numpy().astype(np.float32)
        before, after = pixel_gap(untrained, images), pixel_gap(trained, images)
        assert after < 0.3 * before, (before, after)  # measured 0.09 in bfloat16 and in float32

    export.export_model(entry.family, model, (28, 28, 1), str(tmp_path), entry.pixel_range)
    loaded = tf.saved_model.load(str(tmp_path))
    for signature in loaded.signatures.values():
        floats = [spec.dtype for spec in signature.structured_input_signature[1].values() if spec.dtype.is_floating]
        outputs = [t.dtype for t in signature.structured_outputs.values() if t.dtype.is_floating]
        assert set(floats) <= {tf.float32} and set(outputs) == {tf.float32}


def _layers(model):
    for layer in model.submodules:
        if isinstance(layer, keras.layers.Layer):
            yield layer


def test_float16_scales_the_loss_and_trains():
    config = registry.make_config("stacked_ae", {"precision": "mixed_float16", "epochs": 2, "batch_size": 32})
    model = registry.get_model("stacked_ae").build(config, (28, 28, 1))
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    dataset = tf.data.Dataset.from_tensor_slices(sample_digits(320)).batch(32)
    history = registry.get_model("stacked_ae").family.fit(model, config, dataset, None, None, 0)
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]


def test_auto_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(common, "bfloat16_is_native", lambda: True)
    assert common.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(common, "bfloat16_is_native", lambda: False)
    assert common.resolve_precision("auto") == "float32"
    assert common.resolve_precision("mixed_float16") == "mixed_float16"


def test_an_unknown_precision_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"precision='fp8': must be one of \('float32', 'mixed_bfloat16'"):
        registry.make_config("ddpm", {"precision": "fp8"})
