"""Networks sized for the images: each family's size rule (trainers/registry.py) deepens the presets built for
28x28 digits when the images are larger, the user's --set wins, and the sized networks build for 64x64 colour."""
import numpy as np
import pytest

from trainers import registry


def test_the_presets_stay_as_they_are_up_to_32_pixels():
    for name in registry.MODELS:
        if not registry.get_model(name).family.needs_base_model:
            assert registry.sized_for(name, (28, 28, 1), {}) == {} and registry.sized_for(name, (32, 32, 3), {}) == {}


@pytest.mark.parametrize("name, expected", [
    ("dcgan", {"conv_filters": (64, 128, 256)}),  # G starts at 8x8 again, D ends at 8x8
    ("ddpm", {"channel_multipliers": (1, 2, 4, 8)}),  # a full-resolution level; the lowest stays 8x8
    ("stylegan", {"synthesis_filters": (128, 64, 32, 16), "conv_filters": (64, 128, 256)}),
    ("conv_vae", {"conv_filters": (32, 64, 128)}),
    ("stacked_ae", {}),  # dense: its input layer is what grows
])
def test_64_pixel_images_get_one_more_stage(name, expected):
    assert registry.sized_for(name, (64, 64, 3), {}) == expected


def test_what_the_user_sets_is_never_resized():
    assert registry.sized_for("dcgan", (128, 128, 3), {"conv_filters": [32, 64]}) == {}
    assert registry.sized_for("ddpm", (128, 128, 3), {}) == {"channel_multipliers": (1, 1, 2, 4, 8)}
    assert registry.sized_for("gan", (64, 64, 3), {"architecture": "dcgan"}) == {"conv_filters": (64, 128, 256)}


@pytest.mark.parametrize("name", ["dcgan", "ddpm", "stylegan"])
def test_sized_networks_build_for_64x64_colour_and_draw_images_of_that_size(name):
    fast = {"sample_steps": 2} if name == "ddpm" else {}  # a DDPM samples in 2 steps here, not 40
    config = registry.make_config(name, {**registry.sized_for(name, (64, 64, 3), {}), "batch_size": 4, **fast})
    model = registry.get_model(name).build(config, (64, 64, 3))
    images = np.asarray(model.generate(2, seed=0))
    assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()
