"""run_fn for TFX's standard Trainer (GenericExecutor): trains a trainers/ model in process.

Writes the SavedModel (serving_model_dir) and, in model_run_dir, metrics.json and the model's pictures.

The glue between TFX's FnArgs and the model library; the models themselves know nothing of TFX.
custom_config: {"model": name, "config": {...}, "image_shape": [h, w, c]}.
"""
import json
import os

import tensorflow_transform as tft
from absl import logging
from tfx.components.trainer.fn_args_utils import FnArgs

from components.trainer import figures
from serving import export
from trainers import data, registry

METRICS_FILE = "metrics.json"


def run_fn(fn_args: FnArgs) -> None:
    custom = fn_args.custom_config
    entry = registry.get_model(custom["model"])
    config = registry.make_config(custom["model"], custom["config"])
    image_shape = tuple(int(d) for d in custom["image_shape"])
    feature_spec = tft.TFTransformOutput(fn_args.transform_output).transformed_feature_spec()

    images = lambda batch: batch["image"]
    train = data.image_dataset(fn_args.train_files, feature_spec, config.batch_size, seed=config.seed).map(images)
    evaluation = data.image_dataset(fn_args.eval_files, feature_spec, config.batch_size, shuffle=False).map(images)

    logging.info("training %s for %d epochs", custom["model"], config.epochs)
    model, metrics = entry.train(config, image_shape, train, evaluation)
    export.export_model(entry.family, model, image_shape, fn_args.serving_model_dir)
    os.makedirs(fn_args.model_run_dir, exist_ok=True)
    with open(os.path.join(fn_args.model_run_dir, METRICS_FILE), "w") as f:
        json.dump({"model": custom["model"], "config": custom["config"], "history": metrics}, f, indent=1)
    shown = next(iter(evaluation)).numpy()
    for path in figures.save_model_figures(entry.family, model, shown, entry.pixel_range, metrics,
                                           fn_args.model_run_dir, seed=config.seed):
        logging.info("figure: %s", path)
