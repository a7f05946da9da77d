"""trainers.stylegan: the mapping network and the noise inputs change the output as they should, style mixing's
ends are the pure images, truncation, w_avg, the SavedModel's generate(n, seed, truncation) and mix_styles through
the server's request parsing, a colour (32x32x3) build."""
import numpy as np
import pytest
import tensorflow as tf

from trainers import export
from serving.model import RequestError, ServedModel
from tests.conftest import sample_digits
from trainers import registry, stylegan
from trainers.stylegan import StyleGANConfig

SHAPE = (28, 28, 1)
SMALL = {"synthesis_filters": (32, 32, 16), "conv_filters": (16, 32), "mapping_layers": 2, "style_size": 32,
         "coding_size": 32, "batch_size": 32}


@pytest.fixture(scope="module")
def trained():
    """A small StyleGAN trained for 4 epochs (250 steps) on 2,000 real digits."""
    entry = registry.get_model("stylegan")
    config = registry.make_config("stylegan", {**SMALL, "epochs": 4})
    model = entry.build(config, SHAPE)
    digits = sample_digits(2000) * 2.0 - 1.0
    entry.fit(model, config, tf.data.Dataset.from_tensor_slices(digits).shuffle(2000, seed=0).batch(32), None, [], 0)
    return entry, config, model


@pytest.mark.parametrize("overrides, message", [
    ({"num_classes": 10}, "num_classes=10: stylegan is unconditional"),
    ({"truncation": 1.5}, r"truncation=1.5: psi must be in \[0, 1\]"),
    ({"style_mixing": 2.0}, r"style_mixing=2.0: a probability in \[0, 1\]"),
    ({"architecture": "dense"}, "architecture='dense': a StyleGAN's discriminator"),
    ({"synthesis_filters": ()}, "synthesis_filters"),
    ({"w_average_decay": 1.0}, "w_average_decay=1.0"),
])
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        StyleGANConfig(**overrides)


def test_the_mapping_network_sets_the_image_and_the_noise_only_its_details(trained):
    _, config, model = trained
    generator = model.sampling_generator
    z = tf.random.stateless_normal([16, config.coding_size], seed=[3, 0])
    other_z = tf.random.stateless_normal([16, config.coding_size], seed=[4, 0])
    draw = lambda z, noise: model.draw(z, z, model.style_layers, 1.0, tf.constant([noise, 1]), generator).numpy()
    base = draw(z, 0)
    noise_change = np.mean(np.abs(draw(z, 1) - base))
    style_change = np.mean(np.abs(draw(other_z, 0) - base))
    # Trained noise scales are small but not zero: another noise image moves pixels a little, another w a lot.
    assert 0 < noise_change < 0.25 * style_change, (noise_change, style_change)
    # The noise inputs' learned scales moved from their initial 0; w_avg from its initial 0.
    scales = [layer.scale.numpy() for layer in generator.layers if isinstance(layer, stylegan.NoiseInput)]
    assert len(scales) == model.style_layers - 1 and all(np.any(s != 0) for s in scales)
    w_average = generator.get_layer("truncated_styles").w_average.numpy()
    assert np.all(np.isfinite(w_average)) and np.linalg.norm(w_average) > 0


def test_style_mixing_ends_are_the_pure_images_and_its_middle_is_neither(trained):
    _, _, model = trained
    layers = model.style_layers
    pure_a, pure_b = model.generate(1, seed=11).numpy(), model.generate(1, seed=12).numpy()
    np.testing.assert_allclose(model.mix_styles(11, 12, 0).numpy(), pure_b, atol=1e-6)
    np.testing.assert_allclose(model.mix_styles(11, 12, layers).numpy(), pure_a, atol=1e-6)
    middle = model.mix_styles(11, 12, layers // 2).numpy()
    assert np.mean(np.abs(middle - pure_a)) > 1e-3 and np.mean(np.abs(middle - pure_b)) > 1e-3
    with pytest.raises(ValueError, match=f"crossover={layers + 1}: must be in"):
        model.mix_styles(11, 12, layers + 1)


def test_truncation_trades_variety_for_the_average_image(trained):
    _, _, model = trained
    spread = lambda psi: float(np.mean(np.std(model.generate(64, seed=2, truncation=psi).numpy(), axis=0)))
    full, half, none = spread(1.0), spread(0.5), spread(0.0)
    assert full > half > none, (full, half, none)  # at psi 0 only the noise images differ
    np.testing.assert_array_equal(model.generate(8, seed=2).numpy(), model.generate(8, seed=2).numpy())
    with pytest.raises(ValueError, match="labels: this stylegan is unconditional"):
        model.generate(2, labels=[1])


def test_the_savedmodel_and_the_server_take_truncation(trained, tmp_path):
    entry, _, model = trained
    export.export_model(entry.family, model, SHAPE, str(tmp_path), entry.pixel_range)
    served = ServedModel(str(tmp_path), "digits", "1")
    signature, inputs, _ = served.parse_generate({"n": 3, "seed": 4, "truncation": 0.5})
    assert signature == "generate" and inputs["truncation"] == np.float32(0.5)
    np.testing.assert_allclose(served.run(signature, inputs)["images"],
                               (model.generate(3, seed=4, truncation=0.5).numpy() + 1) / 2, atol=1e-5)
    _, inputs, _ = served.parse_generate({"n": 1})  # the model's default psi (1)
    assert inputs["truncation"] == np.float32(1.0)
    mixed = served.signatures["mix_styles"](seed_a=tf.constant(1), seed_b=tf.constant(2),
                                            crossover=tf.constant(3))["images"].numpy()
    np.testing.assert_allclose(mixed, (model.mix_styles(1, 2, 3).numpy() + 1) / 2, atol=1e-5)
    for bad in (1.5, -0.1, "half", True):
        with pytest.raises(RequestError, match=r"truncation: expected psi in \[0, 1\]"):
            served.parse_generate({"n": 1, "truncation": bad})


def test_colour_images_of_32_pixels_build_and_train(tmp_path):
    config = registry.make_config("stylegan", {**SMALL, "epochs": 1})
    model = registry.get_model("stylegan").build(config, (32, 32, 3))
    colour = np.random.default_rng(0).uniform(-1, 1, (64, 32, 32, 3)).astype(np.float32)
    history = stylegan.fit(model, config, tf.data.Dataset.from_tensor_slices(colour).batch(32))
    assert np.isfinite(history["d_loss"]).all()
    assert model.generate(2, seed=0).shape == (2, 32, 32, 3)
    assert model.mix_styles(0, 1, 2).shape == (1, 32, 32, 3)


def test_training_does_not_collapse_and_the_discriminator_does_not_win_outright(trained):
    # The failure this guards against: D winning within an epoch and G stuck on one (black) image. After 250 steps
    # the samples draw strokes on a dark background (about the data's share of bright pixels), differ from one
    # another, and D still scores fakes well above "certainly fake".
    _, _, model = trained
    samples = model.generate(64, seed=5).numpy()
    real = sample_digits(2000) * 2.0 - 1.0
    bright = lambda x: float(np.mean(x > 0))
    spread = lambda x: float(np.mean(np.std(x, axis=0)))
    assert 0.3 * bright(real) < bright(samples) < 3 * bright(real)
    assert spread(samples) > 0.25 * spread(real)
    fake_scores = tf.sigmoid(model.discriminator(samples, training=False)).numpy()
    assert np.mean(fake_scores) > 0.05
