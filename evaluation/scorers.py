"""Scoring a trained model from what it exports: each scorer takes a `ScoringRun` (the SavedModel's signatures, the
test images and labels, the metric network and its reference) and adds its metrics. A family's description lists
the scorers that apply to it (evaluation/scoring.py says what each measures)."""
import dataclasses
import json
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from evaluation.metric_network import FeatureReference, MetricNetwork, feature_scores
from evaluation.metrics import (auroc, classification_scores, feature_statistics, frechet_distance, negative_elbo,
                                reconstruction_errors)



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
