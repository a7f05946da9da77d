"""trainers.autoencoders: validated config, training lowers the reconstruction loss, per-example scores."""
import numpy as np
import pytest
import tensorflow as tf

from trainers import autoencoders, registry


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": -1}, "epochs=-1"),
    ({"activation": "swishy"}, "activation='swishy'"),
    ({"variant": "quantum"}, "variant='quantum'"),
    ({"hidden_units": ()}, "hidden_units"),
    ({"learning_rate": 0.0}, "learning_rate"),
])
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        autoencoders.AutoencoderConfig(**overrides)


def test_codings_larger_than_the_input_are_rejected():
    with pytest.raises(ValueError, match="coding size 100 is not smaller than the input"):
        autoencoders.build_autoencoder(autoencoders.AutoencoderConfig(hidden_units=(100,)), (8, 8, 1))


def test_registry_rejects_unknown_settings():
    with pytest.raises(ValueError, match="no setting"):
        registry.make_config("stacked_ae", {"dropout": 0.5})


def test_stacked_autoencoder_learns_real_digits(sample_images):
    config = autoencoders.AutoencoderConfig(epochs=3, batch_size=32)
    model = autoencoders.build_autoencoder(config, (28, 28, 1))
    history = model.fit(sample_images, sample_images, epochs=config.epochs, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.75 * losses[0]
    scores = model.anomaly_score(tf.constant(sample_images[:5])).numpy()
    noise = model.anomaly_score(tf.random.uniform([5, 28, 28, 1], seed=1)).numpy()
    assert scores.shape == (5,) and scores.max() < noise.min()


@pytest.fixture(scope="module")
def sample_images():
    from components.image_example_gen import sources
    from tests.conftest import SAMPLE_DIR
    info = sources.probe(sources.parse_source(f"idx:{SAMPLE_DIR}"))
    images = np.stack([r[0] for r in sources.read_split(info, "train")][:600])
    return images.astype(np.float32) / 255.0
