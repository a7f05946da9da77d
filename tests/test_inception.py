"""evaluation/inception.py: the FID Inception graph file is read, checked, turned into a feature network and scored
with, on a randomly initialised network saved by the test in the file's format (the real weights cannot be
downloaded here)."""
import numpy as np
import pytest
import tensorflow as tf

from evaluation import inception, scoring
from tests.conftest import sample_digits


def random_inception_like_graph(path: str, seed: int = 0) -> str:
    """A frozen graph with the FID file's interface (ExpandDims:0 in, float 0..255 of any size; the resize to
    299x299 and the [-1, 1] scaling inside; pool_3:0 out, (N, 1, 1, 2048)) around a randomly initialised network:
    a small strided CNN rather than a whole Inception-v3, whose 6 GFLOP per image would only slow the test (the
    loading and scoring code sees the same graph interface either way)."""
    import tf_keras as keras
    from tensorflow.python.framework import convert_to_constants
    keras.utils.set_random_seed(seed)
    body = keras.Sequential([keras.Input((299, 299, 3)), keras.layers.Conv2D(16, 7, strides=4, activation="relu"),
                             keras.layers.Conv2D(inception.FEATURES, 3, strides=4, activation="relu"),
                             keras.layers.GlobalAveragePooling2D()])

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="ExpandDims")])
    def graph(images):
        resized = tf.compat.v1.image.resize_bilinear(images, [299, 299])
        pooled = body((resized - 128.0) / 128.0, training=False)
        return tf.reshape(pooled, [-1, 1, 1, inception.FEATURES], name="pool_3")

    frozen = convert_to_constants.convert_variables_to_constants_v2(graph.get_concrete_function())
    with open(path, "wb") as f:
        f.write(frozen.graph.as_graph_def().SerializeToString())
    return path


@pytest.mark.slow  # trains for more than ~20 s on 2 cores
def test_the_inception_file_becomes_a_feature_network_that_scores_like_the_graph_itself(tmp_path):
    path = random_inception_like_graph(str(tmp_path / "classify_image_graph_def.pb"))
    digits = sample_digits(24)
    inception.export_feature_network(path, (28, 28, 1), str(tmp_path / "features"))
    network = scoring.MetricNetwork(str(tmp_path / "features"))
    features, classes = network(digits, batch_size=16)
    assert features.shape == (24, 2048) and classes is None and np.isfinite(features).all()
    # TTUR's preprocessing: grey digits as 0..255 RGB straight into the graph (it resizes them itself).
    direct = inception.feature_function(inception.read_graph(path))(
        tf.constant(np.repeat(digits[:8], 3, axis=-1) * 255.0)).numpy()
    np.testing.assert_allclose(features[:8], direct, rtol=1e-4, atol=1e-5)
    # Scored in that space (too few images for a full-rank FID in 2,048 dimensions: KID is unbiased at any count).
    reference = scoring.FeatureReference.from_features(features[:12], None, 0)
    same = scoring.feature_scores(features[12:], None, reference)
    noise = scoring.generative_scores(np.random.default_rng(0).random((12, 28, 28, 1), np.float32), network,
                                      reference)
    assert np.isfinite(same["fid"]) and same["fid"] >= 0 and same["kid_x1e3"] < noise["kid_x1e3"]


@pytest.mark.parametrize("content, expected", [
    (None, "no such file; download it with: curl -L"),
    (b"not a graph at all", "not a TensorFlow GraphDef"),
    ("other", "without ExpandDims:0, pool_3:0: not the FID Inception graph"),
])
def test_a_missing_or_wrong_inception_file_is_named(content, expected, tmp_path):
    path = tmp_path / "weights.pb"
    if content == "other":
        with tf.Graph().as_default() as graph:
            tf.constant(1.0, name="x")
        path.write_bytes(graph.as_graph_def().SerializeToString())
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(inception.InceptionFileError, match=expected):
        inception.read_graph(str(path))
