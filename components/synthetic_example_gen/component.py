"""SyntheticExampleGen: images drawn from a trained class-conditional generator, as an Examples artifact.

It draws `per_class` images of every class from the generator's SavedModel (its `generate` / `sample` signature
with labels, at its default guidance and steps) and writes them in the Transform's output layout, so a Trainer
reads them beside the real examples (TFX's Trainer takes several Examples artifacts: the union of both channels):

    image        float32 (H, W, C) in the consumer's pixel range
    label        int64, the class it was drawn for
    labeled      1; label_rank 0 (a synthetic example counts among the labelled ones at every K)
    synthetic    1
    model_version  bytes: the generator's MLflow registered version ("models:/NAME/VERSION"), or the URI of its
                   Model artifact when it was not registered

Splits: `train` holds them all; `eval` is empty (models are judged on real data only) but present, as TFX's
Trainer needs every split in every Examples artifact it reads. Properties: image_shape, class_names,
synthetic_per_class, labels_per_class (the K the generator was trained with), model_version.
"""
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import artifacts
from components.registrar.component import MlflowModelVersion
from components.synthetic_example_gen import executor


class SyntheticExampleGenSpec(ComponentSpec):
    # JSON of components.artifacts.SyntheticExamplesConfig.
    PARAMETERS = {"config": ExecutionParameter(type=str),
                  "code_version": ExecutionParameter(type=str, optional=True)}
    INPUTS = {"model": ChannelParameter(type=standard_artifacts.Model),
              "registration": ChannelParameter(type=MlflowModelVersion, optional=True)}
    OUTPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}


class SyntheticExampleGen(base_component.BaseComponent):
    """Input: a conditional generator's Trainer `model` (and its MLflow `registration`). Output: `examples`."""

    SPEC_CLASS = SyntheticExampleGenSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, model: types.BaseChannel, config: artifacts.SyntheticExamplesConfig,
                 registration: Optional[types.BaseChannel] = None, code_version: str = ""):
        super().__init__(spec=SyntheticExampleGenSpec(
            model=model, registration=registration, config=artifacts.dump_config(config), code_version=code_version,
            examples=types.Channel(type=standard_artifacts.Examples)))
