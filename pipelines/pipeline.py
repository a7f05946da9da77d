"""The pipelines, built from small pieces: training_pipeline (ingest -> validate -> transform -> train -> push) and
label_efficiency_pipeline (the same data nodes, then a pretrained encoder and the label-efficiency curve).

    ImageExampleGen -> StatisticsGen -> SchemaGen -> ImageSchemaCurator -> StrictExampleValidator
                                                 (or ImportSchemaGen)          |
                                          Transform (preprocessing_fn) <-------'
                                              -> Trainer (Ray Train, or run_fn in process)
    [MetricNetworkTrainer (generative models: labelled or self-supervised)] -> ModelEvaluator -> Pusher (blessed only)
                                                                                -> MlflowRegistrar

A family that needs a base model (the classifier fine-tunes a pretrained encoder) gets a pipeline that trains the
pretraining model first (PretrainingTrainer) and wires that Model artifact into its Trainer as `base_model`.

Generated training data (`augmentation`): a conditional generator is trained on the same examples with only the
classifier's K labels per class (GeneratorTrainer_K: no label leaks; the unlabelled images train its
unconditional path), evaluated and registered in MLflow (ModelEvaluator_/MlflowRegistrar_ K), and a
SyntheticExampleGen_K draws images of every class from it. The classifier's Trainer reads them beside the
real examples (the union of both Examples channels).

label_efficiency_pipeline (K = 1, 5, 10, ...: the `--labels-per-class` list, or `10,` for one point): the Transform ranks the labelled
examples (nested K sets), a PretrainingTrainer trains the encoder, a generator per K when augmenting, and the
LabelEfficiencyCurve trains the classifiers and writes the curve (no classifier is registered or pushed).
"""
import dataclasses
import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import tensorflow_data_validation as tfdv
# The components' own modules rather than tfx.v1, which also imports TFX's Google Cloud extensions.
from tfx import components as tfx_components
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.base import base_node, executor_spec
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import pusher_pb2
from tfx.types import channel_utils

from components import artifacts
from components.evaluation.component import MetricNetworkTrainer, ModelEvaluator
from components.image_example_gen.component import DEFAULT_EVAL_PERCENT, ImageExampleGen
from components.image_example_gen.sources import SourceInfo
from components.image_schema_curator.component import ImageSchemaCurator
from components.label_efficiency.component import LabelEfficiencyCurve
from components.synthetic_example_gen.component import SyntheticExampleGen
from components.strict_example_validator.component import StrictExampleValidator
from components.registrar.component import MlflowRegistrar
from components.trainer.component import Trainer
from components.trainer.executor import RayTrainerExecutor
from components.tuner.component import RayTuner
from backends import tracking
from evaluation import scoring
from pipelines import metadata
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
_TRAINER_CODE = ("trainers", "serving", "components/trainer", "evaluation", "backends/ray_cluster.py")
_EVALUATION_CODE = ("evaluation", "components/evaluation")
_REGISTRAR_CODE = ("components/registrar", "backends/tracking.py")
_SYNTHETIC_CODE = ("components/synthetic_example_gen", "evaluation")
_CURVE_CODE = ("components/label_efficiency", "trainers", "evaluation", "backends/tracking.py")


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
    statistics_gen: tfx_components.StatisticsGen
    schema_gen: base_node.BaseNode  # SchemaGen, or ImportSchemaGen for a user's schema
    curator: Optional[ImageSchemaCurator]  # None with an imported schema: it is used as given
    validator: StrictExampleValidator
    transform: tfx_components.Transform
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
    # Sketch-based top-k and unique counts: the exact ones count every distinct value of a feature, and every
    # image's bytes are distinct, so their memory grew with the data; the sketches' stays bounded.
    statistics_gen = tfx_components.StatisticsGen(
        examples=example_gen.outputs["examples"],
        stats_options=tfdv.StatsOptions(use_sketch_based_topk_uniques=True))
    curator = None
    if schema_path:
        schema_gen = ImportSchemaGen(schema_file=os.path.abspath(schema_path))
        schema = schema_gen.outputs["schema"]
    else:
        schema_gen = tfx_components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                              infer_feature_shape=True)
        curator = ImageSchemaCurator(schema=schema_gen.outputs["schema"],
                                     statistics=statistics_gen.outputs["statistics"],
                                     code_version=code_digest(_CURATOR_CODE))
        schema = curator.outputs["curated_schema"]
    validator = StrictExampleValidator(statistics=statistics_gen.outputs["statistics"], schema=schema)
    # disable_statistics: Transform's own pre- and post-transform statistics repeat StatisticsGen's and describe
    # every pixel of the float image; nothing reads them, and on the full MNIST they took 0.8 GiB of the run's
    # peak memory (1.82 -> 1.03 GiB) and 6 of Transform's 16 s (benchmarks/pipeline_scaling.py).
    transform = tfx_components.Transform(
        examples=example_gen.outputs["examples"], schema=schema, preprocessing_fn=PREPROCESSING_FN,
        disable_statistics=True,
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
    resources: Optional[Dict[str, float]] = None  # what each worker asks for, as checked (printed, not config)


def trainer(data: DataNodes, source_info: SourceInfo, model_name: str, model_config: Dict[str, Any],
            ray: Optional[RayTraining], base_model=None, node_id: str = "Trainer",
            holdout_class: Optional[int] = None, labels_per_class: Optional[int] = None,
            data_pixel_range: Optional[str] = None, extra_examples=None,
            anomaly_fpr: Optional[float] = None, metric_network: Optional[MetricNetworkTrainer] = None,
            tuning: Optional["Tuning"] = None) -> List[base_node.BaseNode]:
    """TFX's Trainer; with `ray`, its executor runs the training on Ray Train workers. `holdout_class`: a class
    kept out of an autoencoder's training data (the anomaly its Evaluator detects). `labels_per_class`: only the
    examples ranked below it keep their labels. `data_pixel_range`: the Transform's, when not the model's.
    `extra_examples`: more Examples (synthetic ones) read beside the Transform's. `anomaly_fpr`: an autoencoder's
    target false-positive rate for the anomaly threshold its SavedModel carries (default 1 %). `metric_network`: a
    generative model's epochs are scored in its features and the best one is kept (trainers/best_epoch.py).
    `tuning`: a RayTuner searches first, with the Trainer's own inputs, and the Trainer trains with its best
    values. Returns [the RayTuner (with `tuning`),] the Trainer: the Trainer last."""
    custom_config = {"model": model_name, "config": model_config, "image_shape": list(source_info.image_shape),
                     "code": code_digest(_TRAINER_CODE)}
    if holdout_class is not None:
        custom_config["holdout_class"] = holdout_class
    if anomaly_fpr is not None and registry.get_model(model_name).family.detects_anomalies:
        custom_config["anomaly_fpr"] = anomaly_fpr
    if labels_per_class is not None:
        custom_config["labels_per_class"] = labels_per_class
    if data_pixel_range is not None:
        custom_config["data_pixel_range"] = data_pixel_range
    if source_info.class_names:  # into the SavedModel's metadata (a conditional model's labels take these names)
        custom_config["class_names"] = list(source_info.class_names)
    extra = {}
    if ray is not None:
        custom_config["ray"] = {"settings": ray.settings, "storage_path": ray.storage_path}
        extra["custom_executor_spec"] = executor_spec.ExecutorClassSpec(RayTrainerExecutor)
    if base_model is not None:
        extra["base_model"] = base_model
    if metric_network is not None and registry.get_model(model_name).family.generative:
        extra["metric_model"] = metric_network.outputs["model"]
    examples = data.transform.outputs["transformed_examples"]
    if extra_examples is not None:
        examples = channel_utils.union([examples, extra_examples])
    tuner = None
    if tuning is not None:
        tuner = RayTuner(examples=examples, transform_graph=data.transform.outputs["transform_graph"],
                         schema=data.schema, custom_config=custom_config, config=tuning.config,
                         base_model=extra.get("base_model"), metric_model=extra.get("metric_model"))
        extra["hyperparameters"] = tuner.outputs["best_hyperparameters"]
    return ([tuner] if tuner else []) + [Trainer(
        run_fn=RUN_FN,
        examples=examples,
        transform_graph=data.transform.outputs["transform_graph"],
        schema=data.schema,
        custom_config=custom_config,
        **extra).with_id(node_id)]


@dataclasses.dataclass(frozen=True)
class Tuning:
    """A hyperparameter search before the model's Trainer (components/tuner)."""
    config: artifacts.TunerConfig


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """How the ModelEvaluator scores and blesses, and where MLflow is."""
    tracking: tracking.TrackingConfig
    margin: float = 0.01  # relative improvement over the champion's key metric needed to be blessed
    num_samples: int = 1000  # generated images for FID, KID and mode coverage
    anomaly_class: Optional[int] = None  # autoencoders: the class held out of training, anomalous in the AUROC
    anomaly_fpr: float = 0.01  # autoencoders: the eval split's share above the exported anomaly threshold
    metric_network_epochs: Optional[int] = None  # None: the feature network's own default (3 / 10 epochs)
    # The feature space of FID, KID and precision/recall: "auto" (a classifier on the labels, self-supervised
    # without), "classifier", "self_supervised" or "inception" (with inception_path: the FID Inception graph).
    fid_features: str = "auto"
    inception_path: str = ""
    # Generative models: export the epoch with the best sample-quality proxy (KID of a few hundred samples in the
    # feature network's space), not the last (trainers/best_epoch.py).
    keep_best_epoch: bool = True
    seed: int = 0


def family_of(model_name: str) -> registry.Family:
    return registry.get_model(model_name).family


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Generated training data for the few-label classifier: a conditional generator (`model`, its `config`
    overrides) trained with the classifier's K labels per class draws `per_class` images of every class."""
    model: str
    config: Dict[str, Any]
    per_class: int


def training_nodes(data: DataNodes, source_info: SourceInfo, model_name: str, model_config: Dict[str, Any],
                   serving_dir: str, ray: Optional[RayTraining] = None,
                   pretraining: Optional[Tuple[str, Dict[str, Any]]] = None,
                   settings: Optional[EvaluationSettings] = None, labels_per_class: Optional[int] = None,
                   augmentation: Optional[Augmentation] = None,
                   tuning: Optional[Tuning] = None) -> List[base_node.BaseNode]:
    """The model's Trainer (after a PretrainingTrainer when it needs a base model, and the generator of its
    synthetic examples with `augmentation`), its evaluation and MLflow registration (with `settings`), and a
    Pusher writing its SavedModel to `serving_dir` (only when blessed, with `settings`)."""
    nodes: List[base_node.BaseNode] = []
    base_model = None
    if family_of(model_name).needs_base_model:
        pretrainer, = trainer(data, source_info, *pretraining, ray, node_id="PretrainingTrainer")
        nodes.append(pretrainer)
        base_model = pretrainer.outputs["model"]
    metric_network = None
    synthetic = None
    if augmentation is not None:
        metric_network = metric_network_node(data, source_info, settings)
        nodes += [metric_network] if metric_network else []
        generator, synthetic = generator_nodes(data, source_info, augmentation, labels_per_class, ray,
                                               pixel_range(model_name, pretraining), settings, metric_network)
        nodes += generator
    if settings is not None and metric_network is None and family_of(model_name).generative:
        metric_network = metric_network_node(data, source_info, settings)
        nodes += [metric_network] if metric_network else []
    trainers = trainer(data, source_info, model_name, model_config, ray, base_model,
                       holdout_class=settings and settings.anomaly_class,
                       anomaly_fpr=settings and settings.anomaly_fpr,
                       extra_examples=synthetic.outputs["examples"] if synthetic else None,
                       metric_network=metric_network if settings and (settings.keep_best_epoch or tuning) else None,
                       tuning=tuning)
    nodes += trainers
    model_trainer = trainers[-1]
    blessing = None
    if settings is not None:
        evaluator, registrar = evaluation_nodes(data, source_info, model_name, model_config, model_trainer,
                                                pretraining, settings, metric_network)
        nodes += [evaluator, registrar]
        blessing = evaluator.outputs["blessing"]
    pusher = tfx_components.Pusher(
        model=model_trainer.outputs["model"], model_blessing=blessing,
        push_destination=pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(
            base_directory=os.path.join(serving_dir, model_name))))
    return nodes + [pusher]


def metric_network_node(data: DataNodes, source_info: SourceInfo,
                        settings: Optional[EvaluationSettings]) -> Optional[MetricNetworkTrainer]:
    """The metric network generative models are scored with (None without evaluation): a classifier trained on
    the labels, or a self-supervised encoder on an unlabelled source (settings.fid_features)."""
    if settings is None:
        return None
    metric_config = dataclasses.asdict(scoring.MetricNetworkConfig(epochs=settings.metric_network_epochs,
                                                                      seed=settings.seed,
                                                                      method=settings.fid_features,
                                                                      inception_path=settings.inception_path))
    # Its only input is the ingested data: TFX's cache trains it once per dataset, whatever the model.
    return MetricNetworkTrainer(data.example_gen.outputs["examples"], metric_config,
                                code_version=code_digest(_EVALUATION_CODE))


def generator_nodes(data: DataNodes, source_info: SourceInfo, augmentation: Augmentation,
                    labels_per_class: Optional[int], ray: Optional[RayTraining], data_pixel_range: str,
                    settings: Optional[EvaluationSettings],
                    metric_network: Optional[MetricNetworkTrainer]) -> Tuple[List[base_node.BaseNode],
                                                                              SyntheticExampleGen]:
    """GeneratorTrainer_K (the augmenting generator, trained with only K labels per class on the Transform's
    examples), its evaluation and registration (with `settings`) and the SyntheticExampleGen_K drawing from it."""
    suffix = f"{labels_per_class}labels" if labels_per_class is not None else "all_labels"
    generator, = trainer(data, source_info, augmentation.model, augmentation.config, ray,
                        node_id=f"GeneratorTrainer_{suffix}", labels_per_class=labels_per_class,
                        data_pixel_range=data_pixel_range)
    nodes: List[base_node.BaseNode] = [generator]
    registration = None
    if settings is not None:
        family = family_of(augmentation.model).name
        # Its own registered model: a generator that saw K labels per class is not comparable with one that saw all.
        registered = tracking.registered_model_name(
            source_info.dataset_name, family + (f"-{labels_per_class}-labels-per-class" if labels_per_class else ""))
        evaluator, registrar = evaluation_nodes(data, source_info, augmentation.model, augmentation.config, generator,
                                                None, settings, metric_network, suffix="_" + suffix,
                                                registered=registered, data_pixel_range=data_pixel_range)
        nodes += [evaluator, registrar]
        registration = registrar.outputs["registration"]
    synthetic = SyntheticExampleGen(
        generator.outputs["model"], artifacts.SyntheticExamplesConfig(
            per_class=augmentation.per_class, pixel_range=data_pixel_range, labels_per_class=labels_per_class,
            seed=settings.seed if settings else 0),
        registration=registration, code_version=code_digest(_SYNTHETIC_CODE)).with_id(f"SyntheticExampleGen_{suffix}")
    return nodes + [synthetic], synthetic


def evaluation_nodes(data: DataNodes, source_info: SourceInfo, model_name: str, model_config: Dict[str, Any],
                     model_trainer: tfx_components.Trainer, pretraining: Optional[Tuple[str, Dict[str, Any]]],
                     settings: EvaluationSettings, metric_network: Optional[MetricNetworkTrainer] = None,
                     suffix: str = "", registered: Optional[str] = None,
                     data_pixel_range: Optional[str] = None) -> Tuple[ModelEvaluator, MlflowRegistrar]:
    """ModelEvaluator and MlflowRegistrar for the Trainer's model (`suffix`: of their node ids; `registered`: the
    MLflow name, DATASET-FAMILY by default; `data_pixel_range`: the Transform's, when not the model's)."""
    family = family_of(model_name)
    full_config = dataclasses.asdict(check_model(model_name, model_config, source_info, pretraining))
    registered = registered or tracking.registered_model_name(source_info.dataset_name, family.name)
    options = scoring.EvaluationOptions(num_samples=settings.num_samples, seed=settings.seed,
                                           anomaly_class=settings.anomaly_class)
    evaluator = ModelEvaluator(
        model=model_trainer.outputs["model"], examples=data.transform.outputs["transformed_examples"],
        transform_graph=data.transform.outputs["transform_graph"],
        metric_model=metric_network.outputs["model"] if metric_network else None,
        config=artifacts.EvaluatorConfig(
            family=family.name, pixel_range=pixel_range(model_name, pretraining),
            num_classes=source_info.num_classes, model_config=full_config, options=dataclasses.asdict(options),
            margin=settings.margin, tracking=dataclasses.asdict(settings.tracking), registered_model=registered,
            data_pixel_range=data_pixel_range, class_names=list(source_info.class_names)),
        code_version=code_digest(_EVALUATION_CODE)).with_id("ModelEvaluator" + suffix)
    registrar = MlflowRegistrar(
        model=model_trainer.outputs["model"], model_run=model_trainer.outputs["model_run"],
        evaluation=evaluator.outputs["evaluation"], blessing=evaluator.outputs["blessing"],
        metric_model=metric_network.outputs["model"] if metric_network else None,
        metric_evaluation=metric_network.outputs["evaluation"] if metric_network else None,
        config=artifacts.RegistrarConfig(
            tracking=dataclasses.asdict(settings.tracking), registered_model=registered,
            metric_network_model=tracking.registered_model_name(source_info.dataset_name, "metric-network"),
            pipeline=settings.tracking.experiment, dataset=source_info.dataset_name, source=source_info.spec.uri),
        code_version=code_digest(_REGISTRAR_CODE)).with_id("MlflowRegistrar" + suffix)
    return evaluator, registrar


def label_efficiency_nodes(data: DataNodes, source_info: SourceInfo, model_name: str, model_config: Dict[str, Any],
                           labels_per_class: Sequence[int], pretraining: Tuple[str, Dict[str, Any]],
                           ray: Optional[RayTraining], settings: Optional[EvaluationSettings],
                           augmentation: Optional[Augmentation], examples_per_phase: int,
                           semi_supervised: Optional[Tuple[str, Dict[str, Any]]] = None) -> List[base_node.BaseNode]:
    """PretrainingTrainer, [a generator and its synthetic examples per K,] LabelEfficiencyCurve (which fine-tunes
    `model_name`, a family with a base model, per K, and also trains the `semi_supervised` model, (name, config
    overrides), per K when given)."""
    pretrainer, = trainer(data, source_info, *pretraining, ray, node_id="PretrainingTrainer")
    nodes: List[base_node.BaseNode] = [pretrainer]
    synthetic = None
    if augmentation is not None:
        metric_network = metric_network_node(data, source_info, settings)
        nodes += [metric_network] if metric_network else []
        drawn = []
        for k in labels_per_class:
            generator, examples = generator_nodes(data, source_info, augmentation, k, ray,
                                                  pixel_range(model_name, pretraining), settings,
                                                  metric_network)
            nodes += generator
            drawn.append(examples.outputs["examples"])
        synthetic = channel_utils.union(drawn)
    classifier_config = dataclasses.asdict(check_model(model_name, model_config, source_info, pretraining))
    curve = LabelEfficiencyCurve(
        data.transform.outputs["transformed_examples"], data.transform.outputs["transform_graph"],
        pretrainer.outputs["model"], artifacts.LabelEfficiencyConfig(
            labels_per_class=list(labels_per_class), classifier=classifier_config,
            examples_per_phase=examples_per_phase,
            tracking=dataclasses.asdict(settings.tracking) if settings else None,
            pipeline=settings.tracking.experiment if settings else "", dataset=source_info.dataset_name,
            semi_supervised=semi_supervised and {
                "model": semi_supervised[0],
                "config": dataclasses.asdict(check_model(semi_supervised[0], semi_supervised[1], source_info))},
            data_pixel_range=pixel_range(model_name, pretraining)),
        synthetic_examples=synthetic, code_version=code_digest(_CURVE_CODE))
    return nodes + [curve]


def check_model(model_name: str, model_config: Dict[str, Any], source_info: SourceInfo,
                pretraining: Optional[Tuple[str, Dict[str, Any]]] = None) -> Any:
    """The model's validated config (errors name the bad setting), and for a family with a base model its
    pretraining's too."""
    family = family_of(model_name)
    if family.needs_labels and source_info.num_classes < 2:
        why = ("is class-conditional (it is trained and sampled per class)" if family.conditional
               else "learns to predict labels")
        has = ("is read without its labels (--ignore-labels)" if source_info.spec.ignore_labels
               else "has no labels" if not source_info.num_classes else f"has {source_info.num_classes} class")
        unconditional = sorted(n for n, e in registry.MODELS.items()
                               if e.family.generative and not e.family.needs_labels)
        raise ValueError(f"--model {model_name} {why}, so it needs a labelled source with at least 2 classes; "
                         f"{source_info.spec.uri} {has}. On unlabelled images train an autoencoder or an "
                         f"unconditional generative model ({', '.join(unconditional)})")
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


DEFAULT_EXAMPLES_PER_PHASE = 3000


def check_tuning(model_name: str, ray: Optional[RayTraining], settings: Optional[EvaluationSettings],
                 augmentation: Optional[Augmentation]) -> None:
    """A search needs Ray (its trials are Ray Train runs) and, for a generative model, the evaluation's feature
    network (its trials are ranked by sample quality in that space); it tunes one model's Trainer."""
    if ray is None:
        raise ValueError("--tune runs its trials on Ray Train: drop --trainer in-process")
    if family_of(model_name).generative and settings is None:
        raise ValueError(f"--tune ranks {model_name} trials by sample quality in the evaluation's feature space: "
                         "it needs the evaluation")
    if augmentation is not None:
        raise ValueError("--tune tunes one model's Trainer: not with --augment-with")


def _fine_tuners() -> str:
    """The models that fine-tune a pretrained encoder on few labels (the chapter's classifier), for messages."""
    return " or ".join(sorted(n for n, e in registry.MODELS.items() if e.family.needs_base_model))


def check_few_labels(model_name: str, labels_per_class: Optional[Union[int, Sequence[int]]],
                     augmentation: Optional[Augmentation], source_info: SourceInfo,
                     semi_supervised: Optional[Tuple[str, Dict[str, Any]]] = None) -> List[int]:
    """The K values, sorted (one K, or several for the curve); a ValueError for what cannot be run."""
    ks = sorted({int(k) for k in ([labels_per_class] if isinstance(labels_per_class, int)
                                  else labels_per_class or ())})
    if semi_supervised is not None:
        if isinstance(labels_per_class, int) or not ks or not family_of(model_name).needs_base_model:
            raise ValueError(f"--semi-supervised {semi_supervised[0]} is a line of the label-efficiency curve: use "
                             f"--model {_fine_tuners()} with a list of labels per class (e.g. 1,10,100, or 10, for one "
                             f"point); to train it alone: --model {semi_supervised[0]} --labels-per-class K")
        if not family_of(semi_supervised[0]).semi_supervised:
            names = sorted(n for n, e in registry.MODELS.items() if e.family.semi_supervised)
            raise ValueError(f"--semi-supervised {semi_supervised[0]}: not a semi-supervised model; choose one of: "
                             f"{', '.join(names)}")
        try:
            check_model(*semi_supervised, source_info)
        except (ValueError, TypeError) as e:
            raise ValueError(f"--semi-supervised {semi_supervised[0]}: {e}") from e
    if any(k < 1 for k in ks):
        raise ValueError(f"labels per class {ks}: each must be at least 1")
    if ks and source_info.num_classes < 2:
        raise ValueError(f"--labels-per-class {','.join(map(str, ks))} keeps the labels of K examples per class, but "
                         f"{source_info.spec.uri} has no classes (unlabelled{', --ignore-labels' if source_info.spec.ignore_labels else ''}): "
                         "drop --labels-per-class")
    classifier_family = family_of(model_name).needs_base_model
    if not isinstance(labels_per_class, int) and ks and not classifier_family:
        raise ValueError(f"a list of labels-per-class values ({','.join(map(str, ks))},) draws a label-efficiency curve "
                         f"of the few-label classifier: use --model {_fine_tuners()}, not {model_name}")
    if augmentation is not None:
        if not classifier_family:
            raise ValueError(f"generated training data (--augment-with) feeds the few-label classifier: use --model "
                             f"{_fine_tuners()}, not {model_name}")
        generator = family_of(augmentation.model)
        if not generator.conditional:
            conditional = sorted(n for n, e in registry.MODELS.items() if e.family.conditional)
            raise ValueError(f"--augment-with {augmentation.model}: draws images of each class, so it must be a "
                             f"class-conditional model ({', '.join(conditional)})")
        if augmentation.per_class < 1:
            raise ValueError(f"--synthetic-per-class {augmentation.per_class}: must be at least 1")
        try:
            registry.make_config(augmentation.model, augmentation.config)
        except (ValueError, TypeError) as e:
            raise ValueError(f"--augment-with {augmentation.model}: {e}") from e
        if source_info.num_classes < 2:
            raise ValueError(f"--augment-with needs a labelled source; {source_info.spec.uri} has no classes")
    return ks


def pixel_range(model_name: str, pretraining: Optional[Tuple[str, Dict[str, Any]]]) -> str:
    name = pretraining[0] if family_of(model_name).needs_base_model else model_name
    return registry.get_model(name).pixel_range


@dataclasses.dataclass(frozen=True)
class PipelineTarget:
    """Where a pipeline keeps what it makes: TFX's pipeline name (the scope of its cache and ML Metadata) and root,
    ML Metadata (None: the orchestrator brings its own, on Kubeflow or Vertex), the Pusher's folder, and the Beam
    options of the Beam-based components (None: Beam's own defaults)."""
    name: str
    root: str
    metadata_path: Optional[str]
    serving_dir: str
    enable_cache: bool = True
    beam_pipeline_args: Optional[List[str]] = None


@dataclasses.dataclass(frozen=True)
class Ingestion:
    """How the data nodes read a source: the share of train carved into eval when it has no eval split, the seed
    that picks the examples keeping their labels, and a schema to validate against instead of the inferred one."""
    eval_percent: int = DEFAULT_EVAL_PERCENT
    seed: int = 0
    schema_path: Optional[str] = None


def _tfx_pipeline(target: PipelineTarget, components: List[base_node.BaseNode]) -> tfx_pipeline.Pipeline:
    return tfx_pipeline.Pipeline(
        pipeline_name=target.name,
        pipeline_root=target.root,
        components=components,
        enable_cache=target.enable_cache,
        metadata_connection_config=(metadata.connection_config(target.metadata_path) if target.metadata_path
                                    else None),
        # None given: Beam's defaults, the in-memory DirectRunner with one worker. Any option at all makes TFX
        # package itself for remote Beam workers in every Beam component (tfx.utils.dependency_utils: a 50-MB
        # copy and an sdist in the temp directory, ~2 s, never removed) unless a dependency flag is among them.
        beam_pipeline_args=target.beam_pipeline_args or [],
    )


def training_pipeline(target: PipelineTarget, source_info: SourceInfo, model_name: str,
                      model_config: Dict[str, Any], ingestion: Ingestion = Ingestion(),
                      labels_per_class: Optional[int] = None, ray: Optional[RayTraining] = None,
                      pretraining: Optional[Tuple[str, Dict[str, Any]]] = None,
                      evaluation_settings: Optional[EvaluationSettings] = None,
                      augmentation: Optional[Augmentation] = None,
                      tuning: Optional[Tuning] = None) -> tfx_pipeline.Pipeline:
    """Ingest, validate, transform; [search (`tuning`);] train the model (on Ray Train with `ray`, fine-tuning
    the encoder of `pretraining`, (model, config overrides), when its family needs a base model, on generated
    data too with `augmentation`, keeping the labels of `labels_per_class` examples per class); evaluate, bless
    and register in MLflow (with `evaluation_settings`); push the SavedModel to the target's serving folder."""
    # A bad model name or config fails here, before any component runs.
    check_model(model_name, model_config, source_info, pretraining)
    check_few_labels(model_name, labels_per_class, augmentation, source_info)
    if tuning is not None:
        check_tuning(model_name, ray, evaluation_settings, augmentation)
    data = data_nodes(source_info, pixel_range(model_name, pretraining), ingestion.eval_percent, labels_per_class,
                      ingestion.seed, ingestion.schema_path)
    return _tfx_pipeline(target, data.all() + training_nodes(
        data, source_info, model_name, model_config, target.serving_dir, ray, pretraining, evaluation_settings,
        labels_per_class, augmentation, tuning))


def label_efficiency_pipeline(target: PipelineTarget, source_info: SourceInfo, model_name: str,
                              model_config: Dict[str, Any], labels_per_class: Sequence[int],
                              pretraining: Tuple[str, Dict[str, Any]], ingestion: Ingestion = Ingestion(),
                              ray: Optional[RayTraining] = None,
                              evaluation_settings: Optional[EvaluationSettings] = None,
                              augmentation: Optional[Augmentation] = None,
                              examples_per_phase: int = DEFAULT_EXAMPLES_PER_PHASE,
                              semi_supervised: Optional[Tuple[str, Dict[str, Any]]] = None) -> tfx_pipeline.Pipeline:
    """Ingest, validate, transform; pretrain `pretraining`'s encoder; then the label-efficiency curve: the few-label
    model `model_name` fine-tuned and trained from scratch per K in `labels_per_class` (each K's generator first
    with `augmentation`; the `semi_supervised` model, (name, config overrides), per K too)."""
    check_model(model_name, model_config, source_info, pretraining)
    ks = check_few_labels(model_name, list(labels_per_class), augmentation, source_info, semi_supervised)
    data = data_nodes(source_info, pixel_range(model_name, pretraining), ingestion.eval_percent, max(ks),
                      ingestion.seed, ingestion.schema_path)
    return _tfx_pipeline(target, data.all() + label_efficiency_nodes(
        data, source_info, model_name, model_config, ks, pretraining, ray, evaluation_settings, augmentation,
        examples_per_phase, semi_supervised))
