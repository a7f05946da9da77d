"""MlflowRegistrar: logs a trained and evaluated model to MLflow and registers it (backends.tracking).

It runs last, after the Evaluator, so training never depends on MLflow being up: a parent run per pipeline
run with child runs for the Trainer and the Evaluator (and the metric network the first time it is used), the
model logged with the tensorflow flavor and registered as a new version of DATASET-FAMILY; the alias
`champion` moves to it only when the Evaluator blessed it. Cached together with its inputs: a rerun that
trains nothing registers nothing.
"""
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import artifact, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import artifacts
from components.registrar import executor


class MlflowModelVersion(artifact.Artifact):
    """A registered MLflow model version: registration.json and the properties name, version, champion."""
    TYPE_NAME = "latentforge.MlflowModelVersion"  # namespace.Title: what KFP v2 accepts for a custom type


class MlflowRegistrarSpec(ComponentSpec):
    # JSON of components.artifacts.RegistrarConfig.
    PARAMETERS = {"config": ExecutionParameter(type=str),
                  "code_version": ExecutionParameter(type=str, optional=True)}
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_run": ChannelParameter(type=standard_artifacts.ModelRun),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        "metric_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
        "metric_evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation, optional=True),
    }
    OUTPUTS = {"registration": ChannelParameter(type=MlflowModelVersion)}


class MlflowRegistrar(base_component.BaseComponent):
    SPEC_CLASS = MlflowRegistrarSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, model: types.BaseChannel, model_run: types.BaseChannel, evaluation: types.BaseChannel,
                 blessing: types.BaseChannel, config: artifacts.RegistrarConfig,
                 metric_model: Optional[types.BaseChannel] = None,
                 metric_evaluation: Optional[types.BaseChannel] = None, code_version: str = ""):
        super().__init__(spec=MlflowRegistrarSpec(
            model=model, model_run=model_run, evaluation=evaluation, blessing=blessing, metric_model=metric_model,
            metric_evaluation=metric_evaluation, config=artifacts.dump_config(config), code_version=code_version,
            registration=types.Channel(type=MlflowModelVersion)))
