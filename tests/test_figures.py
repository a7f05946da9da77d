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


def _kept_figure(monkeypatch):
    """The matplotlib figure a save_* function draws (its texts are what a reader sees)."""
    kept = []
    real_save = figures._save_figure  # pylint: disable=protected-access

    def save(figure, path):
        kept.append([text.get_text() for axis in figure.axes for text in (
            *axis.get_xticklabels(), *axis.get_yticklabels(),
            *(axis.get_legend().get_texts() if axis.get_legend() else ()))])
        return real_save(figure, path)
    monkeypatch.setattr(figures, "_save_figure", save)
    return kept


def test_class_plots_name_the_classes_as_the_source_does(monkeypatch, tmp_path):
    kept = _kept_figure(monkeypatch)
    names = ["airplane", "automobile", "bird"]
    labels = np.array([0, 1, 2, 0, 1, 2, -1])
    figures.save_codings_map(str(tmp_path / "codings.png"), np.random.default_rng(0).normal(size=(7, 4)), labels,
                             names)
    figures.save_class_histograms(str(tmp_path / "modes.png"), np.array([0.3, 0.3, 0.4]), np.ones(3) / 3, names)
    figures.save_confusion_matrix(str(tmp_path / "confusion.png"), np.eye(3, dtype=int) * 5, names)
    codings, modes, confusion = kept
    assert {"airplane", "automobile", "bird", "(no label)"} <= set(codings)
    assert set(names) <= set(modes) and confusion.count("bird") == 2  # both axes
    assert all(os.path.getsize(tmp_path / f) > 0 for f in ("codings.png", "modes.png", "confusion.png"))
    # Without names (an unlabelled or IDX source with plain ids), the ids.
    figures.save_class_histograms(str(tmp_path / "ids.png"), np.ones(3) / 3, np.ones(3) / 3)
    assert {"0", "1", "2"} <= set(kept[-1])
