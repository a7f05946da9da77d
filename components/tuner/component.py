"""RayTuner: a hyperparameter search before the Trainer, as TFX's Tuner is, on Ray Tune instead of KerasTuner,
ranking trials by what generative models are judged by (a sample-quality proxy in the run's feature space) and
stopping the poor ones early (ASHA).

Inputs are the Trainer's (the Transform's examples and graph, the schema, a base model, the feature network),
plus the search space and settings; outputs are TFX's Tuner's: `best_hyperparameters` (the Trainer's
`hyperparameters` input: its config gets those values) and `tuner_results` (every trial: its config, its metric
after each epoch, how it ended; a picture of the search). Cached like every component: the same inputs and space
reuse the search.
"""
from typing import Any, Dict, Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import json_utils, proto_utils

from components import artifacts
from components.tuner import executor


class RayTunerSpec(ComponentSpec):
    PARAMETERS = {
        "config": ExecutionParameter(type=str),  # JSON of components.artifacts.TunerConfig
        # What the Trainer gets (the model, its config, the Ray settings): each trial trains as the Trainer would.
        standard_component_specs.CUSTOM_CONFIG_KEY: ExecutionParameter(type=str),
        standard_component_specs.TRAIN_ARGS_KEY: ExecutionParameter(type=str),
        standard_component_specs.EVAL_ARGS_KEY: ExecutionParameter(type=str),
    }
    INPUTS = {
        standard_component_specs.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        standard_component_specs.TRANSFORM_GRAPH_KEY: ChannelParameter(type=standard_artifacts.TransformGraph),
        standard_component_specs.SCHEMA_KEY: ChannelParameter(type=standard_artifacts.Schema, optional=True),
        standard_component_specs.BASE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
        "metric_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {
        standard_component_specs.BEST_HYPERPARAMETERS_KEY: ChannelParameter(type=standard_artifacts.HyperParameters),
        standard_component_specs.TUNER_RESULTS_KEY: ChannelParameter(type=standard_artifacts.TunerResults),
    }


class RayTuner(base_component.BaseComponent):
    """Outputs `best_hyperparameters` (for the Trainer's `hyperparameters`) and `tuner_results`."""

    SPEC_CLASS = RayTunerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.RayTunerExecutor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 custom_config: Dict[str, Any], config: artifacts.TunerConfig,
                 schema: Optional[types.BaseChannel] = None, base_model: Optional[types.BaseChannel] = None,
                 metric_model: Optional[types.BaseChannel] = None):
        super().__init__(spec=RayTunerSpec(
            examples=examples, transform_graph=transform_graph, schema=schema, base_model=base_model,
            metric_model=metric_model, config=artifacts.dump_config(config),
            custom_config=json_utils.dumps(custom_config),
            train_args=proto_utils.proto_to_json(trainer_pb2.TrainArgs()),
            eval_args=proto_utils.proto_to_json(trainer_pb2.EvalArgs()),
            best_hyperparameters=types.Channel(type=standard_artifacts.HyperParameters),
            tuner_results=types.Channel(type=standard_artifacts.TunerResults)))
