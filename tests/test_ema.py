"""trainers.ema: the average is the closed-form EMA of the weights training went through (with its warm-up), a
restored run continues the identical average, the families sample and export from it, bad decays are refused."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainers import export
from tests.conftest import sample_digits
from trainers import job as training, registry
from trainers.diffusion import DiffusionConfig
from trainers.ema import ExponentialMovingAverage
from trainers.gans import GANConfig
from trainers.vae import VAEConfig


class Regression(keras.Model):
    """A deterministic toy: full-batch SGD on a fixed regression, the EMA updated after each step."""

    def __init__(self, decay, **kwargs):
        super().__init__(**kwargs)
        self.network = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                                         keras.layers.Dense(2)])
        self.ema = ExponentialMovingAverage(self.network, decay)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self.network(x, training=True) - y))
        variables = self.network.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.ema.update(self.network, self.optimizer.iterations)
        return {"loss": loss}


def regression(decay=0.9, seed=3):
    keras.utils.set_random_seed(seed)
    model = Regression(decay)
    model.compile(keras.optimizers.SGD(0.2))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    return model, (x, np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1).astype(np.float32))


class WeightRecorder(keras.callbacks.Callback):
    def __init__(self, network):
        super().__init__()
        self.network, self.seen = network, []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append([w.numpy().copy() for w in self.network.weights])


def test_the_average_is_the_closed_form_ema_of_the_weights_training_went_through():
    model, (x, y) = regression(decay=0.9)
    start = [w.numpy().copy() for w in model.network.weights]
    recorder = WeightRecorder(model.network)
    model.fit(x, y, batch_size=32, epochs=25, verbose=0, shuffle=False, callbacks=[recorder])
    expected = start
    for step, weights in enumerate(recorder.seen, 1):
        decay = min(0.9, (1 + step) / (10 + step))  # the warm-up: early steps move the average more
        expected = [decay * a + (1 - decay) * w for a, w in zip(expected, weights)]
    averaged = [w.numpy() for w in model.ema.network.weights]
    for got, want in zip(averaged, expected):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # An average, not a copy: it lags the weights the optimizer reached.
    assert max(np.abs(a - w).max() for a, w in zip(averaged, recorder.seen[-1])) > 1e-3


def test_a_run_restored_from_a_checkpoint_continues_the_identical_average(tmp_path):
    straight, (x, y) = regression()
    straight.fit(x, y, batch_size=32, epochs=20, verbose=0, shuffle=False)

    first, _ = regression()
    first.fit(x, y, batch_size=32, epochs=8, verbose=0, shuffle=False)
    first.save_weights(str(tmp_path / "weights"))
    resumed, _ = regression(seed=99)  # other initial weights: everything must come from the checkpoint
    resumed.fit(x[:1], y[:1], epochs=0, verbose=0)  # builds the optimizer's slots, as a resumed Trainer does
    resumed.load_weights(str(tmp_path / "weights"))
    assert int(resumed.optimizer.iterations) == 8
    resumed.fit(x, y, batch_size=32, epochs=12, verbose=0, shuffle=False)
    for got, want in zip(resumed.ema.network.weights, straight.ema.network.weights):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)


def _tiny_dcgan():
    config = registry.make_config("dcgan", {"conv_filters": (16, 32), "coding_size": 8, "ema_decay": 0.9,
                                            "batch_size": 32})
    model = registry.get_model("dcgan").build(config, (28, 28, 1))
    images = tf.data.Dataset.from_tensor_slices(sample_digits(128) * 2.0 - 1.0).batch(32)
    model.fit(images, epochs=2, verbose=0)
    return model


def test_saved_state_restores_a_gans_average_and_its_step(tmp_path):
    model = _tiny_dcgan()
    raw = model.generator.get_weights()
    averaged = model.ema.network.get_weights()
    assert any(np.abs(a - r).max() > 1e-4 for a, r in zip(averaged, raw))
    job = training.TrainingJob("dcgan", {"conv_filters": [16, 32], "coding_size": 8, "ema_decay": 0.9},
                               (28, 28, 1), (), (), {})
    training.save_state(model, str(tmp_path), job, epoch=2, history={})
    restored, _ = training.restore(str(tmp_path))
    for got, want in zip(restored.ema.network.get_weights(), averaged):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(restored.generator.get_weights(), raw):  # the raw weights stay, for resuming
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(restored.generate(4, seed=1), model.generate(4, seed=1), atol=1e-6)


def test_the_exported_generator_samples_from_the_average_not_the_raw_weights(tmp_path):
    model = _tiny_dcgan()
    export.export_model("gan", model, (28, 28, 1), str(tmp_path), "symmetric")
    loaded = tf.saved_model.load(str(tmp_path))
    codings = tf.random.stateless_normal([4, 8], seed=[1, 2])
    served = loaded.signatures["generate_from_codings"](codings=codings)["images"].numpy()
    from_average = (model.ema.network(codings, training=False).numpy() + 1) / 2
    from_raw = (model.generator(codings, training=False).numpy() + 1) / 2
    np.testing.assert_allclose(served, from_average, atol=1e-5)
    assert np.abs(served - from_raw).max() > 1e-3


@pytest.mark.parametrize("config_class", [DiffusionConfig, GANConfig, VAEConfig])
@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_impossible_decays_are_refused_naming_the_field(config_class, decay):
    with pytest.raises(ValueError, match=rf"ema_decay={decay}: must be in \[0, 1\)"):
        config_class(ema_decay=decay)


def test_generating_families_average_by_default_and_zero_turns_it_off():
    assert DiffusionConfig().ema_decay == GANConfig().ema_decay == 0.999 and VAEConfig().ema_decay == 0
    off = registry.get_model("dcgan").build(registry.make_config("dcgan", {"ema_decay": 0.0}), (28, 28, 1))
    assert off.ema is None and off.sampling_generator is off.generator
