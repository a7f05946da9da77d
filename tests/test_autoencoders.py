"""trainers.autoencoders: validated config; each variant learns real digits; PCA, tied weights, sparsity."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.linalg import subspace_angles

from tests.conftest import sample_digits
from trainers import autoencoders, registry
from trainers.autoencoders import AutoencoderConfig


@pytest.fixture(scope="module")
def digits():
    """400 real MNIST digits from the bundled sample, in [0, 1], as a batched dataset and an array."""
    images = sample_digits(400)
    return images, tf.data.Dataset.from_tensor_slices(images).batch(32)


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": -1}, "epochs=-1"),
    ({"activation": "swishy"}, "activation='swishy'"),
    ({"architecture": "quantum"}, "architecture='quantum'"),
    ({"hidden_units": ()}, "hidden_units"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"noise": "dropout", "noise_level": 1.5}, "noise_level"),
    ({"architecture": "conv", "tied_weights": True}, "tied_weights and greedy need architecture='dense'"),
    ({"sparsity": "kl", "sparsity_target": 1.0}, "sparsity_target"),
])
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderConfig(**overrides)


def test_codings_larger_than_the_input_are_rejected():
    with pytest.raises(ValueError, match="coding size 100 is not smaller than the input"):
        autoencoders.build_autoencoder(AutoencoderConfig(hidden_units=(100,)), (8, 8, 1))


def test_registry_rejects_unknown_settings_and_knows_every_variant():
    with pytest.raises(ValueError, match="no setting"):
        registry.make_config("stacked_ae", {"dropout": 0.5})
    for name in registry.MODELS:
        registry.make_config(name, {})


def seed_toy_set(m=200, seed=4):
    """The chapter's 3-D toy set (a noisy curved 2-D sheet), standardised as in the notebook."""
    rng = np.random.RandomState(seed)
    angles = rng.rand(m) * 3 * np.pi / 2 - 0.5
    data = np.empty((m, 3))
    data[:, 0] = np.cos(angles) + np.sin(angles) / 2 + 0.1 * rng.randn(m) / 2
    data[:, 1] = np.sin(angles) * 0.7 + 0.1 * rng.randn(m) / 2
    data[:, 2] = data[:, 0] * 0.1 + data[:, 1] * 0.3 + 0.1 * rng.randn(m)
    return ((data - data.mean(0)) / data.std(0)).astype(np.float32)


def test_linear_autoencoder_finds_the_pca_subspace():
    x = seed_toy_set()
    config = AutoencoderConfig(hidden_units=(2,), activation="linear", output_activation="linear",
                               optimizer="sgd", learning_rate=0.1, epochs=200)
    model, _ = autoencoders.train(config, (3,), tf.data.Dataset.from_tensor_slices(x).batch(32))
    decoder_kernel = model.decoder.layers[0].kernel.numpy()  # (2, 3): rows span the reconstruction plane
    _, _, components = np.linalg.svd(x - x.mean(0), full_matrices=False)
    angles = np.degrees(subspace_angles(decoder_kernel.T, components[:2].T))
    assert angles.max() < 5.0, angles


def test_tied_weights_share_the_encoder_kernels_and_halve_the_parameters():
    untied = autoencoders.build_autoencoder(AutoencoderConfig(), (28, 28, 1))
    tied = autoencoders.build_autoencoder(AutoencoderConfig(tied_weights=True), (28, 28, 1))
    assert 0.45 < tied.count_params() / untied.count_params() < 0.55
    encoder_kernels = {id(l.kernel) for l in tied.encoder.layers if hasattr(l, "kernel")}
    decoder_layers = [l for l in tied.decoder.layers if isinstance(l, autoencoders.DenseTranspose)]
    assert len(decoder_layers) == 2 and {id(l.dense.kernel) for l in decoder_layers} == encoder_kernels
    kernel_vars = [v for v in tied.trainable_variables if "kernel" in v.name]
    assert len(kernel_vars) == 2  # decoder layers own only biases


@pytest.mark.parametrize("model_name", ["stacked_ae", "tied_ae", "conv_ae", "recurrent_ae", "denoising_ae",
                                        "sparse_l1_ae", "linear_ae"])
def test_each_variant_lowers_its_reconstruction_loss_on_real_digits(model_name, digits):
    images, dataset = digits
    config = registry.make_config(model_name, {"epochs": 3})
    model, history = autoencoders.train(config, (28, 28, 1), dataset)
    assert history["loss"][-1] < history["loss"][0]
    reconstructions = model(images[:8], training=False)
    assert reconstructions.shape == (8, 28, 28, 1)
    assert model.encoder(images[:8]).shape == (8, config.code_units)
    scores = model.anomaly_score(tf.constant(images[:8])).numpy()
    assert scores.shape == (8,) and np.all(scores >= 0)


def test_greedy_layerwise_trains_each_layer_then_fine_tunes(digits):
    _, dataset = digits
    config = AutoencoderConfig(greedy=True, epochs=2, finetune_epochs=2)
    model, history = autoencoders.train(config, (28, 28, 1), dataset)
    for key in ("greedy_layer1_loss", "greedy_layer2_loss"):
        assert history[key][-1] < history[key][0]
    assert len(history["loss"]) == 2
    # The stacked model starts fine-tuning from the layer-wise weights: already better than untrained.
    fresh = autoencoders.build_autoencoder(AutoencoderConfig(seed=1), (28, 28, 1))
    batch = next(iter(dataset))
    assert float(tf.reduce_mean(model.anomaly_score(batch))) < float(tf.reduce_mean(fresh.anomaly_score(batch)))


def test_denoising_noise_is_active_only_in_training(digits):
    images, _ = digits
    model = autoencoders.build_autoencoder(registry.make_config("denoising_ae", {}), (28, 28, 1))
    x = tf.constant(images[:4])
    np.testing.assert_allclose(model(x, training=False), model(x, training=False))
    assert not np.allclose(model.encoder(x, training=True), model.encoder(x, training=False))


def test_kl_sparsity_drives_mean_coding_activation_to_the_target(digits):
    images, dataset = digits
    config = AutoencoderConfig(hidden_units=(100, 300), sparsity="kl", sparsity_weight=0.05,
                               sparsity_target=0.1, epochs=15)
    model, _ = autoencoders.train(config, (28, 28, 1), dataset)
    mean_activation = float(tf.reduce_mean(model.encoder(images, training=False)))
    assert abs(mean_activation - 0.1) < 0.03, mean_activation
