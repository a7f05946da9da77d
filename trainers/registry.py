"""The model families and the models `--model` names: trainers/family.py's tables, filled.

Each family module ends with its own `register` call; importing them here (the timm way) is what fills
`FAMILIES` and `MODELS`. Everything else imports this module, never a family module, to ask about a model.
Adding a family is one module (config, build, fit, serving_signatures, and its `register` call) plus its import
below (or a `register` call anywhere before the pipeline is built: a test registers a toy family of its own).
"""
# pylint: disable=unused-import
from trainers import autoencoders, classifier, diffusion, gans, ssgan, stylegan, vae  # noqa: F401  (they register)
from trainers.family import (FAMILIES, MODELS, PIXEL_RANGES, Family, ModelEntry, config_from,  # noqa: F401
                             family, first_images, get_model, make_config, register, sized_for, standard_normal,
                             with_classes, without_base)
