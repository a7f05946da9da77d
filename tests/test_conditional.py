"""The class-conditional DDPM (`ddpm_cond`): labels reach the network, classifier-free guidance, the SavedModel's
generate(n, seed, steps, labels, guidance), the server's :generate fields and the conditional-accuracy score."""
import numpy as np
import pytest
import tensorflow as tf

from evaluation import scoring
from trainers import export
from serving.model import RequestError, ServedModel
from tests.conftest import sample_digits, sample_labels
from trainers import registry
from trainers.diffusion import DiffusionConfig

SHAPE = (28, 28, 1)
TINY = {"timesteps": 50, "sample_steps": 10, "base_channels": 8, "channel_multipliers": (1, 2), "num_classes": 2,
        "precision": "float32", "batch_size": 32, "learning_rate": 3e-3, "p_uncond": 0.2, "guidance": 3.0}


@pytest.fixture(scope="module")
def zeros_and_ones():
    """A tiny conditional DDPM trained on the sample's real 0s (label 0) and 1s (label 1), a third of them
    unlabeled (-1: they train the unconditional path only)."""
    images, labels = sample_digits(2000), sample_labels(2000)
    keep = (labels == 0) | (labels == 1)
    images, labels = images[keep] * 2.0 - 1.0, labels[keep]
    labels = np.where(np.arange(len(labels)) % 3 == 0, -1, labels)
    # Full batches only: oneDNN corrupts the heap in the gradient of this 8-channel U-Net at odd batch sizes
    # (DEVELOPERS.md).
    images, labels = images[:len(images) // 32 * 32], labels[:len(labels) // 32 * 32]
    entry = registry.get_model("ddpm_cond")
    config = registry.make_config("ddpm_cond", {**TINY, "epochs": 12})
    model = entry.build(config, SHAPE)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(600, seed=0).batch(32)
    history = entry.fit(model, config, data, None, [], 0)
    return entry, model, history


@pytest.mark.parametrize("name, overrides, message", [
    ("ddpm_cond", {"num_classes": 1}, "num_classes=1: must be 0"),
    ("ddpm", {"num_classes": 10},
     "num_classes=10: ddpm is unconditional; the class-conditional models are cvae, dcgan_cond, ddpm_cond"),
    ("ddpm_cond", {"num_classes": 10, "p_uncond": 0.0}, "p_uncond=0.0"),
    ("ddpm_cond", {"num_classes": 10, "guidance": -1.0}, "guidance=-1.0"),
])
def test_impossible_conditional_configs_are_rejected(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        registry.make_config(name, overrides)


def test_a_conditional_model_without_classes_is_not_built():
    with pytest.raises(ValueError, match="num_classes=0: a class-conditional model needs the labelled source's"):
        registry.get_model("ddpm_cond").build(registry.make_config("ddpm_cond", {}), SHAPE)


def test_training_labels_drop_to_the_null_label_at_p_uncond_and_for_unlabeled_images():
    model = registry.get_model("ddpm_cond").build(registry.make_config("ddpm_cond", TINY), SHAPE)
    labels = tf.constant(np.tile([0, 1, -1, 1], 5000), tf.int32)
    dropped = model.training_labels(labels).numpy()
    assert set(np.unique(dropped)) == {0, 1, 2} and model.null_label == 2
    assert np.all(dropped[2::4] == 2)  # every unlabeled image
    labelled = np.ones(len(dropped), bool)
    labelled[2::4] = False
    share = np.mean(dropped[labelled] == 2)
    assert 0.17 < share < 0.23, share  # p_uncond 0.2
    assert np.all(dropped[labelled & (dropped != 2)] == labels.numpy()[labelled & (dropped != 2)])


def test_labels_reach_the_generator_and_guidance_zero_is_the_unconditional_path(zeros_and_ones):
    _, model, history = zeros_and_ones
    assert history["loss"][-1] < 0.7 * history["loss"][0], history["loss"]
    zeros = model.generate(8, seed=3, labels=[0]).numpy()
    ones = model.generate(8, seed=3, labels=[1]).numpy()
    assert not np.allclose(zeros, ones, atol=1e-3)
    # The same seed at guidance 0: the null label's prediction only, whatever the labels asked.
    np.testing.assert_array_equal(model.generate(8, seed=3, labels=[0], guidance=0.0).numpy(),
                                  model.generate(8, seed=3, labels=[1], guidance=0.0).numpy())
    # A 0 has a ring of ink, a 1 a stroke (real ones: about half the ink): the guided 0s carry clearly more,
    # even after 144 steps of training (pixels in [-1, 1]).
    ink = lambda images: np.mean(images > 0.0)
    assert ink(model.generate(32, seed=5, labels=[0]).numpy()) > 1.25 * ink(
        model.generate(32, seed=5, labels=[1]).numpy())
    # Default labels: every class in turn.
    np.testing.assert_array_equal(model.sample_labels(5).numpy(), [0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match=r"labels: must be class ids in \[0, 1\]"):
        model.generate(2, labels=[5])


def test_the_savedmodel_and_the_server_take_labels_by_id_or_name_and_a_guidance(zeros_and_ones, tmp_path):
    entry, model, _ = zeros_and_ones
    export.export_model(entry.family, model, SHAPE, str(tmp_path), entry.pixel_range, class_names=("zero", "one"))
    served = ServedModel(str(tmp_path), "digits", "1")
    assert served.metadata["class_names"] == ["zero", "one"] and served.metadata["num_classes"] == 2
    assert served.metadata["generate_defaults"] == {"steps": 10, "labels": [0, 1], "guidance": 3.0}
    signature, inputs, _ = served.parse_generate({"n": 4, "seed": 3, "labels": ["one"], "guidance": 2})
    assert signature == "generate" and inputs["labels"].tolist() == [1] and inputs["guidance"] == np.float32(2.0)
    images = served.run(signature, inputs)["images"]
    expected = (model.generate(4, seed=3, labels=[1], guidance=2.0).numpy() + 1) / 2
    np.testing.assert_allclose(images, expected, atol=1e-5)
    _, inputs, _ = served.parse_generate({"n": 2})  # the defaults: every class in turn, the config's guidance
    assert inputs["labels"].tolist() == [0, 1] and inputs["guidance"] == np.float32(3.0)
    for body, message in (({"labels": ["two"]}, "labels: unknown class name 'two'"),
                          ({"labels": [2]}, r"labels: class id 2 is out of range: \[0, 1\] \(zero, one\)"),
                          ({"labels": []}, "labels: give at least one"),
                          ({"guidance": -0.5}, "guidance: expected a number >= 0"),
                          ({"guidance": "high"}, "guidance: expected a number >= 0")):
        with pytest.raises(RequestError, match=message):
            served.parse_generate({"n": 2, **body})
    # A plain tf.saved_model.load user gets the graph's own checks.
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels: need at least one, each a class id"):
        served.signatures["generate"](n=tf.constant(2), seed=tf.constant(0), steps=tf.constant(2),
                                      labels=tf.constant([0, 7]), guidance=tf.constant(1.0))


def test_conditional_scores_count_the_requested_class_per_batch_and_compare_each_class_with_its_own():
    requested = scoring.requested_labels(7, 3, [0, 1])
    np.testing.assert_array_equal(requested, [0, 1, 0, 0, 1, 0, 0])  # each batch of 3 starts again at class 0
    rng = np.random.default_rng(0)
    # Real features: class 0 around 0, class 1 around 3 (4 dimensions).
    real_labels = np.repeat([0, 1], 500)
    reference = scoring.FeatureReference.from_features(rng.normal(3.0 * real_labels[:, None], 1.0, (1000, 4)),
                                                       real_labels, 2)
    run = scoring.ScoringRun(signatures={}, metadata={"generate_defaults": {"labels": [0, 1]}}, images=None,
                             labels=None, pixel_range="symmetric", config={}, num_classes=2,
                             options=scoring.EvaluationOptions(batch_size=3), metric_network=object(),
                             reference=reference)
    # Generated: each image's features from the class it was asked for, except the last (class 0 drawn as a 1).
    features = rng.normal(3.0 * requested[:, None], 1.0, (7, 4))
    run.arrays.update(samples=np.zeros((7, *SHAPE)), sample_classes=np.array([0, 1, 1, 0, 0, 0, 0]),
                      sample_features=features)
    scoring.score_conditional_generation(run)
    assert run.metrics["conditional_accuracy"] == pytest.approx(5 / 7)
    assert run.metrics["per_class_conditional_accuracy"] == [pytest.approx(4 / 5), pytest.approx(1 / 2)]
    assert len(run.metrics["per_class_fid"]) == 2 and np.isfinite(run.metrics["mean_class_fid"])

    # Per-class FID: a class drawn as itself is near its own real features; drawn as the other class, far.
    requested = np.repeat([0, 1], 200)
    right = scoring.conditional_scores(rng.normal(3.0 * requested[:, None], 1.0, (400, 4)), requested, requested,
                                       reference, 2)
    swapped = scoring.conditional_scores(rng.normal(3.0 * (1 - requested[:, None]), 1.0, (400, 4)), 1 - requested,
                                         requested, reference, 2)
    assert max(right["per_class_fid"]) < 0.5 and min(swapped["per_class_fid"]) > 30  # 4 dims x 3^2 = 36
    assert right["conditional_accuracy"] == 1.0 and swapped["conditional_accuracy"] == 0.0
    # A class with fewer than 2 images has no covariance: NaN, left out of the mean.
    one = scoring.conditional_scores(np.zeros((3, 4)), np.array([0, 0, 1]), np.array([0, 0, 1]), reference, 2)
    assert np.isnan(one["per_class_fid"][1]) and one["mean_class_fid"] == one["per_class_fid"][0]


def test_a_reference_saved_without_per_class_statistics_loads_and_says_what_to_do(tmp_path):
    rng = np.random.default_rng(0)
    reference = scoring.FeatureReference.from_features(rng.normal(size=(50, 3)), np.repeat([0, 1], 25), 2)
    reference.save(str(tmp_path))
    loaded = scoring.FeatureReference.load(str(tmp_path))
    np.testing.assert_array_equal(loaded.class_covariances, reference.class_covariances)
    np.savez(tmp_path / scoring.FeatureReference.FILE, mean=reference.mean, covariance=reference.covariance,
             sample=reference.sample, class_histogram=reference.class_histogram)  # an older reference
    with pytest.raises(ValueError, match="no statistics of class 1.*rerun the MetricNetworkTrainer"):
        scoring.FeatureReference.load(str(tmp_path)).class_statistics(1)


def test_an_unconditional_ddpm_refuses_labels():
    model = registry.get_model("ddpm").build(DiffusionConfig(timesteps=20, sample_steps=2, base_channels=8,
                                                             channel_multipliers=(1, 2)), SHAPE)
    with pytest.raises(ValueError, match="labels: this DDPM is unconditional"):
        model.generate(2, labels=[1])


def test_the_trainer_pictures_show_a_row_per_class_and_a_guidance_strip(zeros_and_ones, tmp_path):
    from evaluation import figures
    entry, model, _ = zeros_and_ones
    paths = figures.save_model_figures(entry.family, model, np.zeros((2, *SHAPE), np.float32), entry.pixel_range,
                                       {"loss": [1.0, 0.5]}, str(tmp_path))
    assert {p.split("/")[-1] for p in paths} == {"loss.png", "classes.png", "guidance.png"}
    classes = tf.io.decode_png(tf.io.read_file(str(tmp_path / "classes.png"))).numpy()
    guidance = tf.io.decode_png(tf.io.read_file(str(tmp_path / "guidance.png"))).numpy()
    # zoom 2, 28-pixel images, 1-pixel gaps: 2 class rows of 8; 4 guidance rows of 2 classes.
    assert classes.shape[:2] == (2 * (2 * 29 + 1), 2 * (8 * 29 + 1))
    assert guidance.shape[:2] == (2 * (4 * 29 + 1), 2 * (2 * 29 + 1))
