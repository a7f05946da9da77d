"""evaluation.scoring: the scores against independent computations, the metric network's FID sanity on real
digits, scoring a SavedModel, and the blessing decision."""
import math

import numpy as np
import pytest
import sklearn.metrics
import tensorflow as tf

from trainers import export
from tests.conftest import sample_digits, sample_labels
from evaluation import scoring
from trainers import autoencoders, registry


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)  # rounding makes ties
    positive = rng.random(300) < 0.3
    scores[positive] += 0.5
    assert scoring.auroc(scores, positive) == pytest.approx(sklearn.metrics.roc_auc_score(positive, scores))
    with pytest.raises(ValueError, match="0 positive"):
        scoring.auroc(scores, np.zeros(300, bool))


def test_classification_scores_match_sklearn():
    rng = np.random.default_rng(1)
    labels, predicted = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    scores = scoring.classification_scores(predicted, labels, 4)
    np.testing.assert_array_equal(scores["confusion_matrix"], sklearn.metrics.confusion_matrix(labels, predicted))
    assert scores["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(labels, predicted))
    recall = sklearn.metrics.recall_score(labels, predicted, average=None)
    np.testing.assert_allclose(scores["per_class_accuracy"], recall)


def test_frechet_distance_of_gaussians_has_its_closed_form():
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert scoring.frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(expected)
    assert scoring.frechet_distance(mean_a, np.diag(var_a), mean_a, np.diag(var_a)) == pytest.approx(0, abs=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(1500, 8)), rng.normal(size=(1500, 8))
    same, _ = scoring.kernel_inception_distance(a, b, subset_size=500)
    shifted, _ = scoring.kernel_inception_distance(a, b + 1.0, subset_size=500)
    assert abs(same) < 0.02 < shifted


def test_mode_coverage_of_uniform_and_collapsed_generators():
    real = np.full(10, 0.1)
    uniform = scoring.mode_coverage(np.arange(1000) % 10, real)
    assert uniform["mode_entropy"] == pytest.approx(math.log(10)) and uniform["mode_kl"] == pytest.approx(0)
    assert uniform["modes_covered"] == 10
    collapsed = scoring.mode_coverage(np.full(1000, 3), real)
    assert collapsed["mode_entropy"] == 0 and collapsed["mode_kl"] == pytest.approx(math.log(10))
    assert collapsed["modes_covered"] == 1


@pytest.fixture(scope="module")
def metric_network(tmp_path_factory):
    """A metric network trained for 2 epochs on the sample's first 1,500 digits, exported and loaded back."""
    images, labels = sample_digits(2000), sample_labels(2000)
    config = scoring.MetricNetworkConfig(epochs=2)
    model = scoring.build_metric_network((28, 28, 1), 10, config)
    model.fit(images[:1500], labels[:1500], batch_size=config.batch_size, epochs=config.epochs, verbose=0)
    directory = str(tmp_path_factory.mktemp("metric") / "network")
    scoring.export_metric_network(model, directory)
    network = scoring.MetricNetwork(directory)
    features, _ = network(images[:1500])
    reference = scoring.FeatureReference.from_features(features, labels[:1500], 10)
    reference.save(str(tmp_path_factory.getbasetemp()))
    return network, reference, images[1500:], labels[1500:]


def test_fid_of_held_out_digits_is_far_below_noise_and_shuffled_pixels(metric_network):
    network, reference, held_out, held_out_labels = metric_network
    _, predicted = network(held_out)
    assert np.mean(predicted == held_out_labels) > 0.8  # the features mean something
    rng = np.random.default_rng(3)
    noise = rng.random(held_out.shape).astype(np.float32)
    shuffled = np.stack([rng.permutation(image.ravel()).reshape(image.shape) for image in held_out])

    def fid(images):
        return scoring.frechet_distance(*scoring.feature_statistics(network(images)[0]), reference.mean,
                                           reference.covariance)

    real, from_noise, from_shuffled = fid(held_out), fid(noise), fid(shuffled)
    assert real * 10 < from_noise and real * 10 < from_shuffled, (real, from_noise, from_shuffled)
    scores = scoring.generative_scores(held_out, network, reference)
    assert scores["fid"] == pytest.approx(real) and scores["modes_covered"] == 10
    assert scores["mode_kl"] < 0.1 and scores["kid_x1e3"] < scoring.generative_scores(
        shuffled, network, reference)["kid_x1e3"]


def test_feature_reference_round_trips(metric_network, tmp_path):
    reference = metric_network[1]
    reference.save(str(tmp_path))
    loaded = scoring.FeatureReference.load(str(tmp_path))
    np.testing.assert_array_equal(loaded.covariance, reference.covariance)
    np.testing.assert_array_equal(loaded.class_histogram, reference.class_histogram)


def test_scoring_an_autoencoder_savedmodel(tmp_path):
    entry = registry.get_model("stacked_ae")
    images, labels = sample_digits(300), sample_labels(300)
    model = entry.build(registry.make_config("stacked_ae", {}), (28, 28, 1))
    model.fit(images, images, epochs=1, batch_size=32, verbose=0)
    # The threshold the Trainer exports: calibrated on other digits (the "eval split") for 5 % false positives.
    calibration_images = sample_digits(500)[300:]
    calibration = autoencoders.calibrate_anomaly_threshold(
        model, tf.data.Dataset.from_tensor_slices(calibration_images).batch(64), 0.05)
    calibration_errors = np.mean(np.square(model.predict(calibration_images, verbose=0) - calibration_images),
                                 axis=(1, 2, 3))
    assert calibration["calibration_examples"] == 200
    # The lowest such score: at most 5 % of the calibration digits lie above it, it is one of their scores, and
    # with it they would be over 5 % (1e-6: predict's rounding against anomaly_score's).
    assert np.mean(calibration_errors > calibration["threshold"] + 1e-6) <= 0.05
    assert np.min(np.abs(calibration_errors - calibration["threshold"])) < 1e-6
    assert np.mean(calibration_errors >= calibration["threshold"] - 1e-6) > 0.05
    export.export_model("autoencoder", model, (28, 28, 1), str(tmp_path), "unit", extra_metadata={
        "anomaly": calibration})
    metrics, arrays = scoring.score_model(registry.family("autoencoder"), str(tmp_path), images, labels, "unit", {}, 10,
                                             scoring.EvaluationOptions(anomaly_class=1, batch_size=64))
    reconstructions = model.predict(images, verbose=0)
    assert metrics["test_mse"] == pytest.approx(float(np.mean(np.square(reconstructions - images))), rel=1e-5)
    errors = np.mean(np.square(reconstructions - images), axis=(1, 2, 3))
    assert metrics["anomaly_auroc"] == pytest.approx(sklearn.metrics.roc_auc_score(labels == 1, errors), rel=1e-5)
    assert arrays["codings"].shape == (300, 30)
    # The exported threshold's decisions on the test images (class 1: the anomaly).
    flagged, ones = errors > calibration["threshold"], labels == 1
    assert metrics["anomaly_threshold"] == calibration["threshold"] and metrics["anomaly_target_fpr"] == 0.05
    assert metrics["test_false_positive_rate"] == pytest.approx(flagged[~ones].mean(), abs=1e-3)
    assert metrics["anomaly_recall"] == pytest.approx(flagged[ones].mean(), abs=0.02)


def test_anomaly_decisions_are_scored_against_the_truth():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 1.0, 0.15])
    anomalous = np.array([False, False, False, False, True, True, True])
    assert scoring.anomaly_decision_scores(scores, anomalous, 0.35) == {
        "anomaly_threshold": 0.35, "test_false_positive_rate": 0.25, "anomaly_recall": 2 / 3,
        "anomaly_precision": 2 / 3}
    # Nothing flagged: no precision to report; no anomalous images: only the false-positive rate.
    assert "anomaly_precision" not in scoring.anomaly_decision_scores(scores, anomalous, 5.0)
    assert set(scoring.anomaly_decision_scores(scores[:4], anomalous[:4], 0.35)) == {
        "anomaly_threshold", "test_false_positive_rate"}
    with pytest.raises(ValueError, match="no normal images"):
        scoring.anomaly_decision_scores(scores[4:6], anomalous[4:6], 0.5)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        autoencoders.calibrate_anomaly_threshold(None, [], 1.5)


def test_scoring_a_gan_savedmodel_with_the_metric_network(metric_network, tmp_path):
    network, reference, held_out, _ = metric_network
    entry = registry.get_model("dcgan")
    model = entry.build(registry.make_config("dcgan", {}), (28, 28, 1))
    export.export_model("gan", model, (28, 28, 1), str(tmp_path), "symmetric")
    options = scoring.EvaluationOptions(num_samples=300, batch_size=128)
    metrics, arrays = scoring.score_model(registry.family("gan"), str(tmp_path), sample_digits(10) * 2 - 1, np.zeros(10, int),
                                             "symmetric", {}, 10, options, network, reference)
    assert arrays["samples"].shape == (300, 28, 28, 1)
    assert 0.0 <= arrays["samples"].min() and arrays["samples"].max() <= 1.0
    assert metrics["samples"] == 300 and 0 <= metrics["mode_entropy"] <= math.log(10)
    # The scores are those of the samples it drew, and an untrained generator's are far from real digits'.
    drawn = scoring.generative_scores(arrays["samples"], network, reference)
    assert metrics["fid"] == pytest.approx(drawn["fid"]) and metrics["kid_x1e3"] == pytest.approx(drawn["kid_x1e3"])
    real = scoring.generative_scores(held_out, network, reference)
    assert real["fid"] * 4 < metrics["fid"] and real["precision"] > metrics["precision"]
    again, _ = scoring.score_model(registry.family("gan"), str(tmp_path), sample_digits(10) * 2 - 1, np.zeros(10, int),
                                      "symmetric", {}, 10, options, network, reference)
    assert again["fid"] == metrics["fid"]  # seeded: the same samples, the same score


@pytest.mark.parametrize("family, metrics, champion, margin, blessed, words", [
    ("autoencoder", {"test_mse": 0.02}, None, 0.01, True, "no champion yet"),
    ("autoencoder", {"test_mse": 0.02}, ("3", {"test_mse": 0.03}), 0.01, True, "beats"),
    ("autoencoder", {"test_mse": 0.0299}, ("3", {"test_mse": 0.03}), 0.01, False, "does not beat"),
    ("classifier", {"test_accuracy": 0.9}, ("1", {"test_accuracy": 0.8}), 0.0, True, "beats"),
    ("classifier", {"test_accuracy": 0.7}, ("1", {"test_accuracy": 0.8}), 0.0, False, "does not beat"),
    # A key metric that could not be measured: blessed only where there is no champion to replace.
    ("gan", {"fid": float("nan")}, None, 0.0, True, "fid could not be measured (it came out nan); no champion yet"),
    ("gan", {}, None, 0.0, True, "blessed unscored"),
    ("gan", {"fid": float("inf")}, ("4", {"fid": 30.0}), 0.0, False, "never replaces champion version 4"),
    ("gan", {}, ("4", {"fid": 30.0}), 0.0, False, "fid could not be measured; not blessed"),
    ("diffusion", {"fid": 3.0}, ("2", {}), 0.0, True, "has no fid"),
])
def test_blessing_decision(family, metrics, champion, margin, blessed, words):
    decision = scoring.decide_blessing(registry.family(family).key_metric, metrics, champion, margin)
    assert decision.blessed is blessed and words in decision.reason
    assert decision.metric == registry.family(family).key_metric[0]


def test_metric_network_config_is_checked():
    with pytest.raises(ValueError, match="epochs"):
        scoring.MetricNetworkConfig(epochs=0)


def test_scoring_batches_read_again_on_each_pass_gives_the_array_scores(tmp_path):
    """The Evaluator hands the scorers the test split as batches parsed again from the TFRecords on each pass
    (scoring.ImageBatches), so it never holds the split and its reconstructions at once: a VAE's scores are the
    same as from one array, in two passes (reconstructions and codings, then the ELBO's decodings)."""
    images, labels = sample_digits(300), sample_labels(300)
    model = registry.get_model("vae").build(registry.make_config("vae", {}), (28, 28, 1))
    model.fit(images, epochs=1, batch_size=32, verbose=0)
    export.export_model("vae", model, (28, 28, 1), str(tmp_path), "unit")
    options = scoring.EvaluationOptions(num_samples=20, batch_size=64)
    expected, arrays = scoring.score_model(registry.family("vae"), str(tmp_path), images, labels, "unit", {}, 10,
                                           options)
    passes = []

    def read():
        passes.append(1)
        return (images[start:start + 100] for start in range(0, 300, 100))

    got, got_arrays = scoring.score_model(registry.family("vae"), str(tmp_path), scoring.ImageBatches(read, 300),
                                          labels, "unit", {}, 10, options)
    assert len(passes) == 2 and got["test_examples"] == 300
    for name in ("test_mse", "test_bce", "test_neg_elbo", "test_kl"):
        assert got[name] == pytest.approx(expected[name], rel=1e-5), name
    np.testing.assert_allclose(got_arrays["codings"], arrays["codings"], rtol=1e-5, atol=1e-6)


def test_finite_metrics_leaves_out_what_could_not_be_computed():
    kept, dropped = scoring.finite_metrics({"fid": float("nan"), "kid_x1e3": 3.0, "per_class_fid": [1.0, float("nan")],
                                            "split": "test", "samples": 10})
    assert dropped == ["fid"] and kept == {"kid_x1e3": 3.0, "per_class_fid": [1.0, None], "split": "test",
                                           "samples": 10}


def test_precision_is_fidelity_and_recall_is_coverage():
    """Kynkaanniemi et al.'s two numbers: samples of one real mode only are faithful (precision ~1) but cover
    half the data (recall ~0.5); samples off the data have neither; the real data against itself has both."""
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal(-5, 1, (500, 4)), rng.normal(5, 1, (500, 4))])
    same = scoring.precision_recall(real, np.concatenate([rng.normal(-5, 1, (500, 4)), rng.normal(5, 1, (500, 4))]))
    assert same["precision"] > 0.9 and same["recall"] > 0.9
    one_mode = scoring.precision_recall(real, rng.normal(-5, 1, (1000, 4)))
    assert one_mode["precision"] > 0.9 and 0.4 < one_mode["recall"] < 0.6
    off = scoring.precision_recall(real, rng.normal(20, 1, (1000, 4)))
    assert off["precision"] == 0 and off["recall"] == 0
    with pytest.raises(ValueError, match="needs more than 3"):
        scoring.precision_recall(real, real[:3])


def test_nt_xent_is_low_when_each_view_finds_its_partner_and_augment_keeps_shape_and_range():
    from evaluation import self_supervised
    z = tf.random.stateless_normal([16, 8], seed=[0, 1])
    matched = self_supervised.nt_xent(z, z, 0.1)
    shuffled = self_supervised.nt_xent(z, tf.roll(z, 1, axis=0), 0.1)
    assert matched.shape == (16,) and float(tf.reduce_mean(matched)) < float(tf.reduce_mean(shuffled))
    images = tf.constant(sample_digits(8))
    views = self_supervised.augment(images, 0.5, 0.2, flip=False)
    assert views.shape == images.shape and float(tf.reduce_min(views)) >= 0 and float(tf.reduce_max(views)) <= 1
    assert not np.allclose(views.numpy(), images.numpy())  # a view differs from the image
    colour = self_supervised.augment(tf.random.stateless_uniform([4, 12, 12, 3], seed=[1, 2]), 0.5, 0.2, flip=True)
    assert colour.shape == (4, 12, 12, 3)


def test_a_self_supervised_feature_network_learns_digits_without_labels(tmp_path):
    """Trained on 1,500 digits without their labels for 4 epochs, its features put a held-out digit next to train
    digits of its own class far above chance (0.1), and FID/KID/precision rank real digits above a single class
    above noise; exported, it gives features and no class predictions."""
    from evaluation import self_supervised
    images, labels = sample_digits(2000), sample_labels(2000)
    config = scoring.MetricNetworkConfig(method="self_supervised", seed=1)
    model = self_supervised.train_contrastive(images[:1500], config, epochs=4)
    scoring.export_metric_network(self_supervised.feature_model(model.encoder), str(tmp_path))
    network = scoring.MetricNetwork(str(tmp_path))
    train_features, classes = network(images[:1500])
    assert classes is None and not network.classifies and train_features.shape == (1500, config.feature_units)
    test_features, _ = network(images[1500:])
    accuracy = self_supervised.nearest_neighbour_accuracy(train_features, labels[:1500], test_features, labels[1500:])
    assert accuracy > 0.6
    reference = scoring.FeatureReference.from_features(train_features, None, 0)
    real = scoring.feature_scores(test_features, None, reference)
    ones = scoring.feature_scores(test_features[labels[1500:] == 1], None, reference)
    noise = scoring.generative_scores(np.random.default_rng(0).random((500, 28, 28, 1), np.float32), network,
                                      reference)
    assert real["fid"] < ones["fid"] < noise["fid"] and real["kid_x1e3"] < ones["kid_x1e3"] < noise["kid_x1e3"]
    assert ones["recall"] < 0.5 * real["recall"] and noise["precision"] < 0.05 < real["precision"]
    assert "mode_entropy" not in real  # no classes, no mode coverage
