"""Scores of trained models, computed from what they export (their SavedModel signatures) and a metric network.

A family's description (trainers/registry.py) lists the scorers that apply to it:
    score_reconstructions  test_mse, test_bce per pixel; anomaly_auroc when a class was held out of training; the
                           exported anomaly threshold's test_false_positive_rate (and anomaly_precision/_recall)
    score_elbo             test_neg_elbo (reconstruction + KL per example, one sampled coding): VAEs
    score_generation       fid, kid (x 1e3), precision, recall, mode_entropy, mode_kl (see below) of generated images
    score_classification   test_accuracy, per-class accuracy, confusion matrix

FID/KID here are *domain* scores: the features are the penultimate layer of a small CNN trained on the dataset's
own labels (the metric network), or, for a source without labels, of a self-supervised encoder trained on its
images (evaluation/self_supervised.py); not Inception's (which knows nothing of 28x28 digits), so the numbers
compare models on one dataset in one feature space, not across papers. Precision and recall (Kynkaanniemi et
al. 2019) say which a model lacks: fidelity (its samples look real) or coverage (it draws all the data's kinds).
Mode coverage (a labelled metric network only): the metric network's predicted-class histogram over the
generated images; its entropy (log K when every class is equally common) and its KL divergence to the real
train histogram (0 when the proportions match).
"""
import dataclasses
import io
import json
import math
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.linalg
import scipy.stats
import tensorflow as tf
import tf_keras as keras

METRIC_NETWORK_FEATURES = "features"  # the metric network's SavedModel signature: images in [0, 1] -> features


# ---------------------------------------------------------------------------------------------- plain scores

def to_unit(images: np.ndarray, pixel_range: str) -> np.ndarray:
    images = np.asarray(images, np.float32)
    return (images + 1.0) / 2.0 if pixel_range == "symmetric" else images


def reconstruction_errors(images: np.ndarray, reconstructions: np.ndarray, pixel_range: str) -> Dict[str, np.ndarray]:
    """Per example: mean squared error and binary cross-entropy per pixel, both on [0, 1] pixels."""
    x = to_unit(images, pixel_range).reshape(len(images), -1)
    p = np.clip(to_unit(reconstructions, pixel_range).reshape(len(images), -1), 1e-7, 1 - 1e-7)
    return {"mse": np.mean(np.square(x - p), axis=1),
            "bce": -np.mean(x * np.log(p) + (1 - x) * np.log(1 - p), axis=1)}


def negative_elbo(images: np.ndarray, mean: np.ndarray, log_var: np.ndarray, decoded: np.ndarray,
                  reconstruction: str) -> Dict[str, np.ndarray]:
    """Per example, as the VAE trains (trainers/vae.py): reconstruction (summed Bernoulli NLL in nats, or summed
    squared error) + KL(q(z|x) || N(0, I)), `decoded` being the decoder's output for one sampled coding."""
    x = images.reshape(len(images), -1).astype(np.float64)
    p = np.clip(decoded.reshape(len(images), -1).astype(np.float64), 1e-7, 1 - 1e-7)
    if reconstruction == "bce":
        rebuilt = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=1)
    else:
        rebuilt = np.sum(np.square(x - p), axis=1)
    kl = -0.5 * np.sum(1.0 + log_var - np.square(mean) - np.exp(log_var), axis=1)
    return {"neg_elbo": rebuilt + kl, "reconstruction": rebuilt, "kl": kl}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the boolean `positive` (Mann-Whitney U; ties count half)."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes: {n_pos} positive and {n_neg} negative examples")
    ranks = scipy.stats.rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_scores(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> Dict[str, Any]:
    confusion = np.zeros((num_classes, num_classes), np.int64)  # rows: true class, columns: predicted
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
            "per_class_accuracy": per_class.tolist(), "confusion_matrix": confusion.tolist()}


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two Gaussians (Heusel et al. 2017)."""
    covmean, _ = scipy.linalg.sqrtm(cov_a @ cov_b, disp=False)
    # A near-singular product (fewer samples than feature dimensions: 1,000 images in Inception's 2,048) gives a
    # square root that is not finite or far from real: regularise, as the reference implementations do.
    scale = max(float(np.abs(np.diag(cov_a)).max(initial=0.0)), float(np.abs(np.diag(cov_b)).max(initial=0.0)), 1e-12)
    if not np.isfinite(covmean).all() or np.abs(np.imag(covmean)).max(initial=0.0) > 1e-3 * scale:
        offset = np.eye(len(cov_a)) * 1e-6 * scale
        covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    diff = mean_a - mean_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean.real))


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray, subsets: int = 10,
                              subset_size: int = 1000, seed: int = 0) -> Tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 (Binkowski et al. 2018), averaged over
    random subsets: (mean, standard deviation)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors on each side; got {len(a)} and {len(b)}")
    kernel = lambda x, y: (x @ y.T / x.shape[1] + 1.0) ** 3
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
        values.append((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
                      - 2.0 * k_xy.mean())
    return float(np.mean(values)), float(np.std(values))


def class_histogram(classes: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(classes, np.int64), minlength=num_classes)[:num_classes] / max(len(classes), 1)


def mode_coverage(predicted_classes: np.ndarray, real_histogram: np.ndarray) -> Dict[str, float]:
    """Entropy (nats) of the predicted-class histogram and its KL divergence to the real one."""
    generated = class_histogram(predicted_classes, len(real_histogram))
    nonzero = generated > 0
    entropy = max(0.0, -float(np.sum(generated[nonzero] * np.log(generated[nonzero]))))  # no -0.0
    kl = float(np.sum(generated[nonzero] * np.log(generated[nonzero] / np.maximum(real_histogram[nonzero], 1e-12))))
    return {"mode_entropy": entropy, "mode_kl": kl, "mode_entropy_max": math.log(len(real_histogram)),
            "modes_covered": int(nonzero.sum())}


# ------------------------------------------------------------------------------------------- metric network

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


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(squared, 0.0))


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3, seed: int = 0) -> Dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls around
    its points reaching their k-th nearest neighbour. precision: the share of generated points inside the real
    manifold (fidelity); recall: the share of real points inside the generated one (coverage). Both sets are
    cut to the smaller one's size first (the estimate depends on the counts; the paper uses equal ones)."""
    rng = np.random.default_rng(seed)
    count = min(len(real), len(generated))
    if count <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} feature vectors on each side; got "
                         f"{len(real)} real and {len(generated)} generated")
    real = np.asarray(real, np.float64)[rng.choice(len(real), count, replace=False)]
    generated = np.asarray(generated, np.float64)[rng.choice(len(generated), count, replace=False)]

    def radii(points):  # distance to the k-th nearest other point (column 0 of the sort is the point itself)
        return np.sort(_pairwise_distances(points, points), axis=1)[:, k]

    across = _pairwise_distances(generated, real)  # (generated, real)
    precision = np.mean(np.any(across <= radii(real)[None, :], axis=1))
    recall = np.mean(np.any(across.T <= radii(generated)[None, :], axis=1))
    return {"precision": float(precision), "recall": float(recall)}


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


# ------------------------------------------------------------------------------------ scoring a SavedModel

@dataclasses.dataclass(frozen=True)
class EvaluationOptions:
    num_samples: int = 1000  # generated images for FID, KID and mode coverage
    batch_size: int = 250
    seed: int = 0
    anomaly_class: Optional[int] = None  # the class held out of training: anomalous in the AUROC
    sample_steps: Optional[int] = None  # DDPM: DDIM steps (default: the model's config)


def generate(signature: Callable, count: int, seed: int, batch_size: int,
             inputs: Optional[Dict[str, Any]] = None) -> np.ndarray:
    """`count` images in [0, 1] from a generative SavedModel's signature (n, seed, ...), in batches; `inputs`: its
    other inputs, as the signature types them (a DDPM's steps; a conditional one's labels, repeated cyclically
    within each batch, and guidance: see `requested_labels`)."""
    batches = []
    # A loaded SavedModel's signature takes keywords; a live model's (trainers/best_epoch.py) its positional specs.
    positional, keywords = signature.structured_input_signature
    specs = keywords or {spec.name: spec for spec in positional}
    extra = {k: tf.constant(v, specs[k].dtype) for k, v in (inputs or {}).items()}
    for index, start in enumerate(range(0, count, batch_size)):
        n = tf.constant(min(batch_size, count - start), tf.int32)
        batch_seed = tf.constant(seed * 100_003 + index, tf.int32)
        batches.append(signature(n=n, seed=batch_seed, **extra)["images"].numpy())
    return np.concatenate(batches)


class ImageBatches:
    """The test images a scorer reads, one batch at a time and in the same order on every pass: an array's slices,
    or (the Evaluator's) batches parsed again from the TFRecords on each pass, so that no scorer holds the whole
    split and its reconstructions at once (the Evaluator's memory stays flat as the data grows). `read()` returns
    a fresh iterable of (B, H, W, C) float32 arrays."""

    def __init__(self, read: Callable[[], Iterable[np.ndarray]], count: int):
        self._read, self.count = read, int(count)

    @classmethod
    def of(cls, images: Union[np.ndarray, "ImageBatches"], batch_size: int) -> "ImageBatches":
        if isinstance(images, ImageBatches):
            return images
        images = np.asarray(images, np.float32)
        return cls(lambda: (images[s:s + batch_size] for s in range(0, len(images), batch_size)), len(images))

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self._read())

    def __len__(self) -> int:
        return self.count


def _batched(function: Callable, images: ImageBatches) -> Iterator[Dict[str, np.ndarray]]:
    for batch in images:
        yield {k: v.numpy() for k, v in function(images=tf.constant(batch)).items()}


def _concatenated(function: Callable, images: ImageBatches) -> Dict[str, np.ndarray]:
    parts = list(_batched(function, images))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclasses.dataclass
class ScoringRun:
    """One SavedModel being scored: what a family's scorers read, and the `metrics` and `arrays` (what the
    pictures need: codings, generated samples) they add to."""
    signatures: Dict[str, Callable]
    metadata: Dict[str, Any]  # the exporter's (trainers/export.py)
    images: ImageBatches  # the test split, in the model's pixel range
    labels: np.ndarray  # -1: none
    pixel_range: str
    config: Dict[str, Any]  # the model's full config
    num_classes: int
    options: EvaluationOptions
    metric_network: Optional[MetricNetwork] = None
    reference: Optional[FeatureReference] = None
    metrics: Dict[str, Any] = dataclasses.field(default_factory=dict)
    arrays: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


# Scorers: a family's description lists the ones that apply to it (trainers/registry.py), in order.

def score_reconstructions(run: ScoringRun) -> None:
    """test_mse, test_bce per pixel through `reconstruct`; the codings from `encode`; the AUROC of
    `anomaly_score` for the held-out class when there is one; and the exported anomaly threshold's decisions
    (see `anomaly_decision_scores`) when the SavedModel carries one."""
    options, calibration = run.options, run.metadata.get("anomaly")
    wants_scores = options.anomaly_class is not None or bool(calibration)
    errors, encoded, scored = [], [], []
    for batch in run.images:  # one pass: the reconstructions of a batch are dropped once its errors are in
        x = tf.constant(batch)
        errors.append(reconstruction_errors(batch, run.signatures["reconstruct"](images=x)["reconstructions"].numpy(),
                                            run.pixel_range))
        encoded.append({k: v.numpy() for k, v in run.signatures["encode"](images=x).items()})
        if wants_scores:
            scored.append(run.signatures["anomaly_score"](images=x)["scores"].numpy())
    run.metrics.update(test_mse=float(np.concatenate([e["mse"] for e in errors]).mean()),
                       test_bce=float(np.concatenate([e["bce"] for e in errors]).mean()))
    run.arrays.update({k: np.concatenate([e[k] for e in encoded]) for k in encoded[0]})  # codings (a VAE's log_var)
    if not wants_scores:
        return
    scores = np.concatenate(scored)
    anomalous = (run.labels == options.anomaly_class) if options.anomaly_class is not None else np.zeros(
        len(scores), bool)
    if options.anomaly_class is not None:
        run.metrics["anomaly_class"] = int(options.anomaly_class)
        run.metrics["anomaly_auroc"] = auroc(scores, anomalous)
    if calibration:
        run.metrics.update(anomaly_decision_scores(scores, anomalous, calibration["threshold"]),
                           anomaly_target_fpr=float(calibration["target_false_positive_rate"]))


def anomaly_decision_scores(scores: np.ndarray, anomalous: np.ndarray, threshold: float) -> Dict[str, float]:
    """What calling `scores > threshold` anomalous does on labelled data (`anomalous`: the truth): the share of
    normal images flagged (the false-positive rate the threshold was calibrated for) and, when there are
    anomalous images, the precision and recall of the flags."""
    flagged, anomalous = np.asarray(scores) > threshold, np.asarray(anomalous, bool)
    if not np.any(~anomalous):
        raise ValueError("no normal images to measure the false-positive rate on")
    result = {"anomaly_threshold": float(threshold),
              "test_false_positive_rate": float(flagged[~anomalous].mean())}
    if np.any(anomalous):
        hits = int(np.sum(flagged & anomalous))
        result["anomaly_recall"] = hits / int(anomalous.sum())
        if flagged.any():  # (no flags: precision is undefined, and left out)
            result["anomaly_precision"] = hits / int(flagged.sum())
    return result


def score_elbo(run: ScoringRun) -> None:
    """A VAE's test_neg_elbo and test_kl: one coding sampled per example from `encode`'s mean and log_var (after
    score_reconstructions, whose encodings it reuses), decoded by `decode`."""
    options = run.options
    if "log_var" not in run.arrays:
        run.arrays.update(_concatenated(run.signatures["encode"], run.images))
    mean, log_var = run.arrays["codings"], run.arrays["log_var"]
    rng = np.random.default_rng(options.seed)
    codings = (mean + np.exp(0.5 * log_var) * rng.standard_normal(mean.shape)).astype(np.float32)
    parts, start = [], 0
    for batch in run.images:  # the same order as the encodings: batch i's codings are the next len(batch)
        end = start + len(batch)
        decoded = run.signatures["decode"](codings=tf.constant(codings[start:end]))["images"].numpy()
        parts.append(negative_elbo(batch, mean[start:end], log_var[start:end], decoded,
                                   run.config.get("reconstruction", "bce")))
        start = end
    run.metrics.update(test_neg_elbo=float(np.concatenate([p["neg_elbo"] for p in parts]).mean()),
                       test_kl=float(np.concatenate([p["kl"] for p in parts]).mean()))


def score_generation(run: ScoringRun) -> None:
    """options.num_samples images from the exporter's generating signature (metadata `generate_signature`, with
    its `generate_defaults`; options.sample_steps overrides a DDPM's steps); FID, KID and mode coverage when a
    metric network is given."""
    options, metadata = run.options, run.metadata
    name = metadata.get("generate_signature") or ("generate" if "generate" in run.signatures else "sample")
    signature = run.signatures[name]
    inputs = dict(metadata.get("generate_defaults", {}))
    takes = set(signature.structured_input_signature[1])
    if "steps" in takes:
        inputs["steps"] = options.sample_steps or inputs.get("steps") or run.config.get("sample_steps")
    samples = generate(signature, options.num_samples, options.seed, options.batch_size,
                       {k: v for k, v in inputs.items() if k in takes})
    run.arrays["samples"] = samples
    if run.metric_network is not None and run.reference is not None:
        features, classes = run.metric_network(samples)
        if classes is not None:
            run.arrays["sample_classes"] = classes
        run.arrays["sample_features"] = features  # per-class FID's (score_model drops them before returning)
        run.metrics.update(feature_scores(features, classes, run.reference, options.seed))


def requested_labels(count: int, batch_size: int, labels) -> np.ndarray:
    """The class each of `generate`'s `count` images was asked for: `labels` repeated cyclically in each batch."""
    labels = np.asarray(labels, np.int64)
    return np.concatenate([labels[np.arange(min(batch_size, count - start)) % len(labels)]
                           for start in range(0, count, batch_size)])


def score_conditional_generation(run: ScoringRun) -> None:
    """A class-conditional generator's conditional accuracy: how often the metric network recognises the class
    each of score_generation's images was asked for (every class in turn, at the model's default guidance), in
    all and per class; and per-class FID, each class's generated images against that class's real ones. Needs
    a metric network (a labelled source)."""
    if run.metric_network is None or "sample_classes" not in run.arrays:
        return
    labels = run.metadata.get("generate_defaults", {}).get("labels")
    if labels is None:
        raise ValueError("a conditional model's metadata must list its default generate labels")
    requested = requested_labels(len(run.arrays["samples"]), run.options.batch_size, labels)
    run.metrics.update(conditional_scores(run.arrays["sample_features"], run.arrays["sample_classes"], requested,
                                          run.reference, int(np.max(labels)) + 1))


def conditional_scores(features: np.ndarray, classes: np.ndarray, requested: np.ndarray,
                       reference: FeatureReference, num_classes: int) -> Dict[str, Any]:
    """conditional_accuracy (the share of images the metric network puts in the class they were asked for),
    its per-class values, and per_class_fid (class k's generated features against class k's real ones; NaN for
    a class with fewer than 2 images); `mean_class_fid` averages the finite ones."""
    hits = classes == requested
    per_class_fid = []
    for k in range(num_classes):
        mine = features[requested == k]
        per_class_fid.append(frechet_distance(*feature_statistics(mine), *reference.class_statistics(k))
                             if len(mine) >= 2 else float("nan"))
    finite = [f for f in per_class_fid if np.isfinite(f)]
    return {"conditional_accuracy": float(hits.mean()),
            "per_class_conditional_accuracy": [float(hits[requested == k].mean()) if np.any(requested == k)
                                               else float("nan") for k in range(num_classes)],
            "per_class_fid": per_class_fid, "mean_class_fid": float(np.mean(finite)) if finite else float("nan")}


def score_classification(run: ScoringRun) -> None:
    """test_accuracy, per-class accuracy and the confusion matrix of `classify` on the labelled test images."""
    predicted = _concatenated(run.signatures["classify"], run.images)["classes"]
    scores = classification_scores(predicted, run.labels, run.num_classes)
    run.metrics.update(test_accuracy=scores["accuracy"], per_class_accuracy=scores["per_class_accuracy"],
                       confusion_matrix=scores["confusion_matrix"])


def score_model(family, saved_model_dir: str, images: Union[np.ndarray, ImageBatches], labels: np.ndarray,
                pixel_range: str, config: Dict[str, Any], num_classes: int,
                options: EvaluationOptions = EvaluationOptions(),
                metric_network: Optional[MetricNetwork] = None,
                reference: Optional[FeatureReference] = None) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(metrics, arrays) for a SavedModel on the test images (in the model's pixel range) and labels (-1: none),
    by the scorers of `family` (its description in trainers/registry.py)."""
    loaded = tf.saved_model.load(saved_model_dir)
    metadata = json.loads(loaded.metadata.numpy().decode()) if hasattr(loaded, "metadata") else {}
    images = ImageBatches.of(images, options.batch_size)
    run = ScoringRun(dict(loaded.signatures), metadata, images, labels, pixel_range, config, num_classes, options,
                     metric_network, reference, metrics={"test_examples": int(len(images))})
    for scorer in family.scorers:
        scorer(run)
    run.arrays.pop("log_var", None)
    run.arrays.pop("sample_features", None)
    return run.metrics, run.arrays


# ------------------------------------------------------------------------------------------------ blessing

@dataclasses.dataclass(frozen=True)
class Blessing:
    blessed: bool
    metric: str
    higher_is_better: bool
    candidate: Optional[float]
    champion: Optional[float]  # None: no champion to beat
    champion_version: Optional[str]
    margin: float
    reason: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def finite_metrics(metrics: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """(metrics without the values that could not be computed, their names): a NaN or infinite scalar is dropped,
    a NaN or infinite entry of a list (a class with too few images for its FID) becomes None. Nothing non-finite
    goes on to ML Metadata, MLflow or the blessing."""
    def clean(value):
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    kept, dropped = {}, []
    for name, value in metrics.items():
        if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
            dropped.append(name)
        else:
            kept[name] = clean(value)
    return kept, dropped


def decide_blessing(key_metric: Tuple[str, bool], metrics: Dict[str, Any],
                    champion: Optional[Tuple[str, Dict[str, float]]], margin: float,
                    unmeasured_because: str = "") -> Blessing:
    """Blessed when the key metric (name, True when higher is better: the family's) beats the champion's by
    `margin` (relative: 0.01 = 1 % better), or when there is no champion. `champion`: (version, its metrics) or
    None.

    A key metric that could not be measured (absent or non-finite; `unmeasured_because` says why) is no evidence
    either way: such a model is blessed only when there is no champion (the first model of its name, so nothing
    is replaced and the pipeline still pushes and registers it), never in place of a champion."""
    metric, higher = key_metric
    candidate = metrics.get(metric)
    if candidate is not None and not math.isfinite(candidate):
        candidate, unmeasured_because = None, unmeasured_because or f"it came out {candidate}"
    common = dict(metric=metric, higher_is_better=higher, candidate=candidate, margin=margin)
    if candidate is None:
        why = f"{metric} could not be measured" + (f" ({unmeasured_because})" if unmeasured_because else "")
        if champion is None:
            return Blessing(True, champion=None, champion_version=None,
                            reason=f"{why}; no champion yet, so blessed unscored (nothing is replaced)", **common)
        return Blessing(False, champion=None, champion_version=champion[0],
                        reason=f"{why}; not blessed: an unscored model never replaces champion version "
                               f"{champion[0]}", **common)
    if champion is None:
        return Blessing(True, champion=None, champion_version=None,
                        reason=f"no champion yet: blessed with {metric} {candidate:.6g}", **common)
    version, champion_metrics = champion
    best = champion_metrics.get(metric)
    if best is None:
        return Blessing(True, champion=None, champion_version=version,
                        reason=f"champion version {version} has no {metric}: blessed", **common)
    needed = best * (1 + margin) if higher else best * (1 - margin)
    better = candidate > needed if higher else candidate < needed
    relation = ("above" if higher else "below")
    reason = (f"{metric} {candidate:.6g} vs champion version {version}'s {best:.6g}: "
              f"{'beats' if better else 'does not beat'} it by the margin {margin:g} (needs {relation} {needed:.6g})")
    return Blessing(better, champion=best, champion_version=version, reason=reason, **common)
