"""ImageSchemaCurator: tightens SchemaGen's inferred schema into the contract image data must keep.

SchemaGen infers types and shapes but no value ranges. Images need more: one fixed height, width and
channel count, labels inside the classes seen in training, and every feature present in every split.
ExampleValidator then checks each split against this curated schema.
"""
from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.image_schema_curator import executor


class ImageSchemaCuratorSpec(ComponentSpec):
    # A digest of the curation code: TFX's cache key holds parameters, not the executor's source.
    PARAMETERS = {"code_version": ExecutionParameter(type=str, optional=True)}
    INPUTS = {
        "schema": ChannelParameter(type=standard_artifacts.Schema),
        "statistics": ChannelParameter(type=standard_artifacts.ExampleStatistics),
    }
    OUTPUTS = {"curated_schema": ChannelParameter(type=standard_artifacts.Schema)}


class ImageSchemaCurator(base_component.BaseComponent):
    """Inputs: SchemaGen's schema and StatisticsGen's statistics (the train split is used).
    Output: `curated_schema`, with fixed image dimensions, a label domain and required presence."""

    SPEC_CLASS = ImageSchemaCuratorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, schema: types.BaseChannel, statistics: types.BaseChannel, code_version: str = ""):
        super().__init__(spec=ImageSchemaCuratorSpec(
            schema=schema, statistics=statistics, code_version=code_version,
            curated_schema=types.Channel(type=standard_artifacts.Schema)))
