"""The class-conditional VAE (`cvae`): the label reaches the decoder, unlabeled images train the "unknown" label's
path (which the image-only signatures use), the SavedModel's sample(n, seed, labels) and its metadata."""
import numpy as np
import pytest
import tensorflow as tf

from trainers import export
from serving.model import RequestError, ServedModel
from tests.conftest import sample_digits, sample_labels
from trainers import registry

SHAPE = (28, 28, 1)
TINY = {"num_classes": 2, "conv_filters": (16, 32), "hidden_units": (64,), "coding_size": 8, "precision": "float32",
        "batch_size": 32}


@pytest.fixture(scope="module")
def zeros_and_ones():
    """A small CVAE trained for 20 epochs on the sample's real 0s (label 0) and 1s (label 1), all labelled."""
    images, labels = sample_digits(2000), sample_labels(2000)
    keep = (labels == 0) | (labels == 1)
    images, labels = images[keep], labels[keep]
    entry = registry.get_model("cvae")
    config = registry.make_config("cvae", {**TINY, "epochs": 20})
    model = entry.build(config, SHAPE)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(600, seed=0).batch(32)
    history = entry.fit(model, config, data, None, [], 0)
    return entry, model, history, images


def test_the_decoder_draws_the_class_it_is_asked_for(zeros_and_ones):
    _, model, history, images = zeros_and_ones
    assert history["neg_elbo"][-1] < 0.3 * history["neg_elbo"][0], history["neg_elbo"]
    # Same codings, other label: a 0 is a ring of ink, a 1 a stroke (real: 0.18 and 0.08 of the pixels > 0.5).
    ink = lambda x: np.mean(x > 0.5)
    zeros, ones = model.sample(64, seed=5, labels=[0]).numpy(), model.sample(64, seed=5, labels=[1]).numpy()
    assert ink(zeros) > 1.4 * ink(ones), (ink(zeros), ink(ones))
    # The image-only path (the unknown label, trained on a p_uncond share) still reconstructs.
    rebuilt = model(images[:64]).numpy()
    assert np.mean((rebuilt - images[:64]) ** 2) < 0.5 * np.mean((images[:64] - images[:64].mean()) ** 2)
    with pytest.raises(ValueError, match=r"labels: must be class ids in \[0, 1\]; got \[2\]"):
        model.sample(2, labels=[2])


def test_unlabeled_images_train_the_unknown_label_only():
    model = registry.get_model("cvae").build(registry.make_config("cvae", {**TINY, "p_uncond": 0.25}), SHAPE)
    labels = tf.constant(np.tile([0, 1, -1, 1], 5000), tf.int32)
    known = model.known_labels(labels, training=True).numpy()
    assert model.unknown_label == 2 and np.all(known[2::4] == 2)
    labelled = np.ones(len(known), bool)
    labelled[2::4] = False
    assert 0.22 < np.mean(known[labelled] == 2) < 0.28  # p_uncond 0.25
    np.testing.assert_array_equal(model.known_labels(labels, training=False).numpy(), np.tile([0, 1, 2, 1], 5000))


def test_the_savedmodel_samples_labels_and_reconstructs_without_them(zeros_and_ones, tmp_path):
    entry, model, _, images = zeros_and_ones
    export.export_model(entry.family, model, SHAPE, str(tmp_path), entry.pixel_range, class_names=("zero", "one"))
    served = ServedModel(str(tmp_path), "digits", "1")
    assert served.metadata["generate_defaults"] == {"labels": [0, 1]} and served.metadata["num_classes"] == 2
    signature, inputs, _ = served.parse_generate({"n": 3, "seed": 4, "labels": ["one"]})
    assert signature == "sample" and inputs["labels"].tolist() == [1]
    np.testing.assert_allclose(served.run(signature, inputs)["images"],
                               model.sample(3, seed=4, labels=[1]).numpy(), atol=1e-5)
    rebuilt = served.signatures["reconstruct"](images=tf.constant(images[:4]))["reconstructions"].numpy()
    np.testing.assert_allclose(rebuilt, model(images[:4]).numpy(), atol=1e-5)
    with pytest.raises(RequestError, match=r"labels: class id 5 is out of range"):
        served.parse_generate({"n": 2, "labels": [5]})


def test_an_unconditional_vae_refuses_labels_and_the_cvae_needs_classes():
    vae = registry.get_model("vae").build(registry.make_config("vae", {}), SHAPE)
    with pytest.raises(ValueError, match="labels: this VAE is unconditional"):
        vae.sample(2, labels=[0])
    with pytest.raises(ValueError, match="num_classes=3: vae is unconditional; the class-conditional models are "
                                         "cvae, dcgan_cond"):
        registry.make_config("vae", {"num_classes": 3})
    with pytest.raises(ValueError, match="num_classes=0: a class-conditional model needs"):
        registry.get_model("cvae").build(registry.make_config("cvae", {}), SHAPE)
