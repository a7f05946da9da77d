"""The models `--model` names: each maps to a family, its config class, preset values and pixel range."""
import dataclasses
from typing import Any, Callable, Dict, Mapping, Type

from trainers import autoencoders


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    family: str
    config_class: Type
    preset: Mapping[str, Any]
    pixel_range: str  # what the Transform scales images to: "unit" [0, 1] or "symmetric" [-1, 1]
    build: Callable


MODELS: Dict[str, ModelEntry] = {
    "stacked_ae": ModelEntry("autoencoder", autoencoders.AutoencoderConfig, {"variant": "stacked"},
                             autoencoders.PIXEL_RANGE, autoencoders.build_autoencoder),
}


def get_model(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"--model {name!r} is unknown; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def make_config(name: str, overrides: Mapping[str, Any]):
    """The model's validated config: its preset, then the non-None overrides. Unknown keys are errors."""
    entry = get_model(name)
    fields = {f.name for f in dataclasses.fields(entry.config_class)}
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in fields)
    if unknown:
        raise ValueError(f"{name} has no setting(s) {unknown}; it has: {', '.join(sorted(fields))}")
    values = {**entry.preset, **{k: v for k, v in overrides.items() if v is not None}}
    if "hidden_units" in values:
        values["hidden_units"] = tuple(values["hidden_units"])
    return entry.config_class(**values)
