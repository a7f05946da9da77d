"""trainers.gans: validated config; a few hundred steps on real digits move samples toward the data; divergence."""
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import sample_digits
from trainers import gans
from trainers.common import TrainingDiverged
from trainers.gans import GANConfig


@pytest.fixture(scope="module")
def digits():
    """Real digits scaled to [-1, 1], as the Transform does for GANs."""
    return sample_digits(2000) * 2.0 - 1.0


def pixel_gap(generated: np.ndarray, real: np.ndarray) -> float:
    """How far generated pixel statistics are from the data's: L1 between 20-bin pixel histograms plus the
    mean absolute difference of the mean images."""
    bins = np.linspace(-1, 1, 21)
    hist = lambda x: np.histogram(np.clip(x, -1, 1), bins=bins)[0] / x.size
    return float(np.abs(hist(generated) - hist(real)).sum() + np.abs(generated.mean(0) - real.mean(0)).mean())


@pytest.mark.parametrize("overrides, message", [
    ({"architecture": "stylegan"}, "architecture='stylegan'"),
    ({"loss": "hinge"}, "loss='hinge'"),
    ({"label_smoothing": 0.7}, "label_smoothing=0.7"),
    ({"critic_steps": 0}, "critic_steps=0"),
    ({"loss": "wgan_gp", "label_smoothing": 0.1}, "label_smoothing applies to loss='bce' only"),
    ({"batch_size": 0}, "batch_size=0"),
])
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        GANConfig(**overrides)


@pytest.mark.parametrize("overrides", [
    # The notebook's two-phase dense GAN, 6 x 62 = 372 steps; smoothing and a slower D keep D from winning early.
    dict(architecture="dense", epochs=6, label_smoothing=0.1, discriminator_learning_rate=5e-4),
    dict(architecture="dcgan", coding_size=100, optimizer="adam", learning_rate=2e-4, beta_1=0.5, epochs=4,
         label_smoothing=0.1),
    dict(architecture="dcgan", coding_size=100, loss="wgan_gp", critic_steps=2, optimizer="adam",
         learning_rate=2e-4, beta_1=0.5, epochs=2, spectral_norm=True),
], ids=["dense", "dcgan-smoothed", "wgan-gp-spectral"])
def test_a_few_hundred_steps_move_samples_toward_the_data(overrides, digits):
    config = GANConfig(batch_size=32, **overrides)
    dataset = tf.data.Dataset.from_tensor_slices(digits).shuffle(2000, seed=0).batch(32, drop_remainder=True)
    untrained = gans.build_gan(config, (28, 28, 1)).generate(256, seed=1).numpy()
    model, history = gans.train(config, (28, 28, 1), dataset)
    generated = model.generate(256, seed=1).numpy()  # by the generator's weight average (the default)
    assert generated.shape == (256, 28, 28, 1) and generated.min() >= -1 and generated.max() <= 1
    np.testing.assert_array_equal(generated, model.generate(256, seed=1).numpy())
    codings = tf.random.stateless_normal([256, model.coding_size], seed=[1, 0])
    raw = model.generator(codings, training=False).numpy()
    before, after, after_raw = (pixel_gap(x, digits) for x in (untrained, generated, raw))
    assert after_raw < 0.5 * before, (before, after_raw)
    # The average lags the raw weights this early (its warm-up decay at step 372 is 0.976: a window of ~40
    # steps), but it too has moved toward the data (measured: 0.50 and 0.23 of the untrained gap).
    assert after < 0.6 * before, (before, after)
    assert set(history) == {"d_loss", "g_loss"} and len(history["d_loss"]) == config.epochs


def test_a_nan_loss_stops_training_with_its_step_number(digits):
    poisoned = digits[:160].copy()
    poisoned[64:96] = np.nan  # the third batch of 32
    dataset = tf.data.Dataset.from_tensor_slices(poisoned).batch(32)
    with pytest.raises(TrainingDiverged, match="at step 3: step_d_loss is nan") as raised:
        gans.train(GANConfig(epochs=2), (28, 28, 1), dataset)
    assert raised.value.step == 3


def test_a_discriminator_that_wins_outright_stops_training(digits):
    # A generator that cannot learn (learning rate ~0) against a fast discriminator: D soon wins every step.
    config = GANConfig(learning_rate=1e-12, discriminator_learning_rate=1e-2, max_discriminator_wins=5, epochs=20)
    dataset = tf.data.Dataset.from_tensor_slices(digits[:640]).batch(32)
    with pytest.raises(TrainingDiverged, match="discriminator won outright for 5 consecutive steps") as raised:
        gans.train(config, (28, 28, 1), dataset)
    assert 5 <= raised.value.step < 20 * 20
