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
    train: Callable  # (config, input_shape, train_data, eval_data, callbacks) -> (model, history)


def _autoencoder(**preset) -> ModelEntry:
    return ModelEntry("autoencoder", autoencoders.AutoencoderConfig, preset, autoencoders.PIXEL_RANGE,
                      autoencoders.train)


# Presets follow the seed notebook's architectures (../shared/seeds/NOTEBOOK-17.md).
MODELS: Dict[str, ModelEntry] = {
    "linear_ae": _autoencoder(hidden_units=(30,), activation="linear", output_activation="linear"),
    "stacked_ae": _autoencoder(),
    "tied_ae": _autoencoder(tied_weights=True, epochs=10),
    "greedy_ae": _autoencoder(greedy=True, epochs=10, finetune_epochs=5),
    "conv_ae": _autoencoder(architecture="conv", epochs=10),
    "recurrent_ae": _autoencoder(architecture="recurrent", epochs=10),
    "denoising_ae": _autoencoder(noise="dropout", noise_level=0.5, epochs=10),
    "sparse_l1_ae": _autoencoder(hidden_units=(100, 300), sparsity="l1", sparsity_weight=1e-4, epochs=10),
    "sparse_kl_ae": _autoencoder(hidden_units=(100, 300), sparsity="kl", sparsity_weight=5e-3,
                                 sparsity_target=0.1, epochs=10),
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
    for key in ("hidden_units", "conv_filters"):
        if key in values:
            values[key] = tuple(values[key])
    return entry.config_class(**values)
