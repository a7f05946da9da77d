"""Progressive growing (trainers/progressive.py, `progressive_dcgan`): the schedule, blocks bypassed until faded in,
training reaching full resolution with alpha moving 0 -> 1, a restart in the middle of a fade continuing the same
alpha, the export at full size."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from evaluation import figures
from trainers import export
from serving.model import ServedModel
from tests.conftest import sample_digits
from trainers import gans, progressive, registry

SHAPE = (28, 28, 1)
# 7x7 -> 14x14 -> 28x28; 64 images at 7x7, then per doubling a 128-image fade and 64 stable images.
SMALL = {"conv_filters": [16, 32], "coding_size": 16, "fade_images": 128, "stable_images": 64, "batch_size": 32,
         "epochs": 3, "optimizer": "adam", "learning_rate": 2e-4, "beta_1": 0.5}


def build(**overrides):
    config = registry.make_config("progressive_dcgan", {**SMALL, **overrides})
    return config, registry.get_model("progressive_dcgan").build(config, SHAPE)


def blocks_are_flat(images: np.ndarray, size: int) -> bool:
    """Every size x size block of every image holds one value (an image at 1/size of the resolution)."""
    blocks = images.reshape(len(images), 28 // size, size, 28 // size, size, -1)
    return bool(np.allclose(blocks, blocks[:, :, :1, :, :1], atol=1e-6))


def test_the_schedule_holds_fades_linearly_and_ends_at_full_resolution():
    growth = progressive.Growth(doublings=2, fade_images=100, stable_images=50)
    lod = lambda seen: float(growth.level_of_detail(seen))
    # 50 at 7x7; fade 14x14 in over 100; 50 at 14x14; fade 28x28 in over 100; then full resolution.
    assert [lod(s) for s in (0, 50, 100, 150, 200, 250, 300, 10_000)] == [2.0, 2.0, 1.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert growth.end == 300 and lod(growth.end - 1) > 0


def test_real_images_are_shown_at_the_current_resolution():
    growth = progressive.Growth(doublings=2, fade_images=100, stable_images=50)
    images = tf.constant(sample_digits(8) * 2.0 - 1.0)
    assert blocks_are_flat(growth.blur_reals(images, tf.constant(2.0)).numpy(), 4)
    assert blocks_are_flat(growth.blur_reals(images, tf.constant(1.0)).numpy(), 2)
    np.testing.assert_allclose(growth.blur_reals(images, tf.constant(0.0)).numpy(), images.numpy())
    halfway = growth.blur_reals(images, tf.constant(1.5)).numpy()  # between the 14x14 and 7x7 versions
    expected = 0.5 * (growth.blur_reals(images, tf.constant(1.0)) + growth.blur_reals(images, tf.constant(2.0)))
    np.testing.assert_allclose(halfway, expected.numpy(), atol=1e-6)


def test_blocks_not_yet_faded_in_are_bypassed():
    _, model = build()
    images = tf.constant(sample_digits(4) * 2.0 - 1.0)
    coarse = tf.fill([4], 2.0)
    # At the coarsest level the generator's images are 7x7 blown up, whatever its 14x14 and 28x28 blocks hold.
    generated = model.generate(4, seed=0, level_of_detail=2.0).numpy()
    assert generated.shape == (4, *SHAPE) and blocks_are_flat(generated, 4)
    assert not blocks_are_flat(model.generate(4, seed=0, level_of_detail=0.0).numpy(), 2)
    # The discriminator's full-resolution block does not count at level 2; at level 0 it does.
    block = [layer for layer in model.discriminator.layers
             if isinstance(layer, keras.layers.Conv2D) and layer.strides == (2, 2)][0]
    before = model.discriminator([images, coarse], training=False).numpy()
    fine_before = model.discriminator([images, tf.fill([4], 0.0)], training=False).numpy()
    block.kernel.assign(block.kernel * 3.0 + 0.1)
    np.testing.assert_allclose(model.discriminator([images, coarse], training=False).numpy(), before, atol=1e-5)
    assert not np.allclose(model.discriminator([images, tf.fill([4], 0.0)], training=False).numpy(), fine_before)


@pytest.fixture(scope="module")
def digits():
    return sample_digits(320) * 2.0 - 1.0


@pytest.mark.slow  # trains for more than ~20 s on 2 cores
def test_training_grows_to_full_resolution_and_resumes_in_the_middle_of_a_fade(digits, tmp_path):
    dataset = tf.data.Dataset.from_tensor_slices(digits).batch(32)  # 320 images an epoch
    config, model = build()
    history = gans.fit(model, config, dataset)
    # Epoch means of lod: 7x7 then the first fade; the second fade; full resolution from image 448 on.
    lods = history["level_of_detail"]
    assert lods[0] > lods[1] > lods[2] == 0.0 and lods[0] < 2.0, lods
    assert float(model.growth.level_of_detail()) == 0.0 and int(model.growth.images_seen) == 960
    assert not blocks_are_flat(model.generate(4, seed=0).numpy(), 2)

    # Stopped after 10 steps (320 images: half-way into the second fade), restored, trained on: alpha continues.
    config, interrupted = build(epochs=1)
    gans.fit(interrupted, config, dataset)
    assert float(interrupted.growth.level_of_detail()) == pytest.approx(0.5)
    interrupted.save_weights(str(tmp_path / "weights"))
    config, resumed = build(epochs=2)
    resumed.load_weights(str(tmp_path / "weights"))
    assert float(resumed.growth.level_of_detail()) == pytest.approx(0.5)
    history = gans.fit(resumed, config, dataset.take(2), initial_epoch=1)  # 64 more images: 0.5 -> 0.0
    assert history["level_of_detail"] == [pytest.approx(0.375)]  # the mean of 0.5 and 0.25 over the two steps
    assert float(resumed.growth.level_of_detail()) == 0.0

    # Exported: full-size images at the level reached; growth.png has a row per resolution.
    entry = registry.get_model("progressive_dcgan")
    export.export_model(entry.family, model, SHAPE, str(tmp_path / "export"), entry.pixel_range)
    served = ServedModel(str(tmp_path / "export"), "digits", "1")
    assert served.metadata["level_of_detail"] == 0.0
    images = served.run("generate", {"n": np.int32(3), "seed": np.int32(1)})["images"]
    assert images.shape == (3, *SHAPE)
    np.testing.assert_allclose(images, (model.generate(3, seed=1).numpy() + 1) / 2, atol=1e-5)
    assert figures.progressive_levels(model.growth) == [2.0, 1.0, 0.0]
    assert figures.progressive_levels(interrupted.growth) == [2.0, 1.0, 0.5]
    written = figures.growth_rows(8)(model, None, lambda x: (np.asarray(x) + 1) / 2, str(tmp_path), 0)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["growth.png"]


@pytest.mark.parametrize("overrides, message", [
    ({"architecture": "dense"}, "progressive=true grows the convolutional stack"),
    ({"num_classes": 10}, "progressive=true is for unconditional GANs"),
    ({"fade_images": 0}, "fade_images=0"),
])
def test_impossible_progressive_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        gans.GANConfig(**{"progressive": True, "architecture": "dcgan", **overrides})
