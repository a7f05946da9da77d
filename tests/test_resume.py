"""fit(..., initial_epoch): a run restored from saved weights continues where it stopped, not from zero."""
import pytest
import tensorflow as tf

from tests.conftest import sample_digits
from trainers import registry


@pytest.mark.parametrize("name", ["stacked_ae", "vae"])
def test_a_restored_model_resumes_at_its_epoch(name, tmp_path):
    entry = registry.get_model(name)
    config = registry.make_config(name, {"epochs": 4, "batch_size": 32})
    data = tf.data.Dataset.from_tensor_slices(sample_digits(640)).batch(32)
    first = entry.build(config, (28, 28, 1))
    early = registry.make_config(name, {"epochs": 2, "batch_size": 32})
    first_history = entry.fit(first, early, data)
    first.save_weights(str(tmp_path / "weights"))  # the TF format keeps the optimizer's state too

    resumed = entry.build(config, (28, 28, 1))
    resumed.load_weights(str(tmp_path / "weights"))
    history = entry.fit(resumed, config, data, initial_epoch=2)
    assert len(history["loss"]) == 2  # epochs 3 and 4 only
    # It continued from the trained weights: its first epoch is already better than the run's first epoch.
    assert history["loss"][0] < first_history["loss"][0]
    assert history["loss"][-1] <= first_history["loss"][-1] * 1.05
