"""create_pipeline: ingest -> validate -> transform -> train -> push, built from small pieces.

    ImageExampleGen -> StatisticsGen -> SchemaGen -> ImageSchemaCurator -> StrictExampleValidator
                                                 (or ImportSchemaGen)          |
                                          Transform (preprocessing_fn) <-------'
                                              -> Trainer (Ray Train, or run_fn in process)
    [MetricNetworkTrainer (generative models on labelled data)] -> ModelEvaluator -> Pusher (blessed only)
                                                                                -> MlflowRegistrar

A family that needs a base model (the classifier fine-tunes a pretrained encoder) gets a pipeline that trains the
pretraining model first (PretrainingTrainer) and wires that Model artifact into its Trainer as `base_model`.
"""
import dataclasses
import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tfx import v1 as tfx
from tfx.dsl.components.base import base_node, executor_spec

from components import artifacts
from components.evaluation.component import MetricNetworkTrainer, ModelEvaluator
from components.image_example_gen.component import DEFAULT_EVAL_PERCENT, ImageExampleGen
from components.image_example_gen.sources import SourceInfo
from components.image_schema_curator.component import ImageSchemaCurator
from components.strict_example_validator.component import StrictExampleValidator
from components.registrar.component import MlflowRegistrar
from components.trainer.executor import RayTrainerExecutor
from backends import tracking
from evaluation import scoring
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
_TRAINER_CODE = ("trainers", "serving", "components/trainer", "evaluation/figures.py", "backends/ray_cluster.py")
_EVALUATION_CODE = ("evaluation", "components/evaluation")
_REGISTRAR_CODE = ("components/registrar", "backends/tracking.py")


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


@dataclasses.dataclass(frozen=True)
class RayTraining:
    """Train on Ray: RaySettings fields (components.trainer.ray_train), where Ray keeps its runs and checkpoints."""
    settings: Dict[str, Any]
    storage_path: str


def trainer(data: DataNodes, source_info: SourceInfo, model_name: str, model_config: Dict[str, Any],
            ray: Optional[RayTraining], base_model=None, node_id: str = "Trainer",
            holdout_class: Optional[int] = None) -> tfx.components.Trainer:
    """TFX's Trainer; with `ray`, its executor runs the training on Ray Train workers. `holdout_class`: a class
    kept out of an autoencoder's training data (the anomaly its Evaluator detects)."""
    custom_config = {"model": model_name, "config": model_config, "image_shape": list(source_info.image_shape),
                     "code": code_digest(_TRAINER_CODE)}
    if holdout_class is not None:
        custom_config["holdout_class"] = holdout_class
    if registry.get_model(model_name).family.conditional:
        custom_config["class_names"] = list(source_info.class_names)
    extra = {}
    if ray is not None:
        custom_config["ray"] = {"settings": ray.settings, "storage_path": ray.storage_path}
        extra["custom_executor_spec"] = executor_spec.ExecutorClassSpec(RayTrainerExecutor)
    if base_model is not None:
        extra["base_model"] = base_model
    return tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=data.transform.outputs["transformed_examples"],
        transform_graph=data.transform.outputs["transform_graph"],
        schema=data.schema,
        custom_config=custom_config,
        **extra).with_id(node_id)


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """How the ModelEvaluator scores and blesses, and where MLflow is."""
    tracking: tracking.TrackingConfig
    margin: float = 0.01  # relative improvement over the champion's key metric needed to be blessed
    num_samples: int = 1000  # generated images for FID, KID and mode coverage
    anomaly_class: Optional[int] = None  # autoencoders: the class held out of training, anomalous in the AUROC
    metric_network_epochs: int = 3
    seed: int = 0


def family_of(model_name: str) -> registry.Family:
    return registry.get_model(model_name).family


def training_nodes(data: DataNodes, source_info: SourceInfo, model_name: str, model_config: Dict[str, Any],
                   serving_dir: str, ray: Optional[RayTraining] = None,
                   pretraining: Optional[Tuple[str, Dict[str, Any]]] = None,
                   settings: Optional[EvaluationSettings] = None) -> List[base_node.BaseNode]:
    """The model's Trainer (after a PretrainingTrainer when it needs a base model), its evaluation and MLflow
    registration (with `settings`), and a Pusher writing its SavedModel to `serving_dir` (only when blessed, with `settings`)."""
    nodes: List[base_node.BaseNode] = []
    base_model = None
    if family_of(model_name).needs_base_model:
        pretrainer = trainer(data, source_info, *pretraining, ray, node_id="PretrainingTrainer")
        nodes.append(pretrainer)
        base_model = pretrainer.outputs["model"]
    model_trainer = trainer(data, source_info, model_name, model_config, ray, base_model,
                            holdout_class=settings and settings.anomaly_class)
    nodes.append(model_trainer)
    blessing = None
    if settings is not None:
        evaluation_nodes_ = evaluation_nodes(data, source_info, model_name, model_config, model_trainer,
                                             pretraining, settings)
        nodes += evaluation_nodes_
        blessing = next(n for n in evaluation_nodes_ if isinstance(n, ModelEvaluator)).outputs["blessing"]
    pusher = tfx.components.Pusher(
        model=model_trainer.outputs["model"], model_blessing=blessing,
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=os.path.join(serving_dir, model_name))))
    return nodes + [pusher]


def evaluation_nodes(data: DataNodes, source_info: SourceInfo, model_name: str, model_config: Dict[str, Any],
                     model_trainer: tfx.components.Trainer, pretraining: Optional[Tuple[str, Dict[str, Any]]],
                     settings: EvaluationSettings) -> List[base_node.BaseNode]:
    """[MetricNetworkTrainer,] ModelEvaluator, MlflowRegistrar for the Trainer's model."""
    family = family_of(model_name)
    nodes: List[base_node.BaseNode] = []
    metric_network = None
    if family.generative and source_info.num_classes >= 2:
        metric_config = dataclasses.asdict(scoring.MetricNetworkConfig(epochs=settings.metric_network_epochs,
                                                                          seed=settings.seed))
        # Its only input is the ingested data: TFX's cache trains it once per dataset, whatever the model.
        metric_network = MetricNetworkTrainer(data.example_gen.outputs["examples"], metric_config,
                                              code_version=code_digest(_EVALUATION_CODE))
        nodes.append(metric_network)
    full_config = dataclasses.asdict(check_model(model_name, model_config, source_info, pretraining))
    registered = tracking.registered_model_name(source_info.dataset_name, family.name)
    options = scoring.EvaluationOptions(num_samples=settings.num_samples, seed=settings.seed,
                                           anomaly_class=settings.anomaly_class)
    evaluator = ModelEvaluator(
        model=model_trainer.outputs["model"], examples=data.transform.outputs["transformed_examples"],
        transform_graph=data.transform.outputs["transform_graph"],
        metric_model=metric_network.outputs["model"] if metric_network else None,
        config=artifacts.EvaluatorConfig(
            family=family.name, pixel_range=pixel_range(model_name, pretraining),
            num_classes=source_info.num_classes, model_config=full_config, options=dataclasses.asdict(options),
            margin=settings.margin, tracking=dataclasses.asdict(settings.tracking), registered_model=registered),
        code_version=code_digest(_EVALUATION_CODE))
    registrar = MlflowRegistrar(
        model=model_trainer.outputs["model"], model_run=model_trainer.outputs["model_run"],
        evaluation=evaluator.outputs["evaluation"], blessing=evaluator.outputs["blessing"],
        metric_model=metric_network.outputs["model"] if metric_network else None,
        metric_evaluation=metric_network.outputs["evaluation"] if metric_network else None,
        config=artifacts.RegistrarConfig(
            tracking=dataclasses.asdict(settings.tracking), registered_model=registered,
            metric_network_model=tracking.registered_model_name(source_info.dataset_name, "metric-network"),
            pipeline=settings.tracking.experiment, dataset=source_info.dataset_name, source=source_info.spec.uri),
        code_version=code_digest(_REGISTRAR_CODE))
    return nodes + [evaluator, registrar]


def check_model(model_name: str, model_config: Dict[str, Any], source_info: SourceInfo,
                pretraining: Optional[Tuple[str, Dict[str, Any]]] = None) -> Any:
    """The model's validated config (errors name the bad setting), and for a family with a base model its
    pretraining's too."""
    family = family_of(model_name)
    if family.needs_labels and source_info.num_classes < 2:
        raise ValueError(f"the {model_name} needs a labelled source with at least 2 classes; "
                         f"{source_info.spec.uri} has {source_info.num_classes}")
    if family.needs_base_model:
        if pretraining is None:
            raise ValueError(f"the {model_name} fine-tunes a pretrained encoder: name the model to pretrain")
        pretrained = registry.get_model(pretraining[0]).family
        if not pretrained.reusable_encoder:
            reusable = sorted(f.name for f in registry.FAMILIES.values() if f.reusable_encoder)
            raise ValueError(f"cannot pretrain the {model_name}'s encoder with {pretraining[0]} ({pretrained.name}): "
                             "GANs and DDPMs map noise to images, not images to codings; pretrain one of the "
                             f"families with a reusable encoder ({', '.join(reusable)})")
        registry.make_config(*pretraining)
    return registry.make_config(model_name, model_config)


def pixel_range(model_name: str, pretraining: Optional[Tuple[str, Dict[str, Any]]]) -> str:
    name = pretraining[0] if family_of(model_name).needs_base_model else model_name
    return registry.get_model(name).pixel_range


def create_pipeline(pipeline_name: str, pipeline_root: str, metadata_path: Optional[str], source_info: SourceInfo,
                    model_name: str, model_config: Dict[str, Any], serving_dir: str,
                    eval_percent: int = DEFAULT_EVAL_PERCENT, labels_per_class: Optional[int] = None,
                    seed: int = 0, schema_path: Optional[str] = None, enable_cache: bool = True,
                    beam_pipeline_args: Optional[List[str]] = None, ray: Optional[RayTraining] = None,
                    pretraining: Optional[Tuple[str, Dict[str, Any]]] = None,
                    evaluation_settings: Optional[EvaluationSettings] = None) -> tfx.dsl.Pipeline:
    """`ray`: train on Ray Train (None: in this process). `pretraining`: (model, config overrides) whose encoder
    a classifier fine-tunes. `evaluation_settings`: evaluate, bless and register in MLflow (None: train and push)."""
    # Fail on a bad model name or config here, before any component runs.
    check_model(model_name, model_config, source_info, pretraining)
    data = data_nodes(source_info, pixel_range(model_name, pretraining), eval_percent, labels_per_class, seed,
                      schema_path)
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=data.all() + training_nodes(data, source_info, model_name, model_config, serving_dir, ray,
                                               pretraining, evaluation_settings),
        enable_cache=enable_cache,
        # None: the orchestrator brings its own ML Metadata (Kubeflow, Vertex).
        metadata_connection_config=(tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
                                    if metadata_path else None),
        beam_pipeline_args=beam_pipeline_args or ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
    )
