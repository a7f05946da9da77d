"""The Trainer's glue between TFX and the model library: FnArgs -> TrainingJob, and what a trained model leaves.

`run_fn` is the in-process path (TFX's standard GenericExecutor runs it in the pipeline's process);
`components.trainer.executor.RayTrainerExecutor` runs the same job on Ray Train workers and then calls `finish`.

custom_config: {"model": name, "config": {...}, "image_shape": [h, w, c]} (+ "ray": {...} for the Ray executor).
A classifier's Trainer also gets `base_model`: the pretraining Trainer's Model artifact, whose saved training
state holds the encoder it fine-tunes.

What a trained model leaves (components/artifacts.py is the contract):
    model/Format-Serving/    the SavedModel (serving_model_dir) with the family's signatures
    model/keras-state/       weights + state.json (trainers.job.save_state): what a later Trainer rebuilds from
    model_run/metrics.json   TrainerMetrics: model, config, per-epoch history, ...
    model_run/*.png          loss curves, reconstructions, samples...
"""
import dataclasses
import fnmatch
import os
from typing import Any, Dict, List, Optional

import tensorflow_transform as tft
from absl import logging
from tfx.components.trainer.fn_args_utils import FnArgs

from backends import storage
from components import artifacts
from components.trainer import tensorboard
from evaluation import figures
from trainers import export
from trainers import best_epoch, job as training, registry
from trainers.common import resolve_precision

def training_job(fn_args: FnArgs) -> training.TrainingJob:
    custom = fn_args.custom_config
    encoder_from = None
    if registry.get_model(custom["model"]).family.needs_base_model:
        if not fn_args.base_model:
            raise ValueError(f"the {custom['model']} Trainer needs base_model: the Model artifact of a pretraining "
                             "Trainer")
        encoder_from = artifacts.keras_state_dir(fn_args.base_model)
    # A RayTuner's best values (TFX's `hyperparameters` input) over the run's own settings.
    tuned = (fn_args.hyperparameters or {}).get("values", {}) if getattr(fn_args, "hyperparameters", None) else {}
    return training.TrainingJob(
        model=custom["model"], config={**custom["config"], **tuned},
        image_shape=tuple(int(d) for d in custom["image_shape"]),
        train_files=list(fn_args.train_files), eval_files=list(fn_args.eval_files),
        feature_spec=training.plain_feature_spec(
            tft.TFTransformOutput(fn_args.transform_graph_path).transformed_feature_spec()),
        encoder_from=encoder_from, holdout_class=custom.get("holdout_class"),
        anomaly_fpr=float(custom.get("anomaly_fpr", training.TrainingJob.anomaly_fpr)),
        class_names=tuple(custom.get("class_names", ())), labels_per_class=custom.get("labels_per_class"),
        data_pixel_range=custom.get("data_pixel_range"),
        # The Trainer's metric_model input (components/trainer/executor.py): its epochs are scored there.
        feature_network=(os.path.join(custom["feature_network_dir"], artifacts.METRIC_NETWORK_DIR)
                         if custom.get("feature_network_dir") else None),
        feature_reference=custom.get("feature_network_dir"))


def run_fn(fn_args: FnArgs) -> None:
    job = training_job(fn_args)
    config = job.make_config()
    train_data, eval_data = training.datasets(job, config)
    logging.info("training %s in process for %d epochs", job.model, training.total_epochs(job, config))
    model = training.build_model(job, config)
    proxy = training.sample_quality_proxy(job, config)  # first: the callbacks after it read its logs
    history = training.train(job, model, config, train_data, eval_data,
                             ([proxy] if proxy else []) + tensorboard.callbacks(
                                 job.family, fn_args.model_run_dir, eval_data, training.pixel_range(job), config.seed))
    history.pop("frozen_epochs", None)  # finish() records it (the family's training_details), however it trained
    kept = proxy.restore_best(model) if proxy else None
    if kept is not None:
        logging.info("keeping epoch %d of %d (%s %.4g; the last epoch's %.4g)", kept, len(proxy.values),
                     best_epoch.PROXY_METRIC, proxy.best_value, proxy.values[max(proxy.values)])
    finish(fn_args, job, model, history, **best_epoch.kept_epoch_details(history, kept))


def finish(fn_args: FnArgs, job: training.TrainingJob, model, history: Dict[str, List[float]],
           checkpoint_dir: Optional[str] = None, **details: Any) -> None:
    """Exports the SavedModel (an autoencoder's with its anomaly threshold, calibrated on the eval split), keeps
    the training state (copied from `checkpoint_dir`, or saved from `model`), writes metrics.json (history plus
    `details`) and the family's pictures."""
    config = job.make_config()
    pixels = training.pixel_range(job)
    for key, value in job.family.training_details(config).items():
        details.setdefault(key, value)
    if job.labels_per_class is not None:  # the labels it saw: the no-leak rule of generated training data
        details.setdefault("labels_per_class", job.labels_per_class)
    if getattr(fn_args, "hyperparameters", None):  # a RayTuner's pick: which trial, by what, and its values
        details.setdefault("tuned", dict(fn_args.hyperparameters))
    _, eval_data = training.datasets(job, config)
    # What the family measures on the eval split before export (an autoencoder's anomaly threshold) travels in
    # the SavedModel's metadata and in metrics.json.
    extra_metadata = job.family.calibrate(model, eval_data, job)
    for key, value in extra_metadata.items():
        details.setdefault(key, value)
    export.export_model(job.family, model, job.image_shape, fn_args.serving_model_dir, pixels, job.class_names,
                        extra_metadata)
    state_dir = artifacts.keras_state_dir(fn_args.serving_model_dir)
    if checkpoint_dir:
        storage.copy_tree(checkpoint_dir, state_dir, skip=lambda name: fnmatch.fnmatch(name, "worker-*.json"))
    else:
        training.save_state(model, state_dir, job, training.total_epochs(job, config), history)
    # The precision a run trained in, "auto" resolved (MLflow's params show what ran): on Ray, as the chief
    # resolved it on its own machine.
    precision = details["workers"][0]["precision"] if details.get("workers") else resolve_precision(config.precision)
    full_config = {**dataclasses.asdict(config), "precision": precision}
    artifacts.TrainerMetrics(model=job.model, family=job.family.name, config=job.config,
                             full_config=full_config, pixel_range=pixels,
                             holdout_class=job.holdout_class, history=history,
                             details=details).write(fn_args.model_run_dir)
    shown = next(iter(eval_data))
    shown = (shown[0] if isinstance(shown, tuple) else shown).numpy()
    for path in figures.save_model_figures(job.family, model, shown, pixels, history,
                                           fn_args.model_run_dir, seed=config.seed):
        logging.info("figure: %s", path)
