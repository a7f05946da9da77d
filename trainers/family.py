"""What a model family is, and the tables of families and models: everything the rest of latentforge asks of one.

A `Family` describes one family once: how to build and train it, its pixel range, the SavedModel signatures it
exports, how it is scored and blessed, the pictures it draws, what it needs (labels, a base model). The Trainer
glue, the export, the Evaluator, the figures, the pipeline builder, the CLI and the server read it; none of them
decides by a family's name. A family lives in one module, which ends with its own `register` call (the timm way:
trainers/registry.py imports the modules, and a test registers a toy family of its own the same way).

A model (`MODELS`, what `--model` names) is a family plus preset values of its config.
"""
import dataclasses
import typing
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Type

import numpy as np


PIXEL_RANGES = ("unit", "symmetric")


def first_images(images: np.ndarray, config: Mapping[str, Any], seed: int) -> np.ndarray:
    """The input example of a family whose SavedModel callable takes images: two test images."""
    del config, seed
    return images[:2].astype(np.float32)


def standard_normal(shape_of: Callable[[np.ndarray, Mapping[str, Any]], Tuple[int, ...]]) -> Callable:
    """An input example of standard normal values (codings, noise) of shape (2, *shape_of(images, config))."""
    def example(images: np.ndarray, config: Mapping[str, Any], seed: int) -> np.ndarray:
        shape = shape_of(images, config)
        return np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32)
    return example


def _epochs(config) -> int:
    return config.epochs


def _no_details(config) -> Dict[str, Any]:
    del config
    return {}


def _no_metadata(model) -> Dict[str, Any]:
    del model
    return {}


def _nothing_to_calibrate(model, eval_data, job) -> Dict[str, Any]:
    del model, eval_data, job
    return {}


def _not_sized(values: Mapping[str, Any], image_shape: Sequence[int]) -> Dict[str, Any]:
    del values, image_shape
    return {}


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family, described once.

    build(config, input_shape, base_model=None) -> a compiled, untrained keras.Model (`base_model`: the restored
    pretrained model, for a family that `needs_base_model`). fit(model, config, train, eval, callbacks,
    initial_epoch) -> per-epoch history. signatures(model, image_shape, pixel_range) -> {name: tf.function} with
    a "serving_default"; array_function(signatures, model) -> the SavedModel's one-array callable (MLflow's pyfunc).
    """
    name: str
    config_class: Type
    build: Callable
    fit: Callable
    signatures: Callable
    array_function: Callable
    key_metric: Tuple[str, bool]  # (metric, True when higher is better): what blessing compares to the champion
    scorers: Sequence[Callable] = ()  # evaluation.scoring scorers, run in order on the exported SavedModel
    figures: Sequence[Callable] = ()  # evaluation.figures pictures of the trained model (besides loss curves)
    pixel_range: Optional[str] = None  # "unit" [0, 1] or "symmetric" [-1, 1]; None: its base model's
    generate_signature: Optional[str] = None  # the signature that draws new images (n, seed, ...): generative
    export_metadata: Callable = _no_metadata  # (model) -> what the SavedModel's metadata adds for this family
    # (trained model, eval split, TrainingJob) -> what is measured on the eval split before export and travels in
    # the SavedModel's metadata and the Trainer's metrics.json (an autoencoder's anomaly threshold)
    calibrate: Callable = _nothing_to_calibrate
    # The signature that maps a point of the latent space to images, {codings|noise: (n, ...)} -> images: what the
    # explorer draws seeds and interpolations through (None: no latent space to draw from)
    latent_signature: Optional[str] = None
    input_example: Callable = first_images  # (test images, config dict, seed) -> what the callable takes
    supervised: bool = False  # trains on the labelled examples' (image, label) pairs, is scored on labelled ones
    # A supervised family that also learns from the unlabelled examples: trains on every example's (image, label),
    # label -1 where the few-label flag is unset, as a conditional generator does.
    semi_supervised: bool = False
    # A class-conditional generator: trains on every example's (image, label), label -1 where the few-label flag
    # is unset (its unconditional path learns those); config num_classes comes from the source.
    conditional: bool = False
    needs_base_model: bool = False  # fine-tunes a model trained first (`--pretrain`)
    reusable_encoder: bool = False  # its encoder can be fine-tuned by a family that needs a base model
    detects_anomalies: bool = False  # a class can be held out of training and scored as the anomaly (AUROC)
    total_epochs: Callable = _epochs  # (config) -> the epochs `fit` counts through (initial_epoch's scale)
    training_details: Callable = _no_details  # (config) -> extra entries of the Trainer's metrics.json
    # (config values, image shape) -> the fields to change for images larger than the presets' (sized_for)
    size_rule: Callable = _not_sized
    description: str = ""  # what `latentforge models` says instead of the pixel range
    # `--tune default`'s search space over config fields ({field: {kind: values}}: trainers/search_space.py)
    search_space: Mapping[str, Mapping[str, Sequence]] = dataclasses.field(default_factory=dict)
    # (per-epoch history metric, True when higher is better) a search ranks trials by when the family has no
    # sample-quality proxy (generative families use trainers/best_epoch's)
    epoch_metric: Tuple[str, bool] = ("val_loss", False)

    def __post_init__(self):
        if self.pixel_range is None and not self.needs_base_model:
            raise ValueError(f"family {self.name}: give pixel_range (only a family with a base model inherits it)")
        if self.pixel_range is not None and self.pixel_range not in PIXEL_RANGES:
            raise ValueError(f"family {self.name}: pixel_range={self.pixel_range!r}, not one of {PIXEL_RANGES}")

    @property
    def generative(self) -> bool:
        return self.generate_signature is not None

    @property
    def needs_labels(self) -> bool:
        """It cannot train without a labelled source of at least 2 classes (its config takes num_classes)."""
        return self.supervised or self.conditional


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A model `--model` names: a family and preset values of its config."""
    family: Family
    preset: Mapping[str, Any]

    @property
    def config_class(self) -> Type:
        return self.family.config_class

    @property
    def pixel_range(self) -> Optional[str]:
        return self.family.pixel_range

    def build(self, config, input_shape: Sequence[int], base_model=None):
        return self.family.build(config, input_shape, base_model)

    def fit(self, model, config, train_data, eval_data=None, callbacks=None, initial_epoch: int = 0):
        return self.family.fit(model, config, train_data, eval_data, callbacks, initial_epoch)

    def train(self, config, input_shape: Sequence[int], train_data, eval_data=None, callbacks=None):
        """(model, history): build + fit."""
        model = self.build(config, input_shape)
        return model, self.fit(model, config, train_data, eval_data, callbacks)


def with_classes(build: Callable) -> Callable:
    """A conditional family's build: it needs the classes (`latentforge run` sets num_classes from the source)."""
    def build_with_classes(config, input_shape):
        if config.num_classes < 2:
            raise ValueError(f"num_classes={config.num_classes}: a class-conditional model needs the labelled "
                             "source's classes (at least 2; `latentforge run` sets it from the source)")
        return build(config, input_shape)
    return build_with_classes


def without_base(build: Callable) -> Callable:
    """A build(config, input_shape) as a family's build, which also takes the base model it has no use for."""
    return lambda config, input_shape, base_model=None: build(config, input_shape)


FAMILIES: Dict[str, Family] = {}
MODELS: Dict[str, ModelEntry] = {}


def register(family: Family, models: Mapping[str, Mapping[str, Any]]) -> None:
    """Adds a family and its models (name -> preset); a name already taken is an error."""
    taken = sorted(({family.name} & set(FAMILIES)) | (set(models) & set(MODELS)))
    if taken:
        raise ValueError(f"already registered: {taken}")
    FAMILIES[family.name] = family
    MODELS.update({name: ModelEntry(family, dict(preset)) for name, preset in models.items()})


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r} is unknown; the families are: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def get_model(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"--model {name!r} is unknown; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def make_config(name: str, overrides: Mapping[str, Any]):
    """The model's validated config: its preset, then the non-None overrides. Unknown keys are errors."""
    entry = get_model(name)
    config = config_from(name, entry.config_class, overrides, entry.preset)
    classes = getattr(config, "num_classes", 0)
    if entry.family.generative and not entry.family.conditional and classes:
        conditional = sorted(m for m, e in MODELS.items() if e.family.conditional)
        raise ValueError(f"{name}: num_classes={classes}: {name} is unconditional; the class-conditional models "
                         f"are {', '.join(conditional)}")
    return config


def sized_for(name: str, image_shape: Sequence[int], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """The config fields the family's size rule changes for images of `image_shape` (larger than the presets'
    28-32 pixels: deeper stacks, more U-Net levels), leaving out every field `overrides` sets: the user's word wins.
    The caller adds them to the overrides, so the config the run records (MLflow's params) holds them."""
    entry = get_model(name)
    values = dataclasses.asdict(make_config(name, overrides))
    return {k: v for k, v in entry.family.size_rule(values, image_shape).items()
            if overrides.get(k) is None and tuple(values[k]) != tuple(v)}


def config_from(name: str, config_class: Type, overrides: Mapping[str, Any], preset: Mapping[str, Any] = None):
    """`config_class(**preset, **overrides)` for JSON-like overrides: None values skipped, unknown keys an error
    naming them, lists back to tuples (JSON, and TFX's custom_config, turn tuples into lists)."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in fields)
    if unknown:
        raise ValueError(f"{name} has no setting(s) {unknown}; it has: {', '.join(sorted(fields))}")
    values = {**(preset or {}), **{k: v for k, v in overrides.items() if v is not None}}
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        if field.name in values:
            values[field.name] = _typed(name, field.name, hints[field.name], values[field.name])
    return config_class(**values)


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        items = {int: "integers", float: "numbers", str: "strings"}
        return "a list of " + items.get(typing.get_args(hint)[0], "values")
    if typing.get_origin(hint) is typing.Union:
        return " or ".join(_type_name(h) for h in typing.get_args(hint) if h is not type(None))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _typed(name: str, field: str, hint, value):
    """`value`, checked against the field's type (an int where a float is asked is fine; JSON lists become
    tuples), or a ValueError naming the field and the type it needs: the config's own checks then compare like
    with like."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        hint, origin = options[0], typing.get_origin(options[0])
    bad = ValueError(f"{name}: {field}={value!r} is not {_type_name(hint)}; give e.g. --set "
                     f"{field}={_EXAMPLES.get(hint if origin is None else tuple, 'VALUE')}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        item = typing.get_args(hint)[0]
        return tuple(_typed(name, field, item, v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
    elif hint is str and not isinstance(value, str):
        raise bad
    return value


_EXAMPLES = {int: "3", float: "0.5", bool: "true", str: "WORD", tuple: "[64,32]"}
