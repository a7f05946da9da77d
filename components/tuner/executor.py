"""Executor of RayTuner: resolves the inputs into the Trainer's TrainingJob (components.trainer.run_fn), runs the
search (components.tuner.ray_tune), writes the best values for the Trainer and the record of every trial, draws
the search, and logs it to MLflow (a run for the search under the pipeline run, a child per trial, the best
tagged)."""
import dataclasses
import hashlib
import json
import math
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.trainer import fn_args_utils
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils, standard_component_specs

from backends import storage
from components import artifacts
from components.trainer import ray_train, run_fn
from components.tuner import ray_tune
from evaluation import figures
from trainers import search_space

SEARCH_PICTURE = "search.png"


def _finite_or_none(value: float):
    return value if math.isfinite(value) else None


class RayTunerExecutor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        config = artifacts.load_config(artifacts.TunerConfig, exec_properties["config"])
        fn_args = fn_args_utils.get_common_fn_args(input_dict, exec_properties)
        custom = dict(fn_args.custom_config or {})
        if input_dict.get("metric_model"):
            custom["feature_network_dir"] = artifact_utils.get_single_uri(input_dict["metric_model"])
        fn_args.custom_config = custom
        job = run_fn.training_job(fn_args)
        space = search_space.from_mapping(config.space, "the search space")
        settings = ray_train.RaySettings(**custom["ray"]["settings"])
        search_settings = ray_tune.SearchSettings(**config.search)
        identity = json.dumps({"job": dataclasses.asdict(job), "space": config.space, "search": config.search},
                              sort_keys=True, default=str)
        name = ray_train.run_name(custom["ray"]["storage_path"],
                                  f"tune-{job.model}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}")
        outcome = ray_tune.search(job, space, settings, search_settings, custom["ray"]["storage_path"], name,
                                  say=lambda line: print(line, flush=True))
        best = outcome.best
        logging.info("tune: best trial %s, %s %.4g, %s", best.trial_id, outcome.metric, best.best, best.config)
        results_dir = artifact_utils.get_single_uri(output_dict[standard_component_specs.TUNER_RESULTS_KEY])
        trials = [{**dataclasses.asdict(t), "best": _finite_or_none(t.best),
                   "curve": [_finite_or_none(v) for v in t.curve]} for t in outcome.trials]
        record = {"model": job.model, "metric": outcome.metric, "mode": outcome.mode, "epochs": outcome.epochs,
                  "space": config.space, "search": config.search, "ray_run": name, "seconds": outcome.seconds,
                  "best_trial": best.trial_id, "best_config": best.config, "best": best.best,
                  "epochs_saved": outcome.epochs_saved(), "seconds_saved": outcome.seconds_saved(),
                  "trials": trials}
        artifacts.write_json(results_dir, artifacts.SEARCH_FILE, record)
        picture = figures.save_search(storage.join(results_dir, SEARCH_PICTURE),
                                      [dataclasses.asdict(t) for t in outcome.trials], outcome.metric, outcome.mode,
                                      sorted(space))
        artifacts.write_best_hyperparameters(
            artifact_utils.get_single_uri(output_dict[standard_component_specs.BEST_HYPERPARAMETERS_KEY]),
            best.config, {"metric": outcome.metric, "mode": outcome.mode, "best": best.best, "trial": best.trial_id})
        counts = {s: sum(t.status == s for t in outcome.trials) for s in ("finished", "stopped", "diverged", "failed")}
        print(f"latentforge: tune {job.model}: best trial {best.trial_id} {outcome.metric} {best.best:.4g} with "
              f"{json.dumps(best.config, sort_keys=True)}; {', '.join(f'{v} {k}' for k, v in counts.items() if v)}; "
              f"{outcome.epochs_saved()} epoch(s) saved by stopping early ({outcome.seconds_saved() / 60:.1f} min)",
              flush=True)
        if config.tracking:
            self._log(config, job.model, record, [picture, storage.join(results_dir, artifacts.SEARCH_FILE)])

    def _log(self, config: artifacts.TunerConfig, model: str, record: Dict[str, Any], files: List[str]) -> None:
        from backends import tracking  # pylint: disable=import-outside-toplevel  (MLflow's one module)
        pipeline_run_id = (self._context.pipeline_run_id if self._context else None) or "unknown"
        tags = {"tfx.pipeline_run_id": pipeline_run_id}
        search = tracking.ChildRun(
            name="RayTuner", params={"model": model, "metric": record["metric"], "space": record["space"],
                                     **{f"search.{k}": v for k, v in record["search"].items()}},
            metrics={"best": record["best"], "epochs_saved": record["epochs_saved"],
                     "seconds_saved": record["seconds_saved"], "trials": len(record["trials"])},
            tags={**tags, "best_trial": record["best_trial"]}, artifacts=files)
        trials = [tracking.ChildRun(
            name=f"trial {t['trial_id']}", params=t["config"],
            metrics={"best": t["best"]} if t["best"] is not None else {},
            history={record["metric"]: [v if v is not None else math.nan for v in t["curve"]]},
            tags={**tags, "status": t["status"], "best": str(t["trial_id"] == record["best_trial"]).lower()})
            for t in record["trials"]]
        run_id = tracking.log_search(tracking.TrackingConfig(**config.tracking), pipeline=config.pipeline,
                                     pipeline_run_id=pipeline_run_id, search=search, trials=trials,
                                     parent_tags={"dataset": config.dataset})
        logging.info("MLflow: the search logged in run %s", run_id)
