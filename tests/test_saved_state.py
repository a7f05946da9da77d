"""The saved training state (trainers/job.py's save_state / restore) outlives changes of the presets' defaults:
it keeps every config field as it trained, and weights that do not fit the rebuilt model are an error, never a
half-random model."""
import json
import os

import numpy as np
import pytest

from trainers import job as training, registry

# A tiny DDPM; its preset (today: the compact U-Net) is what a later version may change.
OVERRIDES = {"timesteps": 20, "sample_steps": 2, "base_channels": 8, "channel_multipliers": [1, 2],
             "precision": "float32"}


def saved_ddpm(directory):
    job = training.TrainingJob("ddpm", OVERRIDES, (28, 28, 1), (), (), {})
    model = training.build_model(job, job.make_config())
    training.save_state(model, directory, job, epoch=1, history={})
    return model


def preset_changed(monkeypatch):
    """The ddpm preset as a later version might define it: another architecture."""
    entry = registry.get_model("ddpm")
    monkeypatch.setitem(registry.MODELS, "ddpm", registry.ModelEntry(entry.family, {"architecture": "unet"}))


def test_a_state_restores_the_model_it_saved_after_the_preset_changed(tmp_path, monkeypatch):
    saved = saved_ddpm(str(tmp_path))
    preset_changed(monkeypatch)
    assert registry.make_config("ddpm", OVERRIDES).architecture == "unet"
    restored, state = training.restore(str(tmp_path))
    assert state["full_config"]["architecture"] == "compact"
    assert [w.shape for w in restored.weights] == [w.shape for w in saved.weights]
    for got, want in zip(restored.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(restored.generate(2, seed=3), saved.generate(2, seed=3), atol=1e-6)


def test_weights_that_do_not_fit_the_rebuilt_model_are_an_error_naming_the_directory(tmp_path, monkeypatch):
    saved_ddpm(str(tmp_path))
    path = os.path.join(str(tmp_path), training.STATE_FILE)
    with open(path) as f:
        state = json.load(f)
    del state["full_config"]  # as an older version wrote it: only the overrides of its preset
    with open(path, "w") as f:
        json.dump(state, f)
    preset_changed(monkeypatch)
    with pytest.raises(ValueError, match=f"{tmp_path}: the saved weights do not fit .* other defaults"):
        training.restore(str(tmp_path))
