"""trainers.vae: validated config; the ELBO improves on real digits; KL >= 0; samples and interpolations."""
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import sample_digits
from trainers import vae
from trainers.vae import VAEConfig


@pytest.fixture(scope="module")
def digits():
    images = sample_digits(1000)
    return images, tf.data.Dataset.from_tensor_slices(images).batch(32)


@pytest.mark.parametrize("overrides, message", [
    ({"beta": -1.0}, "beta=-1.0"),
    ({"architecture": "transformer"}, "architecture='transformer'"),
    ({"reconstruction": "l1"}, "reconstruction='l1'"),
    ({"epochs": 0}, "epochs=0"),
    ({"coding_size": 0}, "coding_size=0"),
])
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        VAEConfig(**overrides)


def test_codings_larger_than_the_input_are_rejected():
    with pytest.raises(ValueError, match="coding size 100 is not smaller"):
        vae.build_vae(VAEConfig(coding_size=100), (8, 8, 1))


@pytest.mark.parametrize("architecture", ["dense", "conv"])
def test_elbo_improves_kl_is_non_negative_and_samples_look_like_data(architecture, digits):
    images, dataset = digits
    config = VAEConfig(architecture=architecture, epochs=6, batch_size=32, learning_rate=2e-3)
    untrained = vae.build_vae(config, (28, 28, 1))
    before = untrained.evaluate(dataset, verbose=0, return_dict=True)
    model, history = vae.train(config, (28, 28, 1), dataset, dataset)
    after = model.evaluate(dataset, verbose=0, return_dict=True)
    assert after["neg_elbo"] < 0.6 * before["neg_elbo"], (before, after)
    assert history["neg_elbo"][-1] < history["neg_elbo"][0]
    # KL(q(z|x) || N(0, I)) is non-negative for every image, and the latent code is in use (> 0).
    _, kl = model.per_example_losses(tf.constant(images[:64]), training=False)
    assert np.all(kl.numpy() >= 0) and kl.numpy().mean() > 0.5

    samples = model.sample(16, seed=3).numpy()
    assert samples.shape == (16, 28, 28, 1) and samples.min() >= 0 and samples.max() <= 1
    np.testing.assert_array_equal(samples, model.sample(16, seed=3).numpy())
    assert not np.allclose(samples, model.sample(16, seed=4).numpy())
    # Training moved the samples' brightness toward the data's (MNIST: ~13% ink; untrained decoders give ~50%).
    # The median over samples, because a short-trained 10-d latent space still has holes that decode to blots.
    brightness = lambda x: float(np.median(x.reshape(len(x), -1).mean(axis=1)))
    untrained_gap = abs(brightness(untrained.sample(16, seed=3).numpy()) - images.mean())
    gap = abs(brightness(samples) - images.mean())
    assert gap < 0.5 * untrained_gap, (brightness(samples), images.mean(), untrained_gap)

    strip = model.interpolate(images[0], images[1], steps=7).numpy()
    assert strip.shape == (7, 28, 28, 1)
    np.testing.assert_allclose(strip[0], model(images[:1]).numpy()[0], atol=1e-5)
    np.testing.assert_allclose(strip[-1], model(images[1:2]).numpy()[0], atol=1e-5)


def test_beta_weights_the_kl_term(digits):
    images, _ = digits
    model = vae.build_vae(VAEConfig(beta=4.0), (28, 28, 1))
    x = tf.constant(images[:32])
    tf.random.set_seed(0)
    logs = model.test_step(x)
    assert np.isclose(float(logs["loss"]), float(logs["reconstruction_loss"]) + 4.0 * float(logs["kl_loss"]),
                      rtol=1e-5)
