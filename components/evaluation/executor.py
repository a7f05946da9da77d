"""Executors of MetricNetworkTrainer and ModelEvaluator (components/evaluation/component.py)."""
import dataclasses
import os
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils, path_utils

from components import artifacts
from evaluation import figures, inception, scoring, self_supervised
from trainers import data, progress, registry

def evaluation_split(examples: types.Artifact) -> str:
    """The split models are scored on: test when the data has one, else eval."""
    names = artifact_utils.decode_split_names(examples.split_names)
    return "test" if "test" in names else "eval"


def _split_files(examples: types.Artifact, split: str) -> str:
    return os.path.join(artifact_utils.get_split_uri([examples], split), "*")


def read_raw_split(examples: types.Artifact, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """ExampleGen's examples of one split: (images (N, H, W, C) float32 in [0, 1], labels (N,) int64)."""
    shape = list(artifacts.image_shape(examples))
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    files = sorted(tf.io.gfile.glob(_split_files(examples, split)))
    if not files:
        raise FileNotFoundError(f"no examples for split {split!r} under {examples.uri}")
    dataset = (tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024)
               .map(lambda records: tf.io.parse_example(records, spec))
               .map(lambda ex: (tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), [-1, *shape]), ex["label"])))
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    return np.concatenate(images).astype(np.float32) / 255.0, np.concatenate(labels)


def read_transformed_split(examples: types.Artifact, transform_graph: types.Artifact, split: str,
                           convert: Callable[[np.ndarray], np.ndarray] = lambda images: images,
                           labelled_only: bool = False, batch_size: int = 250
                           ) -> Tuple[scoring.ImageBatches, np.ndarray]:
    """The Transform's examples of one split: (their images, `convert`ed, as batches parsed again from the files on
    each pass, in the same order; their labels). `labelled_only`: the examples with a label (>= 0)."""
    spec = tft.TFTransformOutput(transform_graph.uri).transformed_feature_spec()
    dataset = data.image_dataset(_split_files(examples, split), spec, batch_size, shuffle=False,
                                 keep=(lambda ex: ex["label"] >= 0) if labelled_only else None)
    labels = [batch["label"].numpy() for batch in dataset]
    if not labels:
        raise ValueError(f"the {split} split of {examples.uri} has no {'labelled ' if labelled_only else ''}examples "
                         "to score: check the source's labels and the split sizes")
    labels = np.concatenate(labels)
    return scoring.ImageBatches(lambda: (convert(batch["image"].numpy()) for batch in dataset), len(labels)), labels


class MetricNetworkExecutor(base_executor.BaseExecutor):
    """Trains the feature network FID, KID and precision/recall are measured in: a classifier on the labels, or
    (an unlabelled source, or config method self_supervised) a contrastive encoder on the images alone."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        config = artifacts.load_config(scoring.MetricNetworkConfig, exec_properties["config"])
        num_classes = len(artifacts.class_names(examples))
        method, epochs = config.resolved_method(num_classes), config.resolved_epochs(num_classes)
        if method == "classifier" and num_classes < 2:
            raise ValueError(f"the classifier metric network needs labelled data with at least 2 classes; "
                             f"{examples.uri} has {num_classes}: use the self-supervised one")
        images, labels = read_raw_split(examples, "train")
        split = evaluation_split(examples)
        test_images, test_labels = read_raw_split(examples, split)
        model_dir = artifact_utils.get_single_uri(output_dict["model"])
        export_dir = os.path.join(model_dir, artifacts.METRIC_NETWORK_DIR)
        if method == "classifier":
            labelled = labels >= 0
            images, labels = images[labelled], labels[labelled]
            test_images, test_labels = test_images[test_labels >= 0], test_labels[test_labels >= 0]
            logging.info("training the metric network on %d labelled images for %d epochs", len(images), epochs)
            network = scoring.build_metric_network(images.shape[1:], num_classes, config)
            network.fit(images, labels, batch_size=config.batch_size, epochs=epochs, shuffle=True, verbose=0,
                        callbacks=[progress.EpochProgress(config.batch_size)])
            scoring.export_metric_network(network, export_dir)
        elif method == "inception":
            logging.info("the feature network is the Inception graph %s", config.inception_path)
            inception.export_feature_network(config.inception_path, images.shape[1:], export_dir)
            # Its reference: at most config.reference_images train images (each costs an Inception pass at 299x299).
            kept = np.random.default_rng(config.seed).permutation(len(images))[:config.reference_images]
            images, labels = images[np.sort(kept)], labels[np.sort(kept)]
            test_images, test_labels = test_images[:config.reference_images], test_labels[:config.reference_images]
        else:
            logging.info("training the self-supervised feature network on %d images for %d epochs", len(images),
                         epochs)
            encoder = self_supervised.train_contrastive(
                images, config, epochs, [progress.EpochProgress(config.batch_size)]).encoder
            scoring.export_metric_network(self_supervised.feature_model(encoder), export_dir)
        loaded = scoring.MetricNetwork(export_dir)
        train_features, _ = loaded(images)
        reference = scoring.FeatureReference.from_features(
            train_features, labels, num_classes if loaded.classifies else 0, seed=config.seed)
        reference.save(model_dir)

        test_features, predicted = loaded(test_images)
        # The floor: real held-out images score this against the train split; no generator can expect less.
        floor = scoring.feature_scores(test_features, predicted, reference, seed=config.seed)
        if predicted is not None:
            accuracy = float(np.mean(predicted == test_labels))
        elif np.all(test_labels >= 0) and np.all(labels >= 0) and len(test_labels):
            accuracy = self_supervised.nearest_neighbour_accuracy(train_features, labels, test_features, test_labels)
        else:
            accuracy = None
        evaluated = artifacts.MetricNetworkEvaluation(
            test_accuracy=accuracy, split=split, train_examples=int(len(images)),
            test_examples=int(len(test_images)), fid_floor=floor["fid"], kid_floor_x1e3=floor["kid_x1e3"],
            config=dataclasses.asdict(config), method=method, precision_floor=floor["precision"],
            recall_floor=floor["recall"])
        evaluated.write(artifact_utils.get_single_uri(output_dict["evaluation"]))
        logging.info("metric network (%s): test accuracy %s, FID floor (test vs train) %.3f", method,
                     "n/a" if accuracy is None else f"{accuracy:.4f}", evaluated.fid_floor)


class ModelEvaluatorExecutor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from backends import tracking  # pylint: disable=import-outside-toplevel  (MLflow's one module)
        config = artifacts.load_config(artifacts.EvaluatorConfig, exec_properties["config"])
        family = registry.family(config.family)
        model = artifact_utils.get_single_instance(input_dict["model"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        transform_graph = artifact_utils.get_single_instance(input_dict["transform_graph"])
        options = scoring.EvaluationOptions(**config.options)
        split = evaluation_split(examples)
        convert = lambda images: images
        if config.data_pixel_range and config.data_pixel_range != config.pixel_range:
            unit = lambda images: scoring.to_unit(images, config.data_pixel_range)
            convert = (lambda images: unit(images) * 2.0 - 1.0) if config.pixel_range == "symmetric" else unit
        # Read a batch at a time by the scorers (scoring.ImageBatches): only per-image results stay in memory.
        images, labels = read_transformed_split(examples, transform_graph, split, convert,
                                                family.supervised or options.anomaly_class is not None,
                                                options.batch_size)
        first_images = next(iter(images))[:2]

        network = reference = None
        if input_dict.get("metric_model"):
            metric_dir = artifact_utils.get_single_uri(input_dict["metric_model"])
            network = scoring.MetricNetwork(os.path.join(metric_dir, artifacts.METRIC_NETWORK_DIR))
            reference = scoring.FeatureReference.load(metric_dir)
        saved_model = path_utils.serving_model_path(model.uri)
        logging.info("evaluating %s on the %s split (%d images)", family.name, split, len(images))
        metrics, arrays = scoring.score_model(family, saved_model, images, labels, config.pixel_range,
                                              config.model_config, config.num_classes, options, network, reference)
        metrics["split"] = split
        metrics, dropped = scoring.finite_metrics(metrics)
        if dropped:
            logging.warning("evaluation: %s could not be computed (non-finite) and are left out", ", ".join(dropped))

        key = family.key_metric[0]
        unmeasured = ("it came out non-finite" if key in dropped else
                      "no feature network to score samples with" if family.generative and network is None else "")
        champion = tracking.champion_metrics(tracking.TrackingConfig(**config.tracking), config.registered_model)
        blessing = scoring.decide_blessing(family.key_metric, metrics, champion, float(config.margin), unmeasured)
        logging.info("evaluation: %s", blessing.reason)

        evaluation_dir = artifact_utils.get_single_uri(output_dict["evaluation"])
        class_names = list(config.class_names)
        artifacts.Evaluation(family.name, metrics, dataclasses.asdict(blessing), class_names).write(
            evaluation_dir, input_example=family.input_example(first_images, config.model_config, options.seed),
            # The metric network's input example: real test images in [0, 1].
            metric_input_example=scoring.to_unit(first_images, config.pixel_range))
        for path in self._figures(metrics, arrays, labels, reference, evaluation_dir, class_names):
            logging.info("figure: %s", path)

        evaluation_artifact = artifact_utils.get_single_instance(output_dict["evaluation"])
        artifacts.set_key_metric(evaluation_artifact, blessing.metric, blessing.candidate)
        blessing_artifact = artifact_utils.get_single_instance(output_dict["blessing"])
        # As TFX's Evaluator writes it: the Pusher reads the `blessed` property; the file is for people.
        blessing_artifact.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                                  int(blessing.blessed))
        blessing_artifact.set_string_custom_property(artifacts.BLESSING_REASON_PROPERTY, blessing.reason)
        io_utils.write_string_file(os.path.join(blessing_artifact.uri, "BLESSED" if blessing.blessed
                                                else "NOT_BLESSED"), blessing.to_json())

    @staticmethod
    def _figures(metrics, arrays, labels, reference, directory, class_names) -> List[str]:
        paths = []
        if "codings" in arrays:
            paths.append(figures.save_codings_map(os.path.join(directory, "codings.png"), arrays["codings"], labels,
                                                  class_names))
        if "samples" in arrays:
            paths.append(figures.save_png(os.path.join(directory, "samples.png"),
                                          figures.image_grid(arrays["samples"][:64], 8)))
        if "sample_classes" in arrays and reference is not None:
            generated = scoring.class_histogram(arrays["sample_classes"], len(reference.class_histogram))
            paths.append(figures.save_class_histograms(os.path.join(directory, "modes.png"), generated,
                                                       reference.class_histogram, class_names))
        if "confusion_matrix" in metrics:
            paths.append(figures.save_confusion_matrix(os.path.join(directory, "confusion.png"),
                                                       np.array(metrics["confusion_matrix"]), class_names))
        return paths
