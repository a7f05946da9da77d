"""LabelEfficiencyCurve: how much unlabeled pretraining and generated data buy at each number of labels.

For every K in `labels_per_class` it takes the Transform's K-per-class labelled train examples (`label_rank < K`:
the sets are nested), trains the few-label classifier from scratch, on the pretraining Trainer's encoder (frozen,
then unfrozen) and, where a SyntheticExampleGen drew images from a generator trained with those same K labels
per class, on real plus generated examples (trainers/label_efficiency.py says how), and scores each on the test
split. Output `curve` (ModelEvaluation): curve.json and curve.png, which MLflow logs as a child run of the
pipeline run (metrics `test_accuracy.METHOD` at step K) when a tracking config is given.

The classifiers are small (K x classes examples) and train in this component's process, one after another.
"""
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import artifacts
from components.label_efficiency import executor


class LabelEfficiencyCurveSpec(ComponentSpec):
    # JSON of components.artifacts.LabelEfficiencyConfig.
    PARAMETERS = {"config": ExecutionParameter(type=str),
                  "code_version": ExecutionParameter(type=str, optional=True)}
    INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples),  # the Transform's
              "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
              "base_model": ChannelParameter(type=standard_artifacts.Model),  # the pretraining Trainer's
              "synthetic_examples": ChannelParameter(type=standard_artifacts.Examples, optional=True)}
    OUTPUTS = {"curve": ChannelParameter(type=standard_artifacts.ModelEvaluation)}


class LabelEfficiencyCurve(base_component.BaseComponent):
    SPEC_CLASS = LabelEfficiencyCurveSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel, base_model: types.BaseChannel,
                 config: artifacts.LabelEfficiencyConfig, synthetic_examples: Optional[types.BaseChannel] = None,
                 code_version: str = ""):
        super().__init__(spec=LabelEfficiencyCurveSpec(
            examples=examples, transform_graph=transform_graph, base_model=base_model,
            synthetic_examples=synthetic_examples, config=artifacts.dump_config(config), code_version=code_version,
            curve=types.Channel(type=standard_artifacts.ModelEvaluation)))
