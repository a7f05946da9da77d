"""The metric network: the feature space FID, KID, precision/recall and mode coverage are measured in.

A small CNN trained on the dataset's own labels (its penultimate layer), or, for a source without labels, a
self-supervised encoder (evaluation/self_supervised.py); exported as a SavedModel whose `features` signature maps
images in [0, 1] to (features, predicted classes). `FeatureReference` holds the real images' statistics in that
space, which every generated set is compared with."""
import dataclasses
import io
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from evaluation.metrics import (class_histogram, feature_statistics, frechet_distance, kernel_inception_distance,
                                mode_coverage, precision_recall)

METRIC_NETWORK_FEATURES = "features"  # the metric network's SavedModel signature: images in [0, 1] -> features



# How the feature network is trained: on the labels (a classifier), or without them (evaluation.self_supervised).
FEATURE_METHODS = ("auto", "classifier", "self_supervised", "inception")


@dataclasses.dataclass(frozen=True)
class MetricNetworkConfig:
    epochs: Optional[int] = None  # None: 3 for the classifier, 10 for the self-supervised encoder
    batch_size: int = 128
    learning_rate: float = 1e-3
    feature_units: int = 128
    seed: int = 0
    method: str = "auto"  # auto: the classifier on a labelled source (2+ classes), self-supervised otherwise
    # The self-supervised encoder's (evaluation/self_supervised.py): its batch is 2x this many views.
    temperature: float = 0.2
    projection_units: int = 64
    min_crop_area: float = 0.5
    jitter: float = 0.2
    flip: bool = False
    # method "inception": TTUR's frozen Inception graph (evaluation/inception.py), nothing trained; its reference
    # is the features of at most `reference_images` train images (Inception at 299x299 is slow on a CPU).
    inception_path: str = ""
    reference_images: int = 10_000

    def __post_init__(self):
        if ((self.epochs is not None and self.epochs < 1) or self.batch_size < 1 or self.feature_units < 2
                or self.learning_rate <= 0):
            raise ValueError(f"metric network config {self}: epochs, batch_size >= 1, feature_units >= 2 and "
                             "learning_rate > 0 required")
        if self.method not in FEATURE_METHODS:
            raise ValueError(f"metric network method {self.method!r}: choose one of {', '.join(FEATURE_METHODS)}")
        if (self.method == "inception") != bool(self.inception_path):
            raise ValueError("the inception method needs inception_path (the FID Inception graph file), and only it")
        if not (self.temperature > 0 and self.projection_units >= 2 and 0 < self.min_crop_area <= 1
                and 0 <= self.jitter < 0.5):
            raise ValueError(f"metric network config {self}: temperature > 0, projection_units >= 2, "
                             "0 < min_crop_area <= 1 and 0 <= jitter < 0.5 required")

    def resolved_method(self, num_classes: int) -> str:
        """'classifier' or 'self_supervised': what `auto` means for a source with `num_classes` classes."""
        if self.method == "auto":
            return "classifier" if num_classes >= 2 else "self_supervised"
        return self.method

    def resolved_epochs(self, num_classes: int) -> int:
        """Training epochs (0 for the Inception graph, which is used as it is)."""
        method = self.resolved_method(num_classes)
        return 0 if method == "inception" else self.epochs or (3 if method == "classifier" else 10)


def build_metric_network(image_shape: Sequence[int], num_classes: int, config: MetricNetworkConfig) -> keras.Model:
    """A small CNN classifier for images in [0, 1]; its `features` layer is what FID and KID compare."""
    keras.utils.set_random_seed(config.seed)
    inputs = keras.Input(tuple(image_shape))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    features = keras.layers.Dense(config.feature_units, activation="relu", name=METRIC_NETWORK_FEATURES)(x)
    x = keras.layers.Dropout(0.3)(features)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="metric_network")
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def export_metric_network(model: keras.Model, export_dir: str) -> None:
    """SavedModel with one signature, `features`: images (B, H, W, C) in [0, 1] -> features, and probabilities
    when the network is a classifier (its `features` layer is not its output); a self-supervised encoder (whose
    output is the `features` layer) exports features only."""
    feature_layer = model.get_layer(METRIC_NETWORK_FEATURES).output
    classifies = feature_layer is not model.outputs[0]
    features_model = keras.Model(model.inputs, [feature_layer, model.outputs[0]] if classifies else feature_layer)

    @tf.function(input_signature=[tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name="images")])
    def features(images):
        if not classifies:
            return {"features": features_model(images, training=False)}
        values, probabilities = features_model(images, training=False)
        return {"features": values, "probabilities": probabilities}

    root = tf.Module()
    root.model_variables = list(model.variables)
    root.features = features
    root.__call__ = tf.function(lambda images: features(images)["probabilities" if classifies else "features"],
                                input_signature=features.input_signature)
    tf.saved_model.save(root, export_dir, signatures={METRIC_NETWORK_FEATURES: features})


class MetricNetwork:
    """A loaded metric network: features, and class predictions when it classifies, for images in [0, 1]."""

    def __init__(self, export_dir: str):
        self._loaded = tf.saved_model.load(export_dir)
        self._features = self._loaded.signatures[METRIC_NETWORK_FEATURES]
        self.classifies = "probabilities" in self._features.structured_outputs

    def __call__(self, images: np.ndarray, batch_size: int = 500) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(features, predicted classes); classes None for a network without class predictions."""
        features, classes = [], []
        for start in range(0, len(images), batch_size):
            out = self._features(images=tf.constant(images[start:start + batch_size], tf.float32))
            features.append(out["features"].numpy())
            if self.classifies:
                classes.append(np.argmax(out["probabilities"].numpy(), axis=1))
        return np.concatenate(features), np.concatenate(classes) if self.classifies else None


@dataclasses.dataclass
class FeatureReference:
    """What generated images are compared with: the real train split through the metric network."""
    mean: np.ndarray
    covariance: np.ndarray
    sample: np.ndarray  # up to 2,000 feature vectors, for KID
    class_histogram: np.ndarray
    # Each class's feature mean (K, D) and covariance (K, D, D), for a conditional model's per-class FID (a
    # reference saved before they existed has none: shape (0,)).
    class_means: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,)))
    class_covariances: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,)))

    FILE = "reference.npz"

    @classmethod
    def from_features(cls, features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0,
                      sample_size: int = 2000) -> "FeatureReference":
        mean, covariance = feature_statistics(features)
        rng = np.random.default_rng(seed)
        sample = features[rng.choice(len(features), min(sample_size, len(features)), replace=False)]
        if num_classes < 1:  # unlabelled: no class histogram, no per-class statistics
            return cls(mean, covariance, sample, np.zeros((0,)))
        labels = np.asarray(labels)
        # A class with fewer than 2 examples has no covariance: NaN statistics, so its FID reads NaN, not 0.
        per_class = [feature_statistics(features[labels == k]) if np.sum(labels == k) >= 2
                     else (np.full(mean.shape, np.nan), np.full(covariance.shape, np.nan))
                     for k in range(num_classes)]
        return cls(mean, covariance, sample, class_histogram(labels, num_classes),
                   np.stack([m for m, _ in per_class]), np.stack([c for _, c in per_class]))

    def class_statistics(self, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(mean, covariance) of class k's real features; a ValueError when the reference has none."""
        if not 0 <= k < len(self.class_means):
            raise ValueError(f"the feature reference has no statistics of class {k} (it has {len(self.class_means)} "
                             "classes; a reference saved before per-class statistics existed has none: rerun the "
                             "MetricNetworkTrainer)")
        return self.class_means[k], self.class_covariances[k]

    def save(self, directory: str) -> str:
        path = os.path.join(directory, self.FILE)
        buffer = io.BytesIO()  # through tf.io.gfile: `directory` may be on object storage
        np.savez(buffer, mean=self.mean, covariance=self.covariance, sample=self.sample,
                 class_histogram=self.class_histogram, class_means=self.class_means,
                 class_covariances=self.class_covariances)
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(buffer.getvalue())
        return path

    @classmethod
    def load(cls, directory: str) -> "FeatureReference":
        with tf.io.gfile.GFile(os.path.join(directory, cls.FILE), "rb") as f:
            buffer = io.BytesIO(f.read())
        with np.load(buffer) as data:
            per_class = {k: data[k] for k in ("class_means", "class_covariances") if k in data}
            return cls(data["mean"], data["covariance"], data["sample"], data["class_histogram"], **per_class)


def generative_scores(images_unit: np.ndarray, network: MetricNetwork, reference: FeatureReference,
                      seed: int = 0) -> Dict[str, float]:
    """FID, KID (x 1e3, with its spread over subsets), precision and recall, and mode coverage (a classifying
    network only) of images in [0, 1] against the reference."""
    return feature_scores(*network(images_unit), reference, seed)


def feature_scores(features: np.ndarray, classes: Optional[np.ndarray], reference: FeatureReference,
                   seed: int = 0) -> Dict[str, float]:
    """generative_scores from the metric network's outputs (features, predicted classes or None) for the images."""
    kid, kid_std = kernel_inception_distance(features, reference.sample, seed=seed)
    scores = {"fid": frechet_distance(*feature_statistics(features), reference.mean, reference.covariance),
              "kid_x1e3": kid * 1e3, "kid_std_x1e3": kid_std * 1e3, "samples": int(len(features)),
              **precision_recall(reference.sample, features, seed=seed)}
    if classes is not None and len(reference.class_histogram):
        scores.update(mode_coverage(classes, reference.class_histogram))
    return scores
