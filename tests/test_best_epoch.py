"""trainers/best_epoch.py: every epoch's samples are scored in the feature network's space, the score reaches the
callbacks after it (Ray's report, the history), and the best epoch's weights are what is restored."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.conftest import sample_digits, write_feature_network
from trainers import best_epoch, registry


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return write_feature_network(str(tmp_path_factory.mktemp("features")))


class Recorder(keras.callbacks.Callback):
    """What the callbacks after the proxy see: each epoch's logs and the weights at its end."""

    def __init__(self):
        super().__init__()
        self.logs, self.weights = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))
        self.weights.append([np.array(w) for w in self.model.get_weights()])


def test_the_best_epoch_by_kid_is_restored_and_every_epoch_is_scored(features):
    entry = registry.get_model("dcgan")
    config = registry.make_config("dcgan", {"epochs": 4, "batch_size": 32, "coding_size": 16, "seed": 3})
    model = entry.build(config, (28, 28, 1))
    data = tf.data.Dataset.from_tensor_slices(sample_digits(128) * 2 - 1).batch(32)
    proxy = best_epoch.SampleQualityProxy(entry.family, (28, 28, 1), "symmetric", f"{features}/saved_model", features,
                                          samples=128, seed=1)
    recorder = Recorder()
    history = entry.fit(model, config, data, None, [proxy, recorder])
    values = history[best_epoch.PROXY_METRIC]
    assert len(values) == 4 and np.all(np.isfinite(values)) and len(history[best_epoch.PROXY_SECONDS]) == 4
    assert [log[best_epoch.PROXY_METRIC] for log in recorder.logs] == values  # later callbacks read it
    assert proxy.values == {epoch: value for epoch, value in enumerate(values, start=1)}
    # The same seeds every epoch: measuring the final weights again gives the last epoch's value.
    assert proxy.measure() == pytest.approx(values[-1])
    # A fifth epoch that ruined the generator scores worse and is not what is kept: the best epoch's weights
    # come back.
    model.set_weights([w * 3.0 + 0.5 if w.ndim > 1 else w for w in model.get_weights()])
    ruined = {}
    proxy.on_epoch_end(4, ruined)
    assert ruined[best_epoch.PROXY_METRIC] > min(values)
    kept = proxy.restore_best(model)
    assert kept == int(np.argmin(values)) + 1
    for restored, recorded in zip(model.get_weights(), recorder.weights[kept - 1]):
        np.testing.assert_array_equal(restored, recorded)
    details = best_epoch.kept_epoch_details(history, kept)
    assert details["kept_epoch"] == kept and details["kept_proxy_kid_x1e3"] == min(values)
    assert details["last_proxy_kid_x1e3"] == values[-1] and details["proxy_seconds_total"] > 0
    assert best_epoch.kept_epoch_details(history, None) == {}


def test_a_diffusion_model_s_proxy_samples_in_half_its_export_s_steps_its_final_score_in_all(features, monkeypatch):
    entry = registry.get_model("ddpm")
    config = registry.make_config("ddpm", {"epochs": 1, "batch_size": 16, "base_channels": 8,
                                           "channel_multipliers": (1, 2), "sample_steps": 12, "seed": 0})
    model = entry.build(config, (28, 28, 1))
    model.generate(1, 0, steps=1)  # built
    proxy = best_epoch.SampleQualityProxy(entry.family, (28, 28, 1), "symmetric", f"{features}/saved_model", features,
                                          samples=16)
    proxy.set_model(model)
    steps = []
    generate = best_epoch.scoring.generate
    monkeypatch.setattr(best_epoch.scoring, "generate",
                        lambda signature, count, seed, batch, inputs: steps.append(inputs["steps"]) or generate(
                            signature, count, seed, batch, inputs))
    assert np.isfinite(proxy.measure())
    final = proxy.full_scores()  # a search's finalists: sampled as the export samples
    assert steps == [10, 12]  # half of 12 is below the floor of 10
    assert final["samples"] == 16 and np.isfinite(final["fid"]) and 0 <= final["precision"] <= 1
    assert [best_epoch.proxy_steps(n) for n in (40, 50, 12, 4)] == [20, 25, 10, 4]
