"""The models `--model` names: each maps to a family, its config class, preset values and pixel range."""
import dataclasses
from typing import Any, Callable, Dict, Mapping, Type

from trainers import autoencoders, diffusion, gans, vae


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    family: str  # autoencoder | vae | gan | diffusion
    config_class: Type
    preset: Mapping[str, Any]
    pixel_range: str  # what the Transform scales images to: "unit" [0, 1] or "symmetric" [-1, 1]
    build: Callable  # (config, input_shape) -> compiled, untrained model
    fit: Callable  # (model, config, train_images, eval_images, callbacks, initial_epoch) -> history
    train: Callable  # (config, input_shape, train_images, eval_images, callbacks) -> (model, history): build + fit


def _entry(family: str, module, config_class: Type, build: Callable) -> Callable[..., ModelEntry]:
    return lambda **preset: ModelEntry(family, config_class, preset, module.PIXEL_RANGE, build, module.fit,
                                       module.train)


_autoencoder = _entry("autoencoder", autoencoders, autoencoders.AutoencoderConfig, autoencoders.build_autoencoder)
_vae = _entry("vae", vae, vae.VAEConfig, vae.build_vae)
_gan = _entry("gan", gans, gans.GANConfig, gans.build_gan)
_diffusion = _entry("diffusion", diffusion, diffusion.DiffusionConfig, diffusion.build_diffusion_model)

# Presets follow the seed notebook's architectures and budgets (../shared/seeds/NOTEBOOK-17.md).
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
    "vae": _vae(),
    "conv_vae": _vae(architecture="conv", hidden_units=(128,), coding_size=16),
    "gan": _gan(),
    "dcgan": _gan(architecture="dcgan", coding_size=100),
    # Gulrajani et al.'s settings: 5 critic steps, penalty 10, Adam(1e-4, beta_1 0.5).
    "wgan_gp": _gan(architecture="dcgan", coding_size=100, loss="wgan_gp", critic_steps=5, optimizer="adam",
                    learning_rate=1e-4, beta_1=0.5),
    "ddpm": _diffusion(),
    "ddpm_linear": _diffusion(schedule="linear"),
}


def get_model(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"--model {name!r} is unknown; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def make_config(name: str, overrides: Mapping[str, Any]):
    """The model's validated config: its preset, then the non-None overrides. Unknown keys are errors."""
    entry = get_model(name)
    return config_from(name, entry.config_class, overrides, entry.preset)


def config_from(name: str, config_class: Type, overrides: Mapping[str, Any], preset: Mapping[str, Any] = None):
    """`config_class(**preset, **overrides)` for JSON-like overrides: None values skipped, unknown keys an error
    naming them, lists back to tuples (JSON, and TFX's custom_config, turn tuples into lists)."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in fields)
    if unknown:
        raise ValueError(f"{name} has no setting(s) {unknown}; it has: {', '.join(sorted(fields))}")
    values = {**(preset or {}), **{k: v for k, v in overrides.items() if v is not None}}
    for field in dataclasses.fields(config_class):
        if field.name in values and isinstance(field.default, tuple):
            values[field.name] = tuple(values[field.name])
    return config_class(**values)
