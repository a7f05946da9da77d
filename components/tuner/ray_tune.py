"""A hyperparameter search on Ray Tune: every trial is a Ray Train run (components/trainer/ray_train.py) of the
same TrainingJob with the trial's config values, its per-epoch metric sent to Tune by Ray Train's
TuneReportCallback; ASHA stops the poor trials at its rungs. The one module that uses Ray Tune.

    outcome = ray_tune.search(job, space, RaySettings(workers=1), SearchSettings(trials=12), storage, "dcgan-1a2b")

The metric is the family's cheap per-epoch score: the sample-quality proxy (KID of a few hundred samples in the
run's feature space, trainers/best_epoch.py) for a generative family, else the family's `epoch_metric`
(validation loss or accuracy). Under MultiWorkerMirroredStrategy both are already global (Keras reduces the
validation metrics across replicas; every worker scores the same proxy samples), and the chief's report is the
one Tune reads. A trial whose training diverges reports the worst value and ends ("diverged"): it stops, it does
not crash the search; a trial that fails otherwise is retried once (Tune's FailureConfig) and, failing again, is
reported as failed, never silently dropped.
"""
import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

from backends import ray_cluster, storage
from components.trainer import ray_train

_log = logging.getLogger("latentforge.tune")
PROXY_METRIC = "proxy_kid_x1e3"  # trainers.best_epoch.PROXY_METRIC (not imported: it would import TensorFlow)
# The trial's own process only waits on its Ray Train run, whose workers hold the CPUs (Ray Train places them in a
# placement group of its own). Tune needs a non-empty request: a little memory, no CPU, so the CPUs go whole to
# the workers and `groups` trials fit exactly.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 2 ** 20}


class SearchBudgetTooSmall(ValueError):
    """--tune-budget-minutes ran out before any trial trained an epoch (exit 2: the user's setting)."""


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    trials: int = 12
    budget_minutes: Optional[float] = None  # None: until every trial has ended
    scheduler: str = "asha"  # or "fifo": every trial to its last epoch
    grace_epochs: int = 1  # ASHA: epochs every trial trains before it can be stopped
    reduction_factor: int = 2  # ASHA: the share of trials promoted at each rung is 1 / this
    seed: int = 0

    def __post_init__(self):
        if self.trials < 1:
            raise ValueError(f"--tune-trials {self.trials}: at least one trial")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ValueError(f"--tune-budget-minutes {self.budget_minutes}: must be positive")
        if self.scheduler not in ("asha", "fifo"):
            raise ValueError(f"scheduler {self.scheduler!r}: asha or fifo")


@dataclasses.dataclass
class TrialRecord:
    trial_id: str
    config: Dict[str, Any]  # the searched fields' values
    # "finished" (its last epoch), "stopped" (by ASHA or the budget), "diverged", "failed", or "not started" (the
    # budget ran out first)
    status: str
    curve: List[float]  # the metric after each epoch it trained
    epoch_seconds: List[float]
    best: float  # the trial's best metric (inf when it has none)
    error: str = ""
    final: Dict[str, float] = dataclasses.field(default_factory=dict)  # a finalist's full scores (the executor's)
    # When the trial started (its first report's time less that iteration's, which holds any wait for its worker
    # group's CPUs) and when it last reported: seconds since the epoch (None: it never reported)
    started: Optional[float] = None
    ended: Optional[float] = None


@dataclasses.dataclass
class SearchOutcome:
    metric: str
    mode: str  # "min" or "max"
    epochs: int  # what a trial trains when nothing stops it
    trials: List[TrialRecord]
    best: TrialRecord
    seconds: float
    ranked_by: str = ""  # what picked `best`: the per-epoch metric, or the finalists' full evaluation

    def epochs_saved(self) -> int:
        """Epochs the stopped trials did not train (what ASHA and the budget saved against running every trial
        to its end)."""
        return sum(self.epochs - len(t.curve) for t in self.trials if t.status == "stopped" and t.curve)

    def seconds_saved(self) -> float:
        """epochs_saved in time, at the search's steady epoch time: the median of every epoch after a trial's
        first (a first epoch's time also holds the trial's start-up and its wait for free CPUs)."""
        steady = sorted(s for t in self.trials for s in t.epoch_seconds[1:]) or sorted(
            s for t in self.trials for s in t.epoch_seconds)
        return self.epochs_saved() * steady[len(steady) // 2] if steady else 0.0


def metric_for(family) -> tuple:
    """(metric, mode) a search ranks this family's trials by."""
    if family.generative:
        return PROXY_METRIC, "min"
    name, higher = family.epoch_metric
    return name, "max" if higher else "min"


def tune_domain(domain):
    """A trainers.search_space Domain as Ray Tune's sampling function."""
    from ray import tune  # pylint: disable=import-outside-toplevel
    if domain.kind == "choice":
        return tune.choice(list(domain.values))
    low, high = domain.values
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[domain.kind](low, high)


def trial_run_name(search_name: str, trial_id: str) -> str:
    """The Ray Train run of one trial (under the search's storage path): what its checkpoints are kept under."""
    return f"{search_name}-{trial_id}"


def _trial(config: Dict[str, Any], job_fields: Dict[str, Any], settings: Dict[str, Any], storage_path: str,
           run_prefix: str, metric: str, mode: str) -> None:
    """One trial (in its own Ray actor): a Ray Train run of the job with `config`'s values."""
    import ray.tune  # pylint: disable=import-outside-toplevel
    from ray.tune.integration.ray_train import TuneReportCallback  # pylint: disable=import-outside-toplevel
    from trainers import job as training  # pylint: disable=import-outside-toplevel
    from trainers.common import TrainingDiverged  # pylint: disable=import-outside-toplevel
    job = training.TrainingJob(**{**job_fields, "config": {**job_fields["config"], **config}})
    name = trial_run_name(run_prefix, ray.tune.get_context().get_trial_id())
    # A trial may start while a stopped one's workers still hold their CPUs (Ray Train's placement-group cleaner
    # releases them once it sees that trial's controller gone): it waits for them rather than failing after Ray
    # Train's default 60 s, a failure that also left its own late placement group reserved.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "1800")
    try:
        outcome = ray_train.train(job, ray_train.RaySettings(**settings), storage_path, name,
                                  callbacks=[TuneReportCallback()], progress_to_terminal=False)
        outcome.remove_download()  # the search's finalists are read from storage (ray_train.kept_checkpoint)
    except TrainingDiverged as error:
        # The worst value, so no scheduler promotes it; the trial then ends as any finished one does.
        ray.tune.report({metric: math.inf if mode == "min" else -math.inf, "diverged": 1.0,
                         "diverged_reason": str(error)[:300]})


class _Progress:
    """A line per ended trial with the best so far (the quiet console: no Tune tables)."""

    def __init__(self, total: int, metric: str, mode: str, say: Callable[[str], None]):
        from ray.tune import Callback  # pylint: disable=import-outside-toplevel

        outer = self

        class Reporter(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                outer.ended(trial, "ended")

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.ended(trial, "failed")

        self.callback = Reporter()
        self.total, self.metric, self.mode, self.say = total, metric, mode, say
        self.done, self.best = 0, None

    def ended(self, trial, how: str) -> None:
        self.done += 1
        result = trial.last_result or {}
        value = result.get(self.metric)
        epochs = result.get("training_iteration", 0)
        if value is not None and math.isfinite(value) and (
                self.best is None or (value < self.best[0] if self.mode == "min" else value > self.best[0])):
            self.best = (value, trial.trial_id)
        shown = f"{self.metric} {value:.4g}" if isinstance(value, (int, float)) else "no metric"
        best = f"best {self.best[0]:.4g} (trial {self.best[1]})" if self.best else "no best yet"
        self.say(f"latentforge: tune trial {self.done}/{self.total} {trial.trial_id} {how} after {epochs} "
                 f"epoch(s), {shown}; {best}")


def search(job, space: Mapping[str, Any], settings: ray_train.RaySettings,
           search_settings: SearchSettings, storage_path: str, name: str,
           say: Callable[[str], None] = print) -> SearchOutcome:
    """Runs the search; every trial's record, the best first by its best epoch's metric."""
    from ray import tune  # pylint: disable=import-outside-toplevel
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # pylint: disable=import-outside-toplevel
    from ray.tune.search import BasicVariantGenerator  # pylint: disable=import-outside-toplevel

    ray_cluster.connect(settings.address, dashboard=True)
    metric, mode = metric_for(job.family)
    resources = ray_train.worker_resources(settings)
    epochs = int(job.family.total_epochs(job.make_config()))
    # As many trials at once as the cluster holds worker groups.
    import ray  # pylint: disable=import-outside-toplevel
    groups = int(ray.cluster_resources().get("CPU", 1) // (resources["CPU"] * settings.workers)) or 1
    if settings.gpus_per_worker:
        groups = min(groups, int(ray.cluster_resources().get("GPU", 0) // (settings.gpus_per_worker
                                                                           * settings.workers)) or 1)
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                               grace_period=min(search_settings.grace_epochs, epochs),
                               reduction_factor=search_settings.reduction_factor)
                 if search_settings.scheduler == "asha" else FIFOScheduler())
    storage_path = storage.absolute(storage_path)
    filesystem, path = storage.pyarrow_filesystem(storage_path)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, job_fields=dataclasses.asdict(job), settings=dataclasses.asdict(settings),
                             storage_path=storage_path, run_prefix=name, metric=metric, mode=mode),
        TRIAL_DRIVER_RESOURCES)
    progress = _Progress(search_settings.trials, metric, mode, say)
    tuner = tune.Tuner(
        trainable,
        param_space={field: tune_domain(domain) for field, domain in space.items()},
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, scheduler=scheduler, num_samples=search_settings.trials,
            # The limit goes to the generator itself: Tune applies `max_concurrent_trials` only to a Searcher and
            # ignores it (with a warning) beside a BasicVariantGenerator, which then started every trial at once
            # (12 trials' worker groups queued for 2 CPUs, one of them starved for the whole hour).
            search_alg=BasicVariantGenerator(random_state=search_settings.seed, max_concurrent=groups),
            time_budget_s=search_settings.budget_minutes * 60 if search_settings.budget_minutes else None),
        run_config=tune.RunConfig(
            name=name, storage_path=path if storage.is_uri(storage_path) else storage_path,
            storage_filesystem=filesystem if storage.is_uri(storage_path) else None,
            failure_config=tune.FailureConfig(max_failures=1), callbacks=[progress.callback], verbose=0))
    say(f"latentforge: tune {job.model}: {search_settings.trials} trial(s), {groups} at a time, by {metric} "
        f"({mode}), {search_settings.scheduler.upper()} over {epochs} epoch(s)"
        + (f", {search_settings.budget_minutes:g} min budget" if search_settings.budget_minutes else ""))
    started = time.time()
    results = tuner.fit()
    records = [_record(result, metric, mode, epochs, space) for result in results]
    finite = [r for r in records if math.isfinite(r.best)]
    if not finite:
        if search_settings.budget_minutes and not any(r.curve for r in records):
            raise SearchBudgetTooSmall(
                f"--tune-budget-minutes {search_settings.budget_minutes:g} ended the search before any trial "
                "finished an epoch: give it more minutes, or fewer --epochs per trial")
        reasons = "; ".join(f"{r.trial_id}: {r.status} {r.error}".strip() for r in records)[:1500]
        raise RuntimeError(f"no trial of the search reported a finite {metric} ({reasons})")
    best = (min if mode == "min" else max)(finite, key=lambda r: r.best)
    records.sort(key=lambda r: (not math.isfinite(r.best), r.best if mode == "min" else -r.best))
    return SearchOutcome(metric, mode, epochs, records, best, time.time() - started,
                         f"{metric}, each trial's best epoch")


def _record(result, metric: str, mode: str, epochs: int, space) -> TrialRecord:
    rows = result.metrics_dataframe
    rows = rows.to_dict("records") if rows is not None else []
    epoch_rows = [r for r in rows if metric in r and not r.get("diverged")]
    curve = [float(r[metric]) for r in epoch_rows]
    seconds = [float(r["time_this_iter_s"]) for r in epoch_rows if "time_this_iter_s" in r]
    config = {k: v for k, v in (result.config or {}).items() if k in space}
    last = result.metrics or {}
    trial_id = last.get("trial_id") or (rows[-1].get("trial_id") if rows else "?")
    finite = [v for v in curve if math.isfinite(v)]
    best = (min(finite) if mode == "min" else max(finite)) if finite else math.inf
    if result.error is not None:
        status, error = "failed", f"{type(result.error).__name__}: {str(result.error).splitlines()[0][:300]}"
    elif any(r.get("diverged") for r in rows):
        status, error = "diverged", str(next(r.get("diverged_reason", "") for r in rows if r.get("diverged")))
    elif not rows:
        status, error = "not started", ""
    else:
        status, error = ("finished" if len(curve) >= epochs else "stopped"), ""
    if not finite:
        best = math.inf  # ranked last whatever the mode
    timed = [r for r in rows if "timestamp" in r]
    started = float(timed[0]["timestamp"]) - float(timed[0].get("time_this_iter_s", 0.0)) if timed else None
    ended = float(timed[-1]["timestamp"]) if timed else None
    return TrialRecord(str(trial_id), config, status, curve, seconds, best, error, started=started, ended=ended)
