"""serving.export: each family's SavedModel loads with plain TensorFlow and its signatures match the model."""
import numpy as np
import pytest
import tensorflow as tf

from serving import export
from tests.conftest import sample_digits
from trainers import registry

TINY = {
    "stacked_ae": {},
    "conv_vae": {},
    "dcgan": {},
    "ddpm": {"timesteps": 20, "sample_steps": 4, "base_channels": 16, "channel_multipliers": (1, 2)},
}


def build(name):
    entry = registry.get_model(name)
    return entry, entry.build(registry.make_config(name, TINY[name]), (28, 28, 1))


@pytest.mark.parametrize("name", sorted(TINY))
def test_signatures_match_the_in_memory_model(name, tmp_path):
    entry, model = build(name)
    export.export_model(entry.family, model, (28, 28, 1), str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    images = tf.constant(sample_digits(4) * (2.0 if entry.pixel_range == "symmetric" else 1.0)
                         - (1.0 if entry.pixel_range == "symmetric" else 0.0))
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    if entry.family in ("autoencoder", "vae"):
        codings = loaded.signatures["encode"](images=images)["codings"]
        close(loaded.signatures["reconstruct"](images=images)["reconstructions"], model(images))
        close(loaded.signatures["serving_default"](images=images)["reconstructions"], model(images))
        decoded = loaded.signatures["decode"](codings=codings)["images"]
        close(decoded, model(images))
        scores = loaded.signatures["anomaly_score"](images=images)["scores"]
        close(scores, tf.reduce_mean(tf.square(model(images) - images), axis=[1, 2, 3]))
    if entry.family == "vae":
        close(loaded.signatures["sample"](n=tf.constant(3), seed=tf.constant(7))["images"], model.sample(3, seed=7))
    if entry.family == "gan":
        generated = loaded.signatures["generate"](n=tf.constant(3), seed=tf.constant(7))["images"]
        close(generated, (model.generate(3, seed=7) + 1) / 2)
        codings = tf.random.stateless_normal([2, model.coding_size], seed=[1, 2])
        close(loaded.signatures["generate_from_codings"](codings=codings)["images"], (model(codings) + 1) / 2)
    if entry.family == "diffusion":
        generated = loaded.signatures["generate"](n=tf.constant(2), seed=tf.constant(7), steps=tf.constant(3))
        assert generated["images"].shape == (2, 28, 28, 1)
        close(generated["images"], (model.generate(2, seed=7, steps=3) + 1) / 2)
