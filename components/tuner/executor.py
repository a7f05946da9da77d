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
# A generative search's per-epoch metric is a cheap proxy (KID of a few hundred samples): it stops trials and
# ranks epochs. The winner is picked among the FINALISTS best trials that trained every epoch by the Evaluator's
# FID of FINAL_SAMPLES images from each one's kept epoch.
FINALISTS = 3
FINAL_SAMPLES = 2000


def _finite_or_none(value: float):
    return value if math.isfinite(value) else None


def _rank_finalists(job, outcome: ray_tune.SearchOutcome, storage_path: str, search_name: str) -> None:
    """Scores a generative search's finalists in full (FID of FINAL_SAMPLES images from each one's kept
    checkpoint, in the run's feature space) and makes the lowest the best; other searches keep the per-epoch
    metric, which is already the family's own (a validation loss or accuracy over the whole eval split)."""
    if not (job.family.generative and job.feature_network):
        return
    from trainers import best_epoch, job as training  # pylint: disable=import-outside-toplevel  (TensorFlow)
    config = job.make_config()
    finalists = [t for t in outcome.trials if t.status == "finished" and math.isfinite(t.best)][:FINALISTS]
    for trial in finalists:
        checkpoint = ray_train.kept_checkpoint(storage_path, ray_tune.trial_run_name(search_name, trial.trial_id))
        if checkpoint is None:
            continue
        model, _ = training.restore(checkpoint)
        scorer = best_epoch.SampleQualityProxy(job.family, job.image_shape, training.pixel_range(job),
                                               job.feature_network, job.feature_reference, samples=FINAL_SAMPLES,
                                               seed=config.seed)
        scorer.set_model(model)
        trial.final = {k: float(v) for k, v in scorer.full_scores().items()}
        print(f"latentforge: tune finalist {trial.trial_id}: {best_epoch.PROXY_METRIC} {trial.best:.4g}, FID "
              f"{trial.final['fid']:.4g} ({FINAL_SAMPLES} samples)", flush=True)
    scored = [t for t in finalists if t.final and math.isfinite(t.final["fid"])]
    if scored:
        outcome.best = min(scored, key=lambda t: t.final["fid"])
        outcome.ranked_by = f"fid of {FINAL_SAMPLES} samples, best of {len(scored)} finalist(s)"


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
        _rank_finalists(job, outcome, custom["ray"]["storage_path"], name)
        best = outcome.best
        logging.info("tune: best trial %s, %s %.4g, %s", best.trial_id, outcome.metric, best.best, best.config)
        results_dir = artifact_utils.get_single_uri(output_dict[standard_component_specs.TUNER_RESULTS_KEY])
        trials = [{**dataclasses.asdict(t), "best": _finite_or_none(t.best),
                   "curve": [_finite_or_none(v) for v in t.curve]} for t in outcome.trials]
        record = {"model": job.model, "metric": outcome.metric, "mode": outcome.mode, "epochs": outcome.epochs,
                  "space": config.space, "search": config.search, "ray_run": name, "seconds": outcome.seconds,
                  "best_trial": best.trial_id, "best_config": best.config, "best": best.best,
                  "ranked_by": outcome.ranked_by, "best_final": best.final,
                  "epochs_saved": outcome.epochs_saved(), "seconds_saved": outcome.seconds_saved(),
                  "trials": trials}
        artifacts.write_json(results_dir, artifacts.SEARCH_FILE, record)
        picture = figures.save_search(storage.join(results_dir, SEARCH_PICTURE),
                                      [dataclasses.asdict(t) for t in outcome.trials], outcome.metric, outcome.mode,
                                      sorted(space), best.trial_id)
        artifacts.write_best_hyperparameters(
            artifact_utils.get_single_uri(output_dict[standard_component_specs.BEST_HYPERPARAMETERS_KEY]),
            best.config, {"metric": outcome.metric, "mode": outcome.mode, "best": best.best, "trial": best.trial_id,
                          "ranked_by": outcome.ranked_by, **({"final": best.final} if best.final else {})})
        counts = {s: sum(t.status == s for t in outcome.trials)
                  for s in ("finished", "stopped", "diverged", "failed", "not started")}
        print(f"latentforge: tune {job.model}: best trial {best.trial_id} {outcome.metric} {best.best:.4g} with "
              f"{json.dumps(best.config, sort_keys=True)} (ranked by {outcome.ranked_by}); "
              f"{', '.join(f'{v} {k}' for k, v in counts.items() if v)}; "
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
            metrics={**({"best": t["best"]} if t["best"] is not None else {}),
                     **{f"final_{k}": v for k, v in t["final"].items()}},
            history={record["metric"]: [v if v is not None else math.nan for v in t["curve"]]},
            tags={**tags, "status": t["status"], "best": str(t["trial_id"] == record["best_trial"]).lower()})
            for t in record["trials"]]
        run_id = tracking.log_search(tracking.TrackingConfig(**config.tracking), pipeline=config.pipeline,
                                     pipeline_run_id=pipeline_run_id, search=search, trials=trials,
                                     parent_tags={"dataset": config.dataset})
        logging.info("MLflow: the search logged in run %s", run_id)
