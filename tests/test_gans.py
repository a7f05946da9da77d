"""trainers.gans: validated config; a few hundred steps on real digits move samples toward the data; divergence."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.conftest import sample_digits
from trainers import gan_layers, gans
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
    ({"minibatch_stddev": 1}, "minibatch_stddev=1: a group size between 2 and batch_size"),
    ({"minibatch_stddev": 64, "batch_size": 32}, "minibatch_stddev=64"),
    ({"feature_matching": -1.0}, "feature_matching=-1.0: must be a weight >= 0"),
    ({"replay_size": 16, "batch_size": 32}, "replay_size=16: must hold at least one batch"),
    ({"replay_size": 64, "replay_fraction": 0.0}, r"replay_fraction=0.0: must be in \(0, 1\]"),
    ({"r1_penalty": -1.0}, "r1_penalty=-1.0: must be a weight >= 0"),
    ({"r1_interval": 0}, "r1_interval=0: must be at least 1"),
    ({"loss": "wgan_gp", "r1_penalty": 1.0}, "r1_penalty applies to loss='bce'"),
])
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        GANConfig(**overrides)


@pytest.mark.parametrize("overrides", [
    # The notebook's two-phase dense GAN, 6 x 62 = 372 steps; smoothing and a slower D keep D from winning early.
    dict(architecture="dense", epochs=6, label_smoothing=0.1, discriminator_learning_rate=5e-4),
    # With chapter 17's three mode-collapse remedies at once (each one's own effect is tested below).
    # The two convolutional runs train for ~40 s each on 2 cores: `make test`, not the fast lane.
    pytest.param(dict(architecture="dcgan", coding_size=100, optimizer="adam", learning_rate=2e-4, beta_1=0.5,
                      epochs=4, label_smoothing=0.1, minibatch_stddev=4, feature_matching=1.0, replay_size=256),
                 marks=pytest.mark.slow),
    pytest.param(dict(architecture="dcgan", coding_size=100, loss="wgan_gp", critic_steps=2, optimizer="adam",
                      learning_rate=2e-4, beta_1=0.5, epochs=2, spectral_norm=True), marks=pytest.mark.slow),
], ids=["dense", "dcgan-smoothed-remedies", "wgan-gp-spectral"])
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
    reported = {"d_loss", "g_loss"} | ({"feature_matching"} if config.feature_matching else set())
    assert set(history) == reported and len(history["d_loss"]) == config.epochs


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


SMALL_DCGAN = dict(architecture="dcgan", coding_size=8, conv_filters=(8, 16), dropout=0.0, batch_size=8)


def test_minibatch_stddev_lets_the_discriminator_see_the_rest_of_the_batch(digits):
    batch = tf.constant(digits[:8])
    other = tf.concat([batch[:1], tf.constant(digits[8:15])], axis=0)  # image 0 with different companions
    for group_size, sees_batch in ((0, False), (4, True)):
        discriminator = gans.build_gan(GANConfig(minibatch_stddev=group_size, **SMALL_DCGAN),
                                       (28, 28, 1)).discriminator
        first = [float(discriminator(x, training=False)[0, 0]) for x in (batch, other)]
        assert (not np.isclose(first[0], first[1], atol=1e-6)) == sees_batch, (group_size, first)
    # The feature itself: ProGAN's groups of strided images; a group of identical images has (almost) none.
    layer = gan_layers.MinibatchStddev(2)
    x = tf.constant(np.stack([np.full((2, 2, 1), v, np.float32) for v in (0, 5, 2, 5)]))
    stddev = layer(x).numpy()[..., -1]  # groups {0, 2} and {1, 3}: stddevs 1 and 0
    assert layer(x).shape == (4, 2, 2, 2)
    np.testing.assert_allclose(stddev[:, 0, 0], [1, 0, 1, 0], atol=1e-3)
    # A batch the group size does not divide is one group.
    np.testing.assert_allclose(gan_layers.MinibatchStddev(2)(x[:3]).numpy()[:, 0, 0, -1], np.std([0, 5, 2]), rtol=1e-3)


def test_feature_matching_adds_the_distance_between_the_feature_means_to_the_generators_loss(digits):
    model = gans.build_gan(GANConfig(feature_matching=2.0, **SMALL_DCGAN), (28, 28, 1))
    real = tf.constant(digits[:8])
    fake = model.generator(tf.random.stateless_normal([8, 8], seed=[0, 0]), training=False)
    gap, scores = model.feature_gap(real, fake)
    features = keras_features(model)
    expected = np.mean((features(real).numpy().mean(0) - features(fake).numpy().mean(0)) ** 2)
    np.testing.assert_allclose(float(gap), expected, rtol=1e-4)
    np.testing.assert_allclose(scores.numpy(), model.discriminator(fake, training=False).numpy()[:, 0], rtol=1e-4)
    # The term enters the generator's step: its loss is larger than the adversarial part by weight x gap.
    dataset = tf.data.Dataset.from_tensor_slices(digits[:16]).batch(8)
    history = gans.fit(model, dataclasses.replace(GANConfig(feature_matching=2.0, **SMALL_DCGAN), epochs=1), dataset)
    assert history["feature_matching"][0] > 0


def test_r1_adds_the_squared_gradient_norm_at_real_images_to_the_discriminators_loss(digits):
    real = tf.constant(digits[:8])
    plain = gans.build_gan(GANConfig(**SMALL_DCGAN), (28, 28, 1))
    penalised = gans.build_gan(GANConfig(r1_penalty=4.0, **SMALL_DCGAN), (28, 28, 1))
    penalised.discriminator.set_weights(plain.discriminator.get_weights())
    with tf.GradientTape() as tape:
        tape.watch(real)
        logits = plain.discriminator(real, training=True)[:, 0]
    expected = np.sum(tape.gradient(logits, real).numpy() ** 2, axis=(1, 2, 3))
    norms = penalised._squared_input_gradient(real).numpy()
    np.testing.assert_allclose(norms, expected, rtol=1e-4)
    assert np.all(norms > 0)
    # In the discriminator's step, on the same weights, fakes and random state: gamma / 2 x that norm more.
    losses = []
    for model in (plain, penalised):
        model.generator.set_weights(plain.generator.get_weights())
        tf.random.set_seed(0)
        losses.append(model._discriminator_step(real, None)[0].numpy())
    np.testing.assert_allclose(losses[1] - losses[0], 2.0 * expected, rtol=1e-3)


def test_lazy_r1_adds_interval_times_the_penalty_on_every_intervalth_discriminator_step_only(digits):
    real = tf.constant(digits[:8])
    plain = gans.build_gan(GANConfig(**SMALL_DCGAN), (28, 28, 1))
    lazy = gans.build_gan(GANConfig(r1_penalty=4.0, r1_interval=3, **SMALL_DCGAN), (28, 28, 1))
    added = []
    for step in range(4):  # the discriminator's step count before each step: 0 (due), 1, 2, 3 (due)
        lazy.set_weights(plain.get_weights())
        lazy.d_optimizer.iterations.assign(step)
        expected = lazy._squared_input_gradient(real).numpy()
        losses = []
        for model in (plain, lazy):
            tf.random.set_seed(0)
            losses.append(model._discriminator_step(real, None)[0].numpy())
        added.append((losses[1] - losses[0]) / (0.5 * 4.0 * 3 * expected))
    np.testing.assert_allclose(added, [[1.0] * 8, [0.0] * 8, [0.0] * 8, [1.0] * 8], atol=1e-3)


def keras_features(model):
    """The discriminator's last features (the input of its final Dense) as a separate model."""
    return keras.Model(model.discriminator.inputs, model.discriminator.layers[-1].input)


def test_experience_replay_mixes_stored_fakes_into_the_discriminators_batches():
    tf.random.set_seed(0)
    buffer = gan_layers.ReplayBuffer(16, (2, 2, 1), fraction=0.25, conditional=True)
    first, labels = tf.fill([8, 2, 2, 1], 1.0), tf.range(8)
    mixed, mixed_labels = buffer.mix(first, labels)  # empty: nothing replayed, the batch stored in slots 0-7
    np.testing.assert_array_equal(mixed.numpy(), first.numpy())
    assert int(buffer.seen) == 8 and np.all(buffer.images.numpy()[:8] == 1) and np.all(buffer.images.numpy()[8:] == 0)
    np.testing.assert_array_equal(buffer.labels.numpy()[:8], np.arange(8))
    second = tf.fill([8, 2, 2, 1], 2.0)
    mixed, mixed_labels = buffer.mix(second, labels + 10)
    # A quarter of the batch (2 of 8) are stored fakes, with the labels they were judged with.
    assert np.sum(mixed.numpy()[:, 0, 0, 0] == 1) == 2 and np.sum(mixed.numpy()[:, 0, 0, 0] == 2) == 6
    assert set(mixed_labels.numpy()[:2]) <= set(range(8)) and np.all(mixed_labels.numpy()[2:] >= 10)
    assert np.all(buffer.images.numpy()[8:] == 2)  # full now
    # Full: new fakes overwrite random slots, so the buffer keeps a mix of old and new.
    for value in (3.0, 4.0):
        buffer.mix(tf.fill([8, 2, 2, 1], value), labels)
    assert int(buffer.seen) == 32 and {3, 4} <= set(np.unique(buffer.images.numpy()))
