"""create_pipeline: ingest -> validate -> transform -> train -> push, built from small pieces.

    ImageExampleGen -> StatisticsGen -> SchemaGen -> ImageSchemaCurator -> StrictExampleValidator
                                                 (or ImportSchemaGen)          |
                                          Transform (preprocessing_fn) <-------'
                                              -> Trainer (run_fn) -> Pusher
"""
import dataclasses
import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence

from tfx import v1 as tfx
from tfx.dsl.components.base import base_node

from components.image_example_gen.component import DEFAULT_EVAL_PERCENT, ImageExampleGen
from components.image_example_gen.sources import SourceInfo
from components.image_schema_curator.component import ImageSchemaCurator
from components.strict_example_validator.component import StrictExampleValidator
from trainers import registry

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREPROCESSING_FN = "pipelines.preprocessing.preprocessing_fn"
RUN_FN = "components.trainer.run_fn.run_fn"
# Code whose changes must invalidate the TFX cache of the nodes that run it: TFX's cache key holds a
# node's parameters and inputs, not the source of an imported executor or user function, so a digest
# of that source goes into the node's parameters. (StrictExampleValidator keeps TFX's own spec, which
# has no free parameter: after changing its executor, run once with --no-cache.)
_EXAMPLE_GEN_CODE = ("components/image_example_gen",)
_CURATOR_CODE = ("components/image_schema_curator",)
_TRANSFORM_CODE = ("pipelines/preprocessing.py",)
_TRAINER_CODE = ("trainers", "serving", "components/trainer")


def code_digest(paths: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        full = os.path.join(PROJECT_ROOT, path)
        files = [full] if os.path.isfile(full) else sorted(
            os.path.join(d, f) for d, _, names in os.walk(full) for f in names if f.endswith(".py"))
        for name in files:
            digest.update(os.path.relpath(name, PROJECT_ROOT).encode())
            with open(name, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class DataNodes:
    example_gen: ImageExampleGen
    statistics_gen: tfx.components.StatisticsGen
    schema_gen: base_node.BaseNode  # SchemaGen, or ImportSchemaGen for a user's schema
    curator: Optional[ImageSchemaCurator]  # None with an imported schema: it is used as given
    validator: StrictExampleValidator
    transform: tfx.components.Transform
    schema: Any  # channel of the schema everything downstream is checked against

    def all(self) -> List[base_node.BaseNode]:
        return [n for n in (self.example_gen, self.statistics_gen, self.schema_gen, self.curator,
                            self.validator, self.transform) if n is not None]


def data_nodes(source_info: SourceInfo, pixel_range: str, eval_percent: int = DEFAULT_EVAL_PERCENT,
               labels_per_class: Optional[int] = None, seed: int = 0,
               schema_path: Optional[str] = None) -> DataNodes:
    """Ingest, statistics, schema (inferred and curated, or imported from `schema_path`), validation
    that stops the run on anomalies, and the Transform to float images plus the few-label flag."""
    example_gen = ImageExampleGen(source_info, eval_percent=eval_percent, code_version=code_digest(_EXAMPLE_GEN_CODE))
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    curator = None
    if schema_path:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=os.path.abspath(schema_path))
        schema = schema_gen.outputs["schema"]
    else:
        schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                              infer_feature_shape=True)
        curator = ImageSchemaCurator(schema=schema_gen.outputs["schema"],
                                     statistics=statistics_gen.outputs["statistics"],
                                     code_version=code_digest(_CURATOR_CODE))
        schema = curator.outputs["curated_schema"]
    validator = StrictExampleValidator(statistics=statistics_gen.outputs["statistics"], schema=schema)
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema, preprocessing_fn=PREPROCESSING_FN,
        custom_config={
            "image_shape": list(source_info.image_shape), "pixel_range": pixel_range,
            "num_classes": source_info.num_classes, "seed": seed,
            "labels_per_class": -1 if labels_per_class is None else labels_per_class,
            "code": code_digest(_TRANSFORM_CODE)})
    # Transform reads only examples and schema; this edge makes it wait for (and stop on) validation.
    transform.add_upstream_node(validator)
    return DataNodes(example_gen, statistics_gen, schema_gen, curator, validator, transform, schema)


def training_nodes(data: DataNodes, source_info: SourceInfo, model_name: str, model_config: Dict[str, Any],
                   serving_dir: str) -> List[base_node.BaseNode]:
    """The model's Trainer (in-process run_fn) and a Pusher writing its SavedModel to `serving_dir`."""
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=data.transform.outputs["transformed_examples"],
        transform_graph=data.transform.outputs["transform_graph"],
        schema=data.schema,
        custom_config={"model": model_name, "config": model_config,
                       "image_shape": list(source_info.image_shape), "code": code_digest(_TRAINER_CODE)})
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=os.path.join(serving_dir, model_name))))
    return [trainer, pusher]


def create_pipeline(pipeline_name: str, pipeline_root: str, metadata_path: str, source_info: SourceInfo,
                    model_name: str, model_config: Dict[str, Any], serving_dir: str,
                    eval_percent: int = DEFAULT_EVAL_PERCENT, labels_per_class: Optional[int] = None,
                    seed: int = 0, schema_path: Optional[str] = None, enable_cache: bool = True,
                    beam_pipeline_args: Optional[List[str]] = None) -> tfx.dsl.Pipeline:
    # Fail on a bad model name or config here, before any component runs.
    registry.make_config(model_name, model_config)
    data = data_nodes(source_info, registry.get_model(model_name).pixel_range, eval_percent,
                      labels_per_class, seed, schema_path)
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=data.all() + training_nodes(data, source_info, model_name, model_config, serving_dir),
        enable_cache=enable_cache,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=beam_pipeline_args or ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
    )
