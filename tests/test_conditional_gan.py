"""The class-conditional GANs (`dcgan_cond`, `wgan_gp_cond`): the label embedding reaches the generator, the
projection discriminator ignores missing labels, the SavedModel's generate(n, seed, labels) and the server."""
import numpy as np
import pytest
import tensorflow as tf

from trainers import export
from serving.model import RequestError, ServedModel
from tests.conftest import sample_digits, sample_labels
from trainers import registry
from trainers.gans import ClassProjection

SHAPE = (28, 28, 1)
TINY = {"num_classes": 2, "conv_filters": (16, 32), "coding_size": 16, "label_embedding_dim": 8,
        "precision": "float32", "batch_size": 32}


def zeros_and_ones():
    """The sample's real 0s (label 0) and 1s (label 1) in [-1, 1], every third unlabeled (-1)."""
    images, labels = sample_digits(2000), sample_labels(2000)
    keep = (labels == 0) | (labels == 1)
    images, labels = images[keep] * 2.0 - 1.0, labels[keep]
    return images, np.where(np.arange(len(labels)) % 3 == 0, -1, labels)


@pytest.fixture(scope="module")
def dcgan_cond():
    """A small conditional DCGAN trained for 50 epochs (about 650 steps) on zeros_and_ones."""
    images, labels = zeros_and_ones()
    entry = registry.get_model("dcgan_cond")
    config = registry.make_config("dcgan_cond", {**TINY, "epochs": 50, "optimizer": "adam", "learning_rate": 2e-4,
                                                 "beta_1": 0.5})
    model = entry.build(config, SHAPE)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(600, seed=0).batch(32)
    entry.fit(model, config, data, None, [], 0)
    return entry, model


def test_the_generator_draws_the_class_it_is_asked_for(dcgan_cond):
    _, model = dcgan_cond
    zeros = model.generate(64, seed=5, labels=[0]).numpy()
    ones = model.generate(64, seed=5, labels=[1]).numpy()
    # Same codings, other label: other images. A 0 is a ring of ink, a 1 a stroke (the real ones here: 0.18
    # and 0.08 of the pixels above mid-grey); the generated ones must show it.
    ink = lambda images: np.mean(images > 0.0)
    assert ink(zeros) > 1.5 * ink(ones), (ink(zeros), ink(ones))
    np.testing.assert_array_equal(model.sample_labels(5).numpy(), [0, 1, 0, 1, 0])  # default: classes in turn
    with pytest.raises(ValueError, match=r"labels: must be class ids in \[0, 1\]; got \[2\]"):
        model.generate(2, labels=[2])


def test_the_savedmodel_and_the_server_take_labels_by_id_or_name(dcgan_cond, tmp_path):
    entry, model = dcgan_cond
    export.export_model(entry.family, model, SHAPE, str(tmp_path), entry.pixel_range, class_names=("zero", "one"))
    served = ServedModel(str(tmp_path), "digits", "1")
    assert served.metadata["generate_defaults"] == {"labels": [0, 1]} and served.metadata["num_classes"] == 2
    signature, inputs, _ = served.parse_generate({"n": 3, "seed": 4, "labels": ["one", 0]})
    assert signature == "generate" and inputs["labels"].tolist() == [1, 0]
    np.testing.assert_allclose(served.run(signature, inputs)["images"],
                               (model.generate(3, seed=4, labels=[1, 0]).numpy() + 1) / 2, atol=1e-5)
    # generate_from_codings (MLflow's pyfunc input): image i of class i mod 2.
    codings = tf.random.stateless_normal([4, model.coding_size], seed=[1, 0])
    from_codings = served.signatures["generate_from_codings"](codings=codings)["images"].numpy()
    expected = model.sampling_generator([codings, tf.constant([0, 1, 0, 1])], training=False).numpy()
    np.testing.assert_allclose(from_codings, (expected + 1) / 2, atol=1e-5)
    with pytest.raises(RequestError, match=r"labels: class id 3 is out of range: \[0, 1\] \(zero, one\)"):
        served.parse_generate({"n": 2, "labels": [3]})
    with pytest.raises(RequestError, match="guidance"):  # a GAN has no guidance: an unknown field
        served.parse_generate({"n": 2, "guidance": 2.0})
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels: need at least one, each a class id"):
        served.signatures["generate"](n=tf.constant(2), seed=tf.constant(0), labels=tf.constant([0, 7]))


def test_an_unlabeled_image_gets_no_class_term():
    projection = ClassProjection(3)
    features = tf.random.stateless_normal([4, 5], seed=[2, 0])
    scores = projection([features, tf.constant([-1, 0, 2, -1])]).numpy()[:, 0]
    weights = projection.embeddings.numpy()
    assert scores[0] == 0 and scores[3] == 0
    np.testing.assert_allclose(scores[1:3], [features[1].numpy() @ weights[0], features[2].numpy() @ weights[2]],
                               rtol=1e-5)


def test_wgan_gp_cond_trains_in_mixed_precision_and_every_label_changes_the_critic(tmp_path):
    images, labels = zeros_and_ones()
    entry = registry.get_model("wgan_gp_cond")
    config = registry.make_config("wgan_gp_cond", {**TINY, "precision": "mixed_bfloat16", "epochs": 1,
                                                   "critic_steps": 2})
    model = entry.build(config, SHAPE)
    data = tf.data.Dataset.from_tensor_slices((images[:96], labels[:96])).batch(32)
    history = entry.fit(model, config, data, None, [], 0)
    assert np.isfinite(history["d_loss"][-1]) and np.isfinite(history["g_loss"][-1])
    # The critic's score depends on the label it is given; none (-1) is its unconditional part.
    batch = tf.constant(images[:4], tf.float32)
    scores = {label: tf.cast(model.discriminator([batch, tf.fill([4], label)], training=False), tf.float32).numpy()
              for label in (-1, 0, 1)}
    assert not np.allclose(scores[0], scores[1]) and not np.allclose(scores[-1], scores[0])


def test_conditional_gan_configs_are_checked():
    with pytest.raises(ValueError, match="num_classes=10: dcgan is unconditional; the class-conditional models "
                                         "are cvae, dcgan_cond, ddpm_cond, wgan_gp_cond"):
        registry.make_config("dcgan", {"num_classes": 10})
    with pytest.raises(ValueError, match="num_classes=1: must be 0"):
        registry.make_config("dcgan_cond", {"num_classes": 1})
    with pytest.raises(ValueError, match="num_classes=0: a class-conditional model needs the labelled source's"):
        registry.get_model("dcgan_cond").build(registry.make_config("dcgan_cond", {}), SHAPE)
    unconditional = registry.get_model("dcgan").build(registry.make_config("dcgan", {"conv_filters": (8, 8)}), SHAPE)
    with pytest.raises(ValueError, match="labels: this GAN is unconditional"):
        unconditional.generate(2, labels=[1])


def test_the_trainer_picture_shows_a_row_per_class(dcgan_cond, tmp_path):
    from evaluation import figures
    entry, model = dcgan_cond
    paths = figures.save_model_figures(entry.family, model, np.zeros((2, *SHAPE), np.float32), entry.pixel_range,
                                       {"d_loss": [1.0, 0.5], "g_loss": [1.0, 2.0]}, str(tmp_path))
    assert {p.split("/")[-1] for p in paths} == {"loss.png", "classes.png"}
    classes = tf.io.decode_png(tf.io.read_file(str(tmp_path / "classes.png"))).numpy()
    assert classes.shape[:2] == (2 * (2 * 29 + 1), 2 * (8 * 29 + 1))  # 2 class rows of 8, zoom 2
