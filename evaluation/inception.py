"""The standard Inception FID features, from the weights file people have: TTUR's frozen graph of the
2015-12-05 Inception-v3 (`classify_image_graph_def.pb`), as Heusel et al.'s reference implementation (TTUR's
fid.py) reads it.

    curl -L http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz | \\
        tar -xz classify_image_graph_def.pb
    latentforge run ... --fid-features inception:classify_image_graph_def.pb

Preprocessing follows TTUR: images as float 0..255 RGB (grey images repeated over three channels) fed to the
graph's `ExpandDims:0`, so the graph itself resizes them to 299x299 (its bilinear ResizeBilinear) and scales them
to [-1, 1]; the features are `pool_3:0`, 2048 per image. pytorch-fid copies this pipeline in PyTorch (with its own
port of the weights, numbers within ~1e-3 of TTUR's on the same images); clean-fid resizes with PIL's bicubic
filter first and reports different numbers; FID also depends on the sample count (it is biased: papers use
50,000). So compare Inception FIDs only from one implementation at one sample count.

`export_feature_network` turns the file into the same SavedModel (`features` signature: images in [0, 1] ->
features) as the trained metric networks, so the Evaluator, the best-epoch proxy and MLflow use it unchanged.
"""
import os

import tensorflow as tf

from evaluation import scoring

INPUT_TENSOR = "ExpandDims:0"  # the decoded image batch, float 0..255, before the graph's resize
OUTPUT_TENSOR = "pool_3:0"  # the 2048 average-pooled features (N, 1, 1, 2048)
FEATURES = 2048
DOWNLOAD = "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz"


class InceptionFileError(ValueError):
    """The file given as the Inception weights is missing or is not TTUR's frozen Inception graph."""


def read_graph(path: str) -> tf.compat.v1.GraphDef:
    """The frozen graph in `path`, checked to be one FID can use (its input and pool_3 tensors by name)."""
    how = (f"download it with: curl -L {DOWNLOAD} | tar -xz classify_image_graph_def.pb (TTUR's frozen "
           "Inception-v3 of 2015-12-05, 95 MB)")
    if not os.path.isfile(path):
        raise InceptionFileError(f"--fid-features inception:{path}: no such file; {how}")
    graph = tf.compat.v1.GraphDef()
    try:
        with open(path, "rb") as f:
            graph.ParseFromString(f.read())
    except Exception as e:  # pylint: disable=broad-except  (protobuf's DecodeError, or a read error)
        raise InceptionFileError(f"--fid-features inception:{path}: not a TensorFlow GraphDef ({e}); {how}") from e
    names = {node.name for node in graph.node}
    missing = [t for t in (INPUT_TENSOR, OUTPUT_TENSOR) if t.split(":")[0] not in names]
    if missing:
        raise InceptionFileError(f"--fid-features inception:{path}: a GraphDef of {len(names)} nodes without "
                                 f"{', '.join(missing)}: not the FID Inception graph; {how}")
    return graph


def feature_function(graph: tf.compat.v1.GraphDef):
    """A concrete function: images (N, H, W, 3) float 0..255 -> pool_3 features (N, 2048). The graph is imported
    with its input mapped to a batch of any size (the file's own input is one decoded JPEG)."""
    def imported(images):
        (pool,) = tf.compat.v1.import_graph_def(graph, input_map={INPUT_TENSOR: images},
                                                return_elements=[OUTPUT_TENSOR], name="inception")
        return tf.reshape(pool, [-1, FEATURES])
    return tf.compat.v1.wrap_function(imported, [tf.TensorSpec([None, None, None, 3], tf.float32)])


class _InceptionFeatures(tf.Module):
    def __init__(self, graph: tf.compat.v1.GraphDef, image_shape):
        super().__init__()
        self._features = feature_function(graph)
        channels = int(image_shape[-1])

        @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name="images")])
        def features(images):
            pixels = images * 255.0
            if channels == 1:
                pixels = tf.tile(pixels, [1, 1, 1, 3])
            return {"features": self._features(pixels)}

        self.features = features
        self.__call__ = tf.function(lambda images: features(images)["features"], input_signature=features.input_signature)


def export_feature_network(path: str, image_shape, export_dir: str) -> None:
    """Writes the Inception graph in `path` as a feature network SavedModel for images of `image_shape`."""
    module = _InceptionFeatures(read_graph(path), tuple(int(d) for d in image_shape))
    tf.saved_model.save(module, export_dir, signatures={scoring.METRIC_NETWORK_FEATURES: module.features})
