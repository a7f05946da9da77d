"""Executor of MlflowRegistrar: gathers what the Trainer and Evaluator left and hands it to backends.tracking."""
import dataclasses
import functools
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from backends import storage, tracking
from components import artifacts
from evaluation import scoring


def _execution_id(artifact: types.Artifact) -> Optional[str]:
    """The id of the execution that wrote `artifact`: TFX's local layout is PIPELINE_ROOT/NODE/KEY/EXECUTION_ID."""
    last = os.path.basename(artifact.uri.rstrip("/"))
    return last if last.isdigit() else None


def _scalars(values: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _still_beats(blessing: Dict[str, Any], metrics: Dict[str, Any],
                 champion: Optional[Tuple[str, Dict[str, float]]]) -> bool:
    """Whether the blessed model should take @champion from `champion` (the registry's now): yes when it is the
    version the Evaluator compared against (or there is none), else when the model beats this newer champion
    by the same rule and margin."""
    if champion is None or champion[0] == blessing.get("champion_version"):
        return True
    key = (blessing["metric"], bool(blessing["higher_is_better"]))
    decision = scoring.decide_blessing(key, metrics, champion, float(blessing["margin"]))
    if not decision.blessed:
        logging.info("MLflow: not moving @%s: %s (it moved since the Evaluator ran)", tracking.CHAMPION,
                     decision.reason)
    return decision.blessed


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        config = artifacts.load_config(artifacts.RegistrarConfig, exec_properties["config"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        model_run = artifact_utils.get_single_instance(input_dict["model_run"])
        evaluation = artifact_utils.get_single_instance(input_dict["evaluation"])
        blessing_artifact = artifact_utils.get_single_instance(input_dict["blessing"])
        trained = artifacts.TrainerMetrics.read(model_run.uri)
        evaluated = artifacts.Evaluation.read(evaluation.uri)
        blessing = evaluated.blessing
        pipeline_run_id = (self._context.pipeline_run_id if self._context else None) or "unknown"
        ids = {"tfx.model_artifact_id": model.id, "tfx.trainer_execution_id": _execution_id(model),
               "tfx.evaluator_execution_id": _execution_id(evaluation),
               "tfx.registrar_execution_id": _execution_id(
                   artifact_utils.get_single_instance(output_dict["registration"])),
               "tfx.pipeline_run_id": pipeline_run_id, "tfx.model_uri": model.uri}
        ids = {k: str(v) for k, v in ids.items() if v is not None}

        # Which epoch was exported (a generative model's best by the sample-quality proxy, trainers/best_epoch.py).
        kept = {k: v for k, v in trained.details.items() if k.startswith(("kept_", "last_proxy", "proxy_seconds"))}
        trainer = tracking.ChildRun(
            name="Trainer", params={"model": trained.model, **(trained.full_config or trained.config)},
            history={k: v for k, v in trained.history.items() if isinstance(v, list)}, metrics=_scalars(kept),
            tags={"family": trained.family or "", **ids, **({"kept_by": kept["kept_by"]} if "kept_by" in kept else {})},
            artifacts=storage.glob(os.path.join(model_run.uri, "*.png")) + [
                os.path.join(model_run.uri, artifacts.METRICS_FILE)])
        evaluator = tracking.ChildRun(
            name="Evaluator", metrics=_scalars(evaluated.metrics),
            tags={"blessed": str(blessing["blessed"]), "blessing.reason": blessing["reason"],
                  "blessing.metric": blessing["metric"], **ids,
                  # the source's class names in id order (what the plots and a conditional model's labels mean)
                  **({"class_names": json.dumps(evaluated.class_names)[:5000]} if evaluated.class_names else {})},
            artifacts=storage.glob(os.path.join(evaluation.uri, "*.png")) + [
                os.path.join(evaluation.uri, artifacts.EVALUATION_FILE)])
        metric_network = None
        if input_dict.get("metric_model"):
            metric_model = artifact_utils.get_single_instance(input_dict["metric_model"])
            metric_scores = artifacts.MetricNetworkEvaluation.read(
                artifact_utils.get_single_uri(input_dict["metric_evaluation"]))
            child = tracking.ChildRun(name="MetricNetworkTrainer", params=metric_scores.config,
                                      metrics=_scalars(dataclasses.asdict(metric_scores)),
                                      tags={"tfx.artifact_uri": metric_model.uri,
                                            "tfx.metric_network_execution_id": str(_execution_id(metric_model))})
            metric_network = (child, os.path.join(metric_model.uri, artifacts.METRIC_NETWORK_DIR),
                              artifacts.metric_input_example(evaluation.uri), config.metric_network_model)

        # A tuned model says so on its version: the values a RayTuner picked, the trial and the metric it won by.
        tuned = trained.details.get("tuned") or {}
        tuned_tags = {"tuned.values": json.dumps(tuned.get("values", {}), sort_keys=True)[:5000],
                      "tuned.trial": str(tuned.get("trial", "")), "tuned.metric": str(tuned.get("metric", "")),
                      "tuned.best": str(tuned.get("best", ""))} if tuned else {}
        logged = tracking.log_pipeline_run(
            tracking.TrackingConfig(**config.tracking), pipeline=config.pipeline,
            pipeline_run_id=pipeline_run_id, registered_name=config.registered_model,
            saved_model_dir=path_utils.serving_model_path(model.uri),
            input_example=artifacts.input_example(evaluation.uri),
            blessed=bool(blessing["blessed"]), key_metric=blessing["metric"],
            key_metric_value=blessing["candidate"], trainer=trainer, evaluator=evaluator,
            version_tags={**ids, "tfx.blessing_uri": blessing_artifact.uri, **tuned_tags},
            parent_tags={"source": config.source, "dataset": config.dataset}, metric_network=metric_network,
            still_beats=functools.partial(_still_beats, blessing, evaluated.metrics))
        logging.info("MLflow: %s version %s%s", logged.name, logged.version,
                     f" is now @{tracking.CHAMPION}" if logged.champion else "")

        registration = artifact_utils.get_single_instance(output_dict["registration"])
        artifacts.set_registration(registration, logged.name, logged.version, logged.champion,
                                   {**dataclasses.asdict(logged), "tracking_uri": config.tracking["uri"]})
