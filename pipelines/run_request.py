"""A pipeline request from `run` / `compile` flags, every part checked before any work: the source probed, the
model's config validated (a bad value names the field), the Evaluator's and Ray Train's settings."""
import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

from pipelines.cli_common import CliError

DEFAULT_SEED = 42
DEFAULT_SOURCE = "idx:" + os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                       "data", "mnist-sample")


@dataclasses.dataclass(frozen=True)
class PipelineRequest:
    info: Any  # the probed source (components.image_example_gen.sources.SourceInfo)
    config: Any  # the model's validated config
    model_config: Dict[str, Any]  # its overrides, as the pipeline takes them
    pretraining: Optional[Tuple[str, Dict[str, Any]]]  # (model, overrides) a base model is trained with
    augmentation: Any = None  # pipelines.pipeline.Augmentation: generated training data for the classifier
    semi_supervised: Optional[Tuple[str, Dict[str, Any]]] = None  # (model, overrides): a curve line of its own
    sized: Optional[Dict[str, Any]] = None  # the fields the family's size rule set for the source's image size
    # --tune: (the checked search space as {field: {kind: values}}, components.tuner.ray_tune.SearchSettings fields)
    tuning: Optional[Tuple[Dict[str, Any], Dict[str, Any]]] = None


def probe(args):
    from components.image_example_gen import sources  # pylint: disable=import-outside-toplevel
    return sources.probe(sources.parse_source(args.source, args.data_dir, args.manual_dir,
                                              getattr(args, "ignore_labels", False)))


def checked_request(args) -> PipelineRequest:
    """The PipelineRequest the flags make, every one checked."""
    from pipelines import pipeline  # pylint: disable=import-outside-toplevel
    from trainers import registry  # pylint: disable=import-outside-toplevel
    overrides = model_overrides(args)
    if args.schema and not os.path.isfile(args.schema):
        raise CliError(f"--schema {args.schema}: no such file")
    if not 1 <= args.eval_percent <= 50:
        raise CliError(f"--eval-percent {args.eval_percent}: must be between 1 and 50")
    if args.model not in registry.MODELS:
        raise CliError(f"--model {args.model!r} is unknown; choose one of: {', '.join(sorted(registry.MODELS))}")
    family = registry.get_model(args.model).family
    info = probe(args)
    pretraining = None
    if family.needs_labels:
        overrides.setdefault("num_classes", info.num_classes)
    if family.needs_base_model:
        pretrain_config = {"epochs": args.pretrain_epochs, "seed": args.seed}
        pretraining = (args.pretrain, {k: v for k, v in pretrain_config.items() if v is not None})
    model_config = {k: v for k, v in overrides.items() if v is not None}
    augmentation = None
    if args.augment_with:
        if args.augment_with not in registry.MODELS:
            raise CliError(f"--augment-with {args.augment_with!r} is unknown; choose one of: "
                           f"{', '.join(sorted(n for n, e in registry.MODELS.items() if e.family.conditional))}")
        generator_config = {"seed": args.seed, **dict(args.augment_settings)}
        if registry.get_model(args.augment_with).family.needs_labels:
            generator_config.setdefault("num_classes", info.num_classes)
        augmentation = pipeline.Augmentation(args.augment_with, generator_config, args.synthetic_per_class)
    elif args.augment_settings:
        raise CliError("--augment-set sets the --augment-with generator's config: name the generator")
    semi_supervised = None
    if args.semi_supervised:
        if args.semi_supervised not in registry.MODELS:
            raise CliError(f"--semi-supervised {args.semi_supervised!r} is unknown; choose one of: "
                           f"{', '.join(sorted(n for n, e in registry.MODELS.items() if e.family.semi_supervised))}")
        semi_supervised = (args.semi_supervised, {"seed": args.seed, "num_classes": info.num_classes,
                                                  **dict(args.semi_supervised_settings)})
    elif args.semi_supervised_settings:
        raise CliError("--semi-supervised-set sets the --semi-supervised model's config: name the model")
    try:
        config = pipeline.check_model(args.model, model_config, info, pretraining)
        # Networks sized for images larger than the presets' (the family's size rule), once the request is known to
        # be one the model can run; --set wins.
        sized = registry.sized_for(args.model, info.image_shape, model_config)
        if sized:
            model_config = {**{k: list(v) if isinstance(v, tuple) else v for k, v in sized.items()}, **model_config}
            config = pipeline.check_model(args.model, model_config, info, pretraining)
        pipeline.check_few_labels(args.model, args.labels_per_class, augmentation, info, semi_supervised)
    except (ValueError, TypeError) as e:
        raise CliError(str(e)) from e
    check_anomaly_class(args, info)
    fid_features = getattr(args, "fid_features", "auto")
    if fid_features == "classifier" and info.num_classes < 2:
        raise CliError(f"--fid-features classifier trains the feature network on the source's labels; "
                       f"{info.spec.uri} has none: use --fid-features self-supervised (or leave it at auto)")
    if fid_features.startswith("inception:"):
        from evaluation import inception  # pylint: disable=import-outside-toplevel
        try:
            inception.read_graph(fid_features.partition(":")[2])
        except inception.InceptionFileError as e:
            raise CliError(str(e)) from e
        if info.image_shape[-1] not in (1, 3):
            raise CliError(f"--fid-features inception reads grey or RGB images; {info.spec.uri} has "
                           f"{info.image_shape[-1]} channels")
    return PipelineRequest(info, config, model_config, pretraining, augmentation, semi_supervised, sized,
                           checked_tuning(args, model_config))


def checked_tuning(args, model_config: Dict[str, Any]) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """--tune's space read and checked against the model (every field its own, every edge of every range a
    config it accepts) and the search's settings; None without --tune."""
    spec = getattr(args, "tune", None)
    if not spec:
        for flag in ("tune_budget_minutes",):
            if getattr(args, flag, None) is not None:
                raise CliError(f"--{flag.replace('_', '-')} sets the search: give --tune SPACE.yaml (or default)")
        return None
    import json  # pylint: disable=import-outside-toplevel
    from trainers import search_space  # pylint: disable=import-outside-toplevel
    if getattr(args, "trainer", "ray") != "ray":
        raise CliError("--tune runs its trials on Ray Train: drop --trainer in-process")
    try:
        space = search_space.resolve(args.model, spec, model_config)
    except search_space.SearchSpaceError as e:
        raise CliError(str(e)) from e
    search = {"trials": args.tune_trials, "budget_minutes": args.tune_budget_minutes,
              "scheduler": args.tune_scheduler, "seed": args.seed}
    return json.loads(search_space.to_json(space)), search


# Flags that set a field of the model's config, which --set can name too.
_CONFIG_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "learning_rate": "--learning-rate",
                 "seed": "--seed"}


def model_overrides(args) -> dict:
    """The model's config overrides: every --set FIELD=VALUE, and the fields --epochs, --batch-size,
    --learning-rate and --seed name. Naming one field both ways with different values is refused. Resolves
    args.seed (also the few-label choice's and the Evaluator's seed) to what the model trains with."""
    settings = dict(args.settings)
    for field, flag in _CONFIG_FLAGS.items():
        value = getattr(args, field)
        if value is not None and field in settings and settings[field] != value:
            raise CliError(f"{flag} {value} and --set {field}={settings[field]} disagree: give the value once")
    overrides = {**settings, **{f: getattr(args, f) for f in _CONFIG_FLAGS if getattr(args, f) is not None}}
    overrides.setdefault("seed", DEFAULT_SEED)
    if isinstance(overrides["seed"], int) and not isinstance(overrides["seed"], bool):
        args.seed = overrides["seed"]
    return overrides


def check_anomaly_class(args, info) -> None:
    from pipelines import pipeline  # pylint: disable=import-outside-toplevel
    family = pipeline.family_of(args.model)
    if getattr(args, "anomaly_fpr", None) is not None and not family.detects_anomalies:
        raise CliError(f"--anomaly-fpr sets an autoencoder's anomaly threshold (reconstruction error); "
                       f"{args.model} is a {family.name}")
    if args.anomaly_class is None:
        return
    if not family.detects_anomalies:
        raise CliError(f"--anomaly-class is for autoencoders (reconstruction error as the anomaly score); "
                       f"{args.model} is a {family.name}")
    if not 0 <= args.anomaly_class < info.num_classes:
        raise CliError(f"--anomaly-class {args.anomaly_class}: {info.spec.uri} has classes 0..{info.num_classes - 1}"
                       if info.num_classes else f"--anomaly-class needs labelled data; {info.spec.uri} has no labels")


def evaluation_settings(args, tracking_config):
    from pipelines import pipeline  # pylint: disable=import-outside-toplevel
    return pipeline.EvaluationSettings(tracking=tracking_config, margin=args.bless_margin,
                                       num_samples=args.eval_samples, anomaly_class=args.anomaly_class,
                                       anomaly_fpr=(getattr(args, "anomaly_fpr", None)
                                                    or pipeline.EvaluationSettings.anomaly_fpr),
                                       metric_network_epochs=args.metric_network_epochs, seed=args.seed,
                                       fid_features=args.fid_features.partition(":")[0].replace("-", "_"),
                                       inception_path=args.fid_features.partition(":")[2],
                                       keep_best_epoch=not getattr(args, "keep_last_epoch", False))


def ray_settings(args):
    from components.trainer import ray_train  # pylint: disable=import-outside-toplevel
    try:
        return ray_train.RaySettings(address=args.ray_address, workers=args.workers,
                                     cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                                     max_failures=args.max_failures)
    except ValueError as e:
        raise CliError(str(e)) from e


def tfx_pipeline(args, request: PipelineRequest, target, ray=None, evaluation_settings=None, tuning=None):
    """The pipeline the request asks for: the label-efficiency curve for a list of K (`10,` is a list of one),
    else the model's training. `target`: pipelines.pipeline.PipelineTarget."""
    from pipelines import pipeline  # pylint: disable=import-outside-toplevel
    ingestion = pipeline.Ingestion(args.eval_percent, args.seed, args.schema)
    common = dict(ray=ray, pretraining=request.pretraining, evaluation_settings=evaluation_settings,
                  augmentation=request.augmentation)
    if isinstance(args.labels_per_class, int) or not args.labels_per_class:
        return pipeline.training_pipeline(target, request.info, args.model, request.model_config, ingestion,
                                          args.labels_per_class or None, tuning=tuning, **common)
    if tuning is not None:
        raise CliError("--tune tunes one model's Trainer: not a label-efficiency curve (a list of --labels-per-class)")
    return pipeline.label_efficiency_pipeline(target, request.info, args.model, request.model_config,
                                              args.labels_per_class, ingestion=ingestion,
                                              examples_per_phase=args.examples_per_phase,
                                              semi_supervised=request.semi_supervised, **common)
