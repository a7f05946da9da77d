"""RayTrainerExecutor: TFX's standard Trainer whose execution is a Ray Train run (TFX's extension mechanism:
`Trainer(custom_executor_spec=ExecutorClassSpec(RayTrainerExecutor))`, as TFX's Cloud AI Platform trainer does).

The executor resolves the Trainer's inputs into a TrainingJob (components.trainer.run_fn), hands it to
components.trainer.ray_train (workers, checkpoints, restarts), rebuilds the trained model from the final checkpoint in
this process and finishes as the in-process run_fn does: SavedModel, training state, metrics, pictures.

custom_config["ray"]: {"settings": RaySettings fields, "storage_path": where Ray keeps runs and checkpoints}.
The Ray run is named after the Trainer's inputs and config, so rerunning the same Trainer after a crash
resumes from its last checkpoint; a run that finished is never resumed into (run_name picks a new name).
"""
import dataclasses
import hashlib
import json
from typing import Any, Dict, List

import pyarrow.fs
from absl import logging
from tfx import types
from tfx.components.trainer.executor import GenericExecutor
from tfx.types import artifact_utils

from backends import storage
from components.trainer import run_fn, tensorboard
from components.trainer import ray_train
from trainers import best_epoch, job as training


class TrainerExecutor(GenericExecutor):
    """TFX's GenericExecutor (run_fn in this process); the feature network's artifact directory, when the Trainer
    has one, reaches run_fn as custom_config["feature_network_dir"]."""

    def _GetFnArgs(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
                   exec_properties: Dict[str, Any]):
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        if input_dict.get("metric_model"):
            fn_args.custom_config = {**(fn_args.custom_config or {}),
                                     "feature_network_dir": artifact_utils.get_single_uri(input_dict["metric_model"])}
        return fn_args


class RayTrainerExecutor(TrainerExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        fn_args = self._GetFnArgs(input_dict, output_dict, exec_properties)
        job = run_fn.training_job(fn_args)
        ray_config = fn_args.custom_config["ray"]
        settings = ray_train.RaySettings(**ray_config["settings"])
        identity = json.dumps({"train": job.train_files, "eval": job.eval_files, "base": job.encoder_from,
                               "model": job.model, "config": job.config, "workers": settings.workers,
                               "holdout": job.holdout_class, "features": job.feature_network},
                              sort_keys=True)
        name = ray_train.run_name(ray_config["storage_path"],
                                  f"{job.model}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}")
        logging.info("training %s on Ray: %d worker(s), run %s", job.model, settings.workers, name)
        # The chief writes TensorBoard events beside the run's checkpoints (readable live there), copied into
        # model_run when it ends, where the in-process Trainer writes them.
        events = storage.join(storage.absolute(ray_config["storage_path"]), name, "tensorboard")
        outcome = ray_train.train(dataclasses.replace(job, tensorboard_dir=events), settings,
                                  ray_config["storage_path"], name)
        filesystem, events_path = storage.pyarrow_filesystem(events)
        if filesystem.get_file_info(events_path).type == pyarrow.fs.FileType.Directory:
            destination, destination_path = storage.pyarrow_filesystem(fn_args.model_run_dir)
            pyarrow.fs.copy_files(events_path, destination_path, source_filesystem=filesystem,
                                  destination_filesystem=destination)
        else:  # a multi-worker run: its chief wrote none (ray_train._train_loop)
            tensorboard.write_history(fn_args.model_run_dir, outcome.history)
        model, _ = training.restore(outcome.checkpoint_dir)  # the best epoch's, when a proxy chose one
        if outcome.kept_epoch is not None:
            logging.info("keeping epoch %d's checkpoint (the lowest %s)", outcome.kept_epoch, best_epoch.PROXY_METRIC)
        run_fn.finish(fn_args, job, model, outcome.history, checkpoint_dir=outcome.checkpoint_dir,
                      workers=outcome.workers, ray_run=outcome.run_path,
                      # Seconds from each epoch's start to the next's on the chief (its checkpoint and report
                      # included): what a cluster's storage and network add shows here.
                      epoch_seconds=[round(b - a, 3) for a, b in zip(outcome.epoch_started_at,
                                                                     outcome.epoch_started_at[1:])],
                      **best_epoch.kept_epoch_details(outcome.history, outcome.kept_epoch))
        outcome.remove_download()
