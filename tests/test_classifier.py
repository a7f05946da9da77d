"""trainers.classifier: a reused encoder is frozen, then fine-tuned; the pretrained model is never changed."""
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import SAMPLE_DIR, sample_digits
from trainers import autoencoders, classifier, gans, registry, vae
from trainers.classifier import ClassifierConfig


def sample_labels(n):
    from components.image_example_gen import sources
    info = sources.probe(sources.parse_source(f"idx:{SAMPLE_DIR}"))
    return np.array([record[1] for _, record in zip(range(n), sources.read_split(info, "train"))])


@pytest.fixture(scope="module")
def pretrained():
    """A conv autoencoder pretrained on 1,000 unlabelled digits, and 200 labelled ones (20 per class)."""
    images = sample_digits(1000)
    labels = sample_labels(1000)
    config = registry.make_config("conv_ae", {"epochs": 2})
    model, _ = autoencoders.train(config, (28, 28, 1), tf.data.Dataset.from_tensor_slices(images).batch(32))
    few = np.concatenate([np.flatnonzero(labels == k)[:20] for k in range(10)])
    labelled = tf.data.Dataset.from_tensor_slices((images[few], labels[few])).shuffle(200, seed=0).batch(32)
    return model, labelled


@pytest.mark.parametrize("overrides, message", [
    ({"num_classes": 1}, "num_classes=1"),
    ({"unfrozen_lr_factor": 2.0}, "unfrozen_lr_factor=2.0"),
    ({"unfrozen_epochs": -1}, "unfrozen_epochs=-1"),
])
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        ClassifierConfig(**overrides)


def test_encoder_is_frozen_then_fine_tuned_and_the_pretrained_model_is_untouched(pretrained):
    autoencoder, labelled = pretrained
    original = [w.copy() for w in autoencoder.encoder.get_weights()]
    config = ClassifierConfig(epochs=3, unfrozen_epochs=3, learning_rate=3e-3)
    model = classifier.build_classifier(config, classifier.copy_encoder(classifier.reusable_encoder(autoencoder)))
    head_before = [w.copy() for w in model.layers[-1].get_weights()]

    frozen = classifier.train_frozen(config, model, labelled)
    for before, after in zip(original, model.layers[0].get_weights()):
        np.testing.assert_array_equal(before, after)
    assert not np.allclose(head_before[0], model.layers[-1].get_weights()[0])
    assert frozen["loss"][-1] < frozen["loss"][0]

    unfrozen = classifier.train_unfrozen(config, model, labelled)
    changed = [not np.allclose(b, a) for b, a in zip(original, model.layers[0].get_weights())]
    assert all(changed), changed
    assert unfrozen["loss"][-1] < frozen["loss"][0]
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-4)
    for before, after in zip(original, autoencoder.encoder.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_train_runs_both_phases_and_scratch_starts_from_fresh_weights(pretrained):
    autoencoder, labelled = pretrained
    config = ClassifierConfig(epochs=2, unfrozen_epochs=1)
    model, history = classifier.train(config, autoencoder.encoder, labelled, labelled)
    assert len(history["loss"]) == 3 and history["frozen_epochs"] == [2.0] and "val_accuracy" in history
    probabilities = model(sample_digits(4)).numpy()
    assert probabilities.shape == (4, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)

    scratch, scratch_history = classifier.train_from_scratch(config, autoencoder.encoder, labelled)
    assert len(scratch_history["loss"]) == 3
    assert scratch.count_params() == model.count_params()
    assert not np.allclose(scratch.layers[0].get_weights()[0], autoencoder.encoder.get_weights()[0])


def test_a_vae_encoder_is_reusable_and_a_gan_is_not():
    encoder = classifier.reusable_encoder(vae.build_vae(vae.VAEConfig(), (28, 28, 1)))
    assert encoder.output_shape == (None, 10)
    with pytest.raises(ValueError, match="has no reusable encoder"):
        classifier.reusable_encoder(gans.build_gan(gans.GANConfig(), (28, 28, 1)))
