"""components.trainer.figures: the pictures each family writes, with the real inputs where they belong."""
import os

import numpy as np
import pytest
import tensorflow as tf

from evaluation import figures
from tests.conftest import sample_digits
from tests.test_export import build


def test_image_grid_places_images_in_rows_with_gaps():
    images = np.stack([np.full((2, 3, 1), v, np.float32) for v in (0.0, 0.5, 1.0)])
    grid = figures.image_grid(images, columns=2)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1) and grid.dtype == np.uint8
    assert (grid[1:3, 1:4] == 0).all() and (grid[1:3, 5:8] == 128).all() and (grid[4:6, 1:4] == 255).all()


@pytest.mark.parametrize("name, expected", [
    ("stacked_ae", {"loss.png", "reconstructions.png"}),
    ("conv_vae", {"loss.png", "reconstructions.png", "samples.png", "interpolation.png"}),
    ("dcgan", {"loss.png", "samples.png"}),
    ("ddpm", {"loss.png", "samples.png"}),
])
def test_each_family_writes_its_pictures(name, expected, tmp_path):
    entry, model = build(name)
    inputs = sample_digits(12)
    if entry.pixel_range == "symmetric":
        inputs = inputs * 2.0 - 1.0
    history = {"loss": [3.0, 2.0, 1.5], "val_loss": [3.1, 2.2, 1.7]}
    paths = figures.save_model_figures(entry.family, model, inputs, entry.pixel_range, history, str(tmp_path))
    assert {os.path.basename(p) for p in paths} == expected == set(os.listdir(tmp_path))
    for path in paths:
        assert tf.io.decode_png(tf.io.read_file(path)).shape[0] > 20
    if "reconstructions.png" in expected:
        grid = tf.io.decode_png(tf.io.read_file(str(tmp_path / "reconstructions.png"))).numpy()
        first_input = grid[2:2 + 56:2, 2:2 + 56:2, 0]  # zoom 2, 1-pixel gap before it
        np.testing.assert_allclose(first_input / 255.0, inputs[0, :, :, 0], atol=1 / 255)
