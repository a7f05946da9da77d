"""The Trainer: TFX's Trainer with one more optional input, the feature network its generative models' epochs are
scored in (trainers/best_epoch.py keeps the best one). Everything else is TFX's own TrainerSpec and executor
contract (run_fn, FnArgs, the Model and ModelRun outputs), so the Pusher, the cache and ML Metadata see a
standard Trainer."""
from typing import Any, Dict, Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils

from components.trainer.executor import TrainerExecutor

METRIC_MODEL_KEY = "metric_model"


class TrainerSpec(standard_component_specs.TrainerSpec):
    INPUTS = {**standard_component_specs.TrainerSpec.INPUTS,
              METRIC_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True)}


class Trainer(base_component.BaseComponent):
    """Inputs: the Transform's examples and graph, the schema, optionally a `base_model` (a pretraining Trainer's
    Model, whose encoder a classifier fine-tunes), a `metric_model` (the MetricNetworkTrainer's: the space the
    best epoch is chosen in) and `hyperparameters` (a RayTuner's best values, over the config's). Outputs:
    `model`, `model_run` (TFX's)."""

    SPEC_CLASS = TrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(TrainerExecutor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel, schema: types.BaseChannel,
                 run_fn: str, custom_config: Dict[str, Any], base_model: Optional[types.BaseChannel] = None,
                 metric_model: Optional[types.BaseChannel] = None,
                 hyperparameters: Optional[types.BaseChannel] = None,
                 custom_executor_spec: Optional[executor_spec.ExecutorSpec] = None):
        spec = TrainerSpec(
            examples=examples, transform_graph=transform_graph, schema=schema, base_model=base_model,
            metric_model=metric_model, hyperparameters=hyperparameters, train_args=trainer_pb2.TrainArgs(),
            eval_args=trainer_pb2.EvalArgs(),
            run_fn=run_fn, custom_config=json_utils.dumps(custom_config),
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun))
        super().__init__(spec=spec, custom_executor_spec=custom_executor_spec)
