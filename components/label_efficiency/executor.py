"""Executor of LabelEfficiencyCurve (component.py says what it does)."""
import os
from typing import Any, Dict, List, Tuple

import numpy as np
import tensorflow_transform as tft
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components import artifacts
from evaluation import figures, scoring
from trainers import classifier, data, job as training, label_efficiency, registry


def _read(pattern: str, spec, *features: str) -> Tuple[np.ndarray, ...]:
    batches = [tuple(batch[name].numpy() for name in features)
               for batch in data.image_dataset(pattern, spec, 1024, shuffle=False)]
    return tuple(np.concatenate([b[i] for b in batches]) for i in range(len(features)))


def _split_pattern(examples: types.Artifact, split: str) -> str:
    return os.path.join(artifact_utils.get_split_uri([examples], split), "*")


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        config = artifacts.load_config(artifacts.LabelEfficiencyConfig, exec_properties["config"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        spec = tft.TFTransformOutput(artifact_utils.get_single_uri(input_dict["transform_graph"])
                                     ).transformed_feature_spec()
        if "label_rank" not in spec:
            raise ValueError("the label-efficiency curve needs the Transform's label_rank: run it with "
                             "labels_per_class set to the largest K")
        images, labels, ranks = _read(_split_pattern(examples, "train"), spec, "image", "label", "label_rank")
        # Scored where the ModelEvaluator scores: the test split when the data has one.
        split = "test" if "test" in artifact_utils.decode_split_names(examples.split_names) else "eval"
        test_images, test_labels = _read(_split_pattern(examples, split), spec, "image", "label")
        labelled = test_labels >= 0
        test = (test_images[labelled], test_labels[labelled])

        base_model = artifact_utils.get_single_instance(input_dict["base_model"])
        pretrained, _ = training.restore(artifacts.keras_state_dir(path_utils.serving_model_path(base_model.uri)))
        encoder = classifier.reusable_encoder(pretrained)
        synthetic = {}
        for artifact in input_dict.get("synthetic_examples") or []:
            k = artifacts.synthetic_labels_per_class(artifact)
            synthetic[k] = (*_read(_split_pattern(artifact, "train"), spec, "image", "label"),
                            artifact.get_string_custom_property(artifacts.MODEL_VERSION_PROPERTY))
        classifier_config = registry.make_config(classifier.NAME, config.classifier)
        semi_supervised = None
        if config.semi_supervised:
            model = registry.get_model(config.semi_supervised["model"])
            unit = scoring.to_unit(images, config.data_pixel_range)
            in_range = lambda x: x * 2.0 - 1.0 if model.pixel_range == "symmetric" else x
            semi_supervised = (model, registry.make_config(config.semi_supervised["model"],
                                                           config.semi_supervised["config"]),
                               in_range(unit), (in_range(scoring.to_unit(test[0], config.data_pixel_range)), test[1]))

        # The curve's lines: the classifier's methods, then the semi-supervised family's own line.
        lines = label_efficiency.METHODS + ((semi_supervised[0].family.name,) if semi_supervised else ())
        accuracy: Dict[str, List[float]] = {}
        points = []
        for k in config.labels_per_class:
            chosen = ranks < k
            drawn = synthetic.get(k)
            logging.info("label-efficiency curve: %d labels per class (%d examples%s)", k, int(chosen.sum()),
                         f", {len(drawn[0])} generated" if drawn else "")
            scores, details = label_efficiency.curve_point(
                classifier_config, encoder, (images[chosen], labels[chosen]), test, config.examples_per_phase,
                drawn[:2] if drawn else None)
            if semi_supervised is not None:
                model, model_config, model_images, model_test = semi_supervised
                logging.info("label-efficiency curve: %s on %d labels per class and %d unlabelled images",
                             config.semi_supervised["model"], k, int((~chosen).sum()))
                scores[model.family.name], trained = label_efficiency.semi_supervised_point(
                    model, model_config, (model_images, labels), chosen, model_test)
                details.update(trained)
            for method in lines:
                if method in scores:
                    accuracy.setdefault(method, []).append(scores[method])
            points.append({"labels_per_class": k, **details, **({"generator": drawn[2]} if drawn else {}),
                           "accuracy": scores})
            logging.info("  %s", ", ".join(f"{m} {a:.3f}" for m, a in scores.items()))
        # A method measured at only some K (generated data for some K only) is not a line of the curve.
        accuracy = {m: v for m, v in accuracy.items() if len(v) == len(config.labels_per_class)}

        out = artifact_utils.get_single_uri(output_dict["curve"])
        curve = artifacts.LabelEfficiencyCurve(list(config.labels_per_class), accuracy, split, int(len(test[0])),
                                               points, dict(config.classifier))
        files = [curve.write(out), figures.save_label_efficiency_curve(
            os.path.join(out, artifacts.CURVE_PICTURE), config.labels_per_class, accuracy)]
        if config.tracking:
            self._log(config, curve, files)

    def _log(self, config: artifacts.LabelEfficiencyConfig, curve: artifacts.LabelEfficiencyCurve,
             files: List[str]) -> None:
        from backends import tracking  # pylint: disable=import-outside-toplevel  (MLflow's one module)
        pipeline_run_id = (self._context.pipeline_run_id if self._context else None) or "unknown"
        child = tracking.ChildRun(
            name="LabelEfficiencyCurve", params={"labels_per_class": curve.labels_per_class, **curve.config},
            points={f"test_accuracy.{method}": dict(zip(curve.labels_per_class, values))
                    for method, values in curve.accuracy.items()},
            tags={"tfx.pipeline_run_id": pipeline_run_id}, artifacts=files)
        run_id = tracking.log_child_run(tracking.TrackingConfig(**config.tracking), pipeline=config.pipeline,
                                        pipeline_run_id=pipeline_run_id, child=child,
                                        parent_tags={"dataset": config.dataset})
        logging.info("MLflow: label-efficiency curve logged in run %s", run_id)
