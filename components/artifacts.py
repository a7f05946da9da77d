"""The artifact contract: what each component writes into its output artifacts and the next one (or the CLI's
report) reads back, in one place, with typed read/write helpers and the components' typed configs.

    Examples (ImageExampleGen)       properties image_shape [h, w, c], class_names [...]
    Examples (SyntheticExampleGen)   Split-train/ (the Transform's layout, plus synthetic, model_version),
                                     Split-eval/ (empty), synthetic.png; properties image_shape, class_names,
                                     synthetic_per_class, labels_per_class, model_version
    Model (Trainer)                  Format-Serving/ (TFX's: the SavedModel), keras-state/ (trainers.job's saved
                                     training state: what a later Trainer rebuilds a base model from)
    ModelRun (Trainer)               metrics.json (TrainerMetrics), *.png (the family's pictures)
    Model (MetricNetworkTrainer)     saved_model/ (the metric network), reference.npz (evaluation.scoring)
    ModelEvaluation (MetricNetwork.) evaluation.json (MetricNetworkEvaluation)
    ModelEvaluation (ModelEvaluator) evaluation.json (Evaluation), input_example.npy, metric_input_example.npy,
                                     *.png; properties key_metric, key_metric_value
    ModelBlessing (ModelEvaluator)   TFX's: property blessed (what the Pusher reads), BLESSED / NOT_BLESSED; reason
    MlflowModelVersion (registrar)   registration.json; properties name, version, champion
    ModelEvaluation (LabelEfficiencyCurve)  curve.json (LabelEfficiencyCurve), curve.png

No TFX import: artifacts are used through their custom-property methods, and the CLI reads the same files from
the paths ML Metadata gives it.
"""
import dataclasses
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from backends import storage

# ------------------------------------------------------------------------------------------------ Examples
IMAGE_SHAPE_PROPERTY = "image_shape"
CLASS_NAMES_PROPERTY = "class_names"


def set_image_properties(examples, image_shape: Sequence[int], class_names: Sequence[str]) -> None:
    examples.set_json_value_custom_property(IMAGE_SHAPE_PROPERTY, [int(d) for d in image_shape])
    examples.set_json_value_custom_property(CLASS_NAMES_PROPERTY, list(class_names))


def image_shape(examples) -> Tuple[int, ...]:
    return tuple(int(d) for d in examples.get_json_value_custom_property(IMAGE_SHAPE_PROPERTY))


def class_names(examples) -> List[str]:
    return list(examples.get_json_value_custom_property(CLASS_NAMES_PROPERTY) or [])



# -------------------------------------------------------------------------------- Examples (SyntheticExampleGen)
SYNTHETIC_PER_CLASS_PROPERTY = "synthetic_per_class"
LABELS_PER_CLASS_PROPERTY = "labels_per_class"
MODEL_VERSION_PROPERTY = "model_version"


@dataclasses.dataclass(frozen=True)
class SyntheticExamplesConfig:
    """SyntheticExampleGen's execution parameter."""
    per_class: int  # images drawn per class
    pixel_range: str  # of the examples written: the consumer's (the Transform's) range
    labels_per_class: Optional[int] = None  # the K the generator was trained with (recorded, not used)
    seed: int = 0

    def __post_init__(self):
        if self.per_class < 1:
            raise ValueError(f"synthetic per class = {self.per_class}: must be at least 1")


def set_synthetic_properties(examples, per_class: int, labels_per_class: Optional[int], version: str) -> None:
    examples.set_int_custom_property(SYNTHETIC_PER_CLASS_PROPERTY, int(per_class))
    examples.set_int_custom_property(LABELS_PER_CLASS_PROPERTY, -1 if labels_per_class is None else labels_per_class)
    examples.set_string_custom_property(MODEL_VERSION_PROPERTY, version)


def synthetic_labels_per_class(examples) -> Optional[int]:
    """The K a synthetic Examples artifact's generator was trained with (None: every label, or not synthetic)."""
    if not examples.has_custom_property(LABELS_PER_CLASS_PROPERTY):
        return None
    k = examples.get_int_custom_property(LABELS_PER_CLASS_PROPERTY)
    return None if k < 0 else int(k)


# ------------------------------------------------------------------------------------------ files, configs

def non_finite_entries(values: Any, where: str = "") -> List[str]:
    """The paths ('metrics.fid', 'per_class_fid[3]') of every NaN or infinite number in a JSON-like value."""
    if isinstance(values, bool):
        return []
    if isinstance(values, (int, float, np.floating, np.integer)):
        return [] if np.isfinite(float(values)) else [where or "value"]
    if isinstance(values, dict):
        return [p for k, v in values.items() for p in non_finite_entries(v, f"{where}.{k}" if where else str(k))]
    if isinstance(values, (list, tuple)):
        return [p for i, v in enumerate(values) for p in non_finite_entries(v, f"{where}[{i}]")]
    return []


def check_finite(values: Any, what: str) -> None:
    """Refuses NaN and infinities at the artifact boundary: ML Metadata cannot store them (SQLite reads a NaN
    property as a column name) and JSON has no spelling for them. A value that could not be computed is left
    out (or None in a list) by whoever measured it."""
    bad = non_finite_entries(values)
    if bad:
        raise ValueError(f"{what}: non-finite values at {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; a "
                         "metric that cannot be computed must be absent (None in a list), not NaN")


def write_json(directory: str, name: str, value: Any) -> str:
    storage.makedirs(directory)
    path = storage.join(directory, name)
    with storage.open_file(path, "w") as f:
        f.write(json.dumps(value, indent=1))
    return path


def read_json(directory: str, name: str) -> Dict[str, Any]:
    path = storage.join(directory, name)
    if not storage.exists(path):
        raise FileNotFoundError(f"{directory} holds no {name}: the component that writes it did not finish")
    with storage.open_file(path) as f:
        return json.loads(f.read())


def _save_array(path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    with storage.open_file(path, "wb") as f:
        f.write(buffer.getvalue())


def _load_array(path: str) -> np.ndarray:
    with storage.open_file(path, "rb") as f:
        return np.load(io.BytesIO(f.read()))


def dump_config(config: Any) -> str:
    """A component's config as its JSON execution parameter (sorted keys: the same config, the same cache key)."""
    return json.dumps(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config, sort_keys=True)


def load_config(config_class, text: str):
    """The typed config from a JSON execution parameter; unknown or missing fields are errors naming them."""
    return config_class(**json.loads(text))


# ----------------------------------------------------------------------------------- Model, ModelRun (Trainer)
KERAS_STATE_DIR = "keras-state"
METRICS_FILE = "metrics.json"


def keras_state_dir(serving_model_dir: str) -> str:
    """Where a Model artifact keeps its saved training state: beside its Format-Serving directory."""
    return os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), KERAS_STATE_DIR)


@dataclasses.dataclass(frozen=True)
class TrainerMetrics:
    """model_run/metrics.json: what was trained, how, and its per-epoch history. `details` are extra entries
    (Ray workers, timings, a classifier's frozen_epochs) kept at the top level of the file."""
    model: str
    family: str
    config: Dict[str, Any]  # the overrides the run was given
    full_config: Dict[str, Any]  # every field of the model's config
    pixel_range: str
    holdout_class: Optional[int]
    history: Dict[str, List[float]]
    details: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def write(self, model_run_dir: str) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "details"}
        return write_json(model_run_dir, METRICS_FILE, {**fields, **self.details})

    @classmethod
    def read(cls, model_run_dir: str) -> "TrainerMetrics":
        values = read_json(model_run_dir, METRICS_FILE)
        names = {f.name for f in dataclasses.fields(cls)} - {"details"}
        return cls(**{k: values.get(k) for k in names}, details={k: v for k, v in values.items() if k not in names})


# -------------------------------------------------------------------------------------- MetricNetworkTrainer
METRIC_NETWORK_DIR = "saved_model"
EVALUATION_FILE = "evaluation.json"


@dataclasses.dataclass(frozen=True)
class MetricNetworkEvaluation:
    """The metric network's evaluation.json: how it was trained (`method`: classifier or self_supervised), its
    test accuracy (a classifier's; a self-supervised one's nearest-neighbour accuracy when the test images have
    labels, else None) and the floor of the scores (real test images against the train split)."""
    test_accuracy: Optional[float]
    split: str
    train_examples: int
    test_examples: int
    fid_floor: float
    kid_floor_x1e3: float
    config: Dict[str, Any]
    method: str = "classifier"
    precision_floor: Optional[float] = None
    recall_floor: Optional[float] = None

    def write(self, directory: str) -> str:
        check_finite(dataclasses.asdict(self), "the metric network's evaluation")
        return write_json(directory, EVALUATION_FILE, dataclasses.asdict(self))

    @classmethod
    def read(cls, directory: str) -> "MetricNetworkEvaluation":
        return cls(**read_json(directory, EVALUATION_FILE))


# -------------------------------------------------------------------------------------------- ModelEvaluator
INPUT_EXAMPLE_FILE = "input_example.npy"  # what MLflow shows as the logged model's input example
METRIC_INPUT_EXAMPLE_FILE = "metric_input_example.npy"
KEY_METRIC_PROPERTY, KEY_METRIC_VALUE_PROPERTY = "key_metric", "key_metric_value"
BLESSING_REASON_PROPERTY = "reason"


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """The ModelEvaluator's execution parameter."""
    family: str
    pixel_range: str
    num_classes: int
    model_config: Dict[str, Any]  # the model's full config
    options: Dict[str, Any]  # evaluation.scoring.EvaluationOptions fields
    margin: float  # relative improvement over the champion's key metric needed to be blessed
    tracking: Dict[str, Any]  # where the champion is read: backends.tracking.TrackingConfig fields
    registered_model: str
    data_pixel_range: Optional[str] = None  # the Transform's, when not the model's (a classifier's generator)
    class_names: List[str] = dataclasses.field(default_factory=list)  # the source's (plots, evaluation.json)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The ModelEvaluator's evaluation.json: the scores and the blessing decision (evaluation.scoring.Blessing)."""
    family: str
    metrics: Dict[str, Any]
    blessing: Dict[str, Any]
    class_names: List[str] = dataclasses.field(default_factory=list)  # the source's, in class-id order

    def write(self, directory: str, input_example: np.ndarray, metric_input_example: np.ndarray) -> str:
        check_finite({"metrics": self.metrics, "blessing": self.blessing}, "the evaluation")
        _save_array(storage.join(directory, INPUT_EXAMPLE_FILE), input_example)
        _save_array(storage.join(directory, METRIC_INPUT_EXAMPLE_FILE), metric_input_example)
        return write_json(directory, EVALUATION_FILE, dataclasses.asdict(self))

    @classmethod
    def read(cls, directory: str) -> "Evaluation":
        return cls(**read_json(directory, EVALUATION_FILE))

    @property
    def scalars(self) -> Dict[str, float]:
        return {k: v for k, v in self.metrics.items() if isinstance(v, float)}


def set_key_metric(evaluation, metric: str, value: Optional[float]) -> None:
    """The evaluation's key metric as ML Metadata properties: its name always, its value only when it was
    measured (a finite number; NaN is refused, see check_finite)."""
    evaluation.set_string_custom_property(KEY_METRIC_PROPERTY, metric)
    if value is not None:
        check_finite(value, f"key metric {metric}")
        evaluation.set_float_custom_property(KEY_METRIC_VALUE_PROPERTY, float(value))


def input_example(evaluation_dir: str) -> np.ndarray:
    return _load_array(storage.join(evaluation_dir, INPUT_EXAMPLE_FILE))


def metric_input_example(evaluation_dir: str) -> np.ndarray:
    return _load_array(storage.join(evaluation_dir, METRIC_INPUT_EXAMPLE_FILE))


# -------------------------------------------------------------------------------------------- MlflowRegistrar
REGISTRATION_FILE = "registration.json"
REGISTRATION_PROPERTIES = ("name", "version", "champion")


@dataclasses.dataclass(frozen=True)
class RegistrarConfig:
    """The MlflowRegistrar's execution parameter."""
    tracking: Dict[str, Any]  # backends.tracking.TrackingConfig fields
    registered_model: str
    metric_network_model: str  # the metric network's registered name
    pipeline: str
    dataset: str
    source: str


def set_registration(registration, name: str, version: str, champion: bool, details: Dict[str, Any]) -> None:
    write_json(registration.uri, REGISTRATION_FILE, details)
    registration.set_string_custom_property("name", name)
    registration.set_string_custom_property("version", version)
    registration.set_int_custom_property("champion", int(champion))


# --------------------------------------------------------------------------------------- LabelEfficiencyCurve
CURVE_FILE, CURVE_PICTURE = "curve.json", "curve.png"


@dataclasses.dataclass(frozen=True)
class LabelEfficiencyConfig:
    """The LabelEfficiencyCurve's execution parameter."""
    labels_per_class: List[int]  # the curve's x values (each <= the Transform's K)
    classifier: Dict[str, Any]  # the classifier's full config (its epochs: the least per phase)
    examples_per_phase: int  # each phase sees at least this many examples: few labels get more epochs
    tracking: Optional[Dict[str, Any]] = None  # backends.tracking.TrackingConfig fields (None: not logged)
    pipeline: str = ""
    dataset: str = ""
    # A semi-supervised model trained per K beside the classifiers: {"model": its name, "config": its full config}.
    semi_supervised: Optional[Dict[str, Any]] = None
    data_pixel_range: str = "unit"  # the Transform's images' range


@dataclasses.dataclass(frozen=True)
class LabelEfficiencyCurve:
    """curve.json: test accuracy per method (one list, aligned with labels_per_class) and how each point trained."""
    labels_per_class: List[int]
    accuracy: Dict[str, List[float]]  # method -> test accuracy at each K
    split: str
    test_examples: int
    points: List[Dict[str, Any]]  # per K: labels, synthetic examples, epochs per phase, generator version
    config: Dict[str, Any]

    def write(self, directory: str) -> str:
        return write_json(directory, CURVE_FILE, dataclasses.asdict(self))

    @classmethod
    def read(cls, directory: str) -> "LabelEfficiencyCurve":
        return cls(**read_json(directory, CURVE_FILE))


# ----------------------------------------------------------------------------------------- RayTuner
BEST_HYPERPARAMETERS_FILE = "best_hyperparameters.txt"  # TFX's Tuner name: the Trainer reads the only file there
SEARCH_FILE = "search.json"


@dataclasses.dataclass(frozen=True)
class TunerConfig:
    """The RayTuner's execution parameter."""
    space: Dict[str, Dict[str, List[Any]]]  # trainers.search_space as {field: {kind: values}}
    search: Dict[str, Any]  # components.tuner.ray_tune.SearchSettings fields
    tracking: Optional[Dict[str, Any]] = None  # backends.tracking.TrackingConfig fields (None: not logged)
    pipeline: str = ""
    dataset: str = ""


def write_best_hyperparameters(directory: str, values: Dict[str, Any], details: Dict[str, Any]) -> str:
    """best_hyperparameters.txt as TFX's Trainer reads a Tuner's (FnArgs.hyperparameters): {"values": {field:
    value}, ...details}."""
    return write_json(directory, BEST_HYPERPARAMETERS_FILE, {"values": values, **details})
