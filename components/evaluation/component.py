"""Two TFX components that score what the Trainer made.

MetricNetworkTrainer: once per dataset (TFX's cache: its only input is ExampleGen's examples), a small CNN
classifier trained on every labelled train example. Its features are what FID and KID compare; its
predictions give mode coverage. Output `model`: the SavedModel plus the train split's feature reference;
output `evaluation`: its test accuracy and the FID floor (the test split against the train split).

ModelEvaluator: scores the Trainer's SavedModel on the test split (the eval split when there is no test
split) with evaluation.scoring, draws what a person looks at, and blesses the model when its family's key
metric beats the registry's current champion by `margin` (or when there is no champion). The Pusher pushes
only blessed models; the MLflow registrar moves the `champion` alias only to blessed ones.
"""
from typing import Any, Dict, Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import artifacts
from components.evaluation import executor


class MetricNetworkTrainerSpec(ComponentSpec):
    PARAMETERS = {"config": ExecutionParameter(type=str),  # JSON: evaluation.scoring.MetricNetworkConfig fields
                  "code_version": ExecutionParameter(type=str, optional=True)}
    INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {"model": ChannelParameter(type=standard_artifacts.Model),
               "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation)}


class MetricNetworkTrainer(base_component.BaseComponent):
    """Input: ExampleGen's raw image examples (labelled). Outputs: `model`, `evaluation`."""

    SPEC_CLASS = MetricNetworkTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.MetricNetworkExecutor)

    def __init__(self, examples: types.BaseChannel, config: Dict[str, Any], code_version: str = ""):
        super().__init__(spec=MetricNetworkTrainerSpec(
            examples=examples, config=artifacts.dump_config(config), code_version=code_version,
            model=types.Channel(type=standard_artifacts.Model),
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation)))


class ModelEvaluatorSpec(ComponentSpec):
    # JSON of components.artifacts.EvaluatorConfig.
    PARAMETERS = {"config": ExecutionParameter(type=str),
                  "code_version": ExecutionParameter(type=str, optional=True)}
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),  # the Transform's
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
        "metric_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {"evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
               "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing)}


class ModelEvaluator(base_component.BaseComponent):
    """Inputs: the Trainer's `model`, the Transform's examples and graph, the metric network (generative models).
    Outputs: `evaluation` (evaluation.json and pictures) and `blessing` (TFX's ModelBlessing, as TFX's Evaluator
    writes it: the Pusher reads its `blessed` property)."""

    SPEC_CLASS = ModelEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.ModelEvaluatorExecutor)

    def __init__(self, model: types.BaseChannel, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 config: artifacts.EvaluatorConfig, metric_model: Optional[types.BaseChannel] = None, code_version: str = ""):
        super().__init__(spec=ModelEvaluatorSpec(
            model=model, examples=examples, transform_graph=transform_graph, metric_model=metric_model,
            config=artifacts.dump_config(config), code_version=code_version,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing)))
