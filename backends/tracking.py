"""MLflow: the one module that talks to it (tracking, the model registry, logged models).

Where: `--mlflow-uri` (or MLFLOW_TRACKING_URI) names a server (http://HOST:5000) or a store; the embedded default
is a SQLite store RUN_DIR/PIPELINE/mlflow.db with artifacts under RUN_DIR/PIPELINE/mlartifacts. The
experiment is the pipeline's name.

What a pipeline run leaves (written by the MlflowRegistrar component, after the Evaluator):
    parent run "PIPELINE RUN_ID"     tags: tfx.pipeline_run_id, tfx.pipeline, latentforge.run_kind=pipeline,
                                     source, dataset
      child run "Trainer"            params: the model's full config; metrics: per-epoch history (step = epoch);
                                     artifacts: the Trainer's pictures, metrics.json; the model (tensorflow
                                     flavor, signature + input example) registered as a version of DATASET-FAMILY
      child run "Evaluator"          metrics: the evaluation; tags: blessing decision; artifacts: its pictures
      child run "MetricNetworkTrainer"  once per dataset: its scores; the network registered as
                                     DATASET-metric-network
Each registered version carries tags: the key metric and its value, the evaluator run, the TFX artifact and
execution ids; the alias `champion` moves to it only when the Evaluator blessed it. Versions are never deleted.
"""
import contextlib
import dataclasses
import io
import json
import math
import os
import posixpath
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from backends import storage, verbose

CHAMPION = "champion"
EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "mlartifacts"
RUN_KIND_TAG = "latentforge.run_kind"  # "pipeline" on a pipeline run's parent run
# A server that is down should fail a run in seconds, not after MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


class TrackingError(RuntimeError):
    """MLflow cannot be reached or refused a request; the message names the URI and what to do."""


class RegistryLookupError(TrackingError):
    """The registry answers but has no such model, version or alias."""


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    uri: str  # tracking and registry URI
    experiment: str
    artifact_location: Optional[str] = None  # a new experiment's artifact root (embedded store); None: the server's


def embedded(root: str, experiment: str, artifacts_root: Optional[str] = None) -> TrackingConfig:
    """SQLite in `root` (a local directory); artifacts there too, or under `artifacts_root` (a bucket URI: MLflow's
    own S3/GCS artifact repositories write them)."""
    artifacts = (artifacts_root.rstrip("/") + "/" + EMBEDDED_ARTIFACTS if artifacts_root else
                 "file://" + os.path.join(os.path.abspath(root), EMBEDDED_ARTIFACTS))
    return TrackingConfig(uri="sqlite:///" + os.path.join(os.path.abspath(root), EMBEDDED_DB), experiment=experiment,
                          artifact_location=artifacts)


def resolve(flag: Optional[str], root: str, experiment: str, artifacts_root: Optional[str] = None) -> TrackingConfig:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else the embedded store under `root` (artifacts under
    `artifacts_root` when given)."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI")
    return TrackingConfig(uri=uri, experiment=experiment) if uri else embedded(root, experiment, artifacts_root)


def store_exists(config: TrackingConfig) -> bool:
    """False only for a SQLite store whose file is not there (nothing was ever logged or registered in it)."""
    return not (config.uri.startswith("sqlite:///") and not os.path.exists(config.uri[len("sqlite:///"):]))


def check_reachable(config: TrackingConfig, timeout: float = 20.0) -> None:
    """For a server URI: its /health answers within `timeout`, or TrackingError. A server that is down refuses
    the connection at once; the timeout is for one that is up but slow (a busy machine: 5 s was missed)."""
    if not config.uri.startswith(("http://", "https://")):
        return
    url = config.uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        raise TrackingError(f"the MLflow server {config.uri} does not answer ({error}); start it (mlflow server "
                            "--host ... --port ...), fix --mlflow-uri, or leave it unset for the embedded store") from error


def registered_model_name(dataset: str, family: str) -> str:
    """DATASET-FAMILY with what MLflow allows in a name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}-{family}")


def _client(config: TrackingConfig):
    import mlflow  # pylint: disable=import-outside-toplevel
    return mlflow.MlflowClient(tracking_uri=config.uri, registry_uri=config.uri)


_FLUENT_API_LOCK = threading.RLock()


@contextlib.contextmanager
def _fluent_api_at(config: TrackingConfig):
    """Points MLflow's global (fluent) API at `config.uri` for the block, then back: mlflow.set_tracking_uri also
    sets MLFLOW_TRACKING_URI in the environment, which would otherwise leak into the next run in this process
    (and change its tracking config, hence its TFX cache key)."""
    import mlflow  # pylint: disable=import-outside-toplevel
    # The URIs are process-wide: two threads logging at once (two pipelines in one process) would each restore
    # them under the other, whose MlflowClient() then looks for its logged model in MLflow 3's default
    # ./mlflow.db. One at a time.
    with _FLUENT_API_LOCK:
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(config.uri)
        mlflow.set_registry_uri(config.uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
            mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _experiment_id(client, config: TrackingConfig) -> str:
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(config.experiment, artifact_location=config.artifact_location)


@contextlib.contextmanager
def _guarded(action: str, config: TrackingConfig):
    """Turns MLflow's and the network's errors into a TrackingError naming the URI."""
    import mlflow  # pylint: disable=import-outside-toplevel
    try:
        yield
    except TrackingError:
        raise
    except (mlflow.exceptions.MlflowException, OSError) as error:
        raise TrackingError(f"MLflow at {config.uri} failed while {action}: {error}") from error


def champion_metrics(config: TrackingConfig, name: str) -> Optional[Tuple[str, Dict[str, float]]]:
    """(version, the metrics its evaluator logged) of NAME@champion, or None when there is no champion."""
    check_reachable(config)
    with _guarded(f"reading {name}@{CHAMPION}", config):
        return _champion_now(_client(config), name)


@dataclasses.dataclass
class ChildRun:
    """What one component's child run gets."""
    name: str
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    history: Dict[str, List[float]] = dataclasses.field(default_factory=dict)  # per-epoch, logged at step = epoch
    points: Dict[str, Dict[int, float]] = dataclasses.field(default_factory=dict)  # name -> {step: value}
    tags: Dict[str, str] = dataclasses.field(default_factory=dict)
    artifacts: Sequence[str] = ()  # files


@dataclasses.dataclass(frozen=True)
class LoggedVersion:
    name: str
    version: str
    champion: bool  # whether NAME@champion now points at it
    parent_run_id: str
    trainer_run_id: str
    evaluator_run_id: str


def _flat_params(values: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def _log_child(client, experiment_id: str, parent_id: str, child: ChildRun) -> str:
    from mlflow.entities import Metric, Param  # pylint: disable=import-outside-toplevel
    run = client.create_run(experiment_id, run_name=child.name,
                            tags={"mlflow.parentRunId": parent_id, **child.tags})
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in child.metrics.items()]
    metrics += [Metric(k, float(v), now, epoch) for k, values in child.history.items()
                for epoch, v in enumerate(values, start=1)]
    metrics += [Metric(k, float(v), now, int(step)) for k, values in child.points.items()
                for step, v in values.items()]
    # A value that could not be computed is absent, never NaN or infinite (MLflow would store and plot it).
    metrics = [m for m in metrics if math.isfinite(m.value)]
    params = [Param(k, v[:6000]) for k, v in _flat_params(child.params).items()]
    for start in range(0, max(len(metrics), len(params), 1), 100):  # MLflow's batch limits
        client.log_batch(run.info.run_id, metrics=metrics[start:start + 100], params=params[start:start + 100],
                         tags=[])
    for path in child.artifacts:
        if storage.is_uri(path):  # MLflow logs local files: one read from the bucket into a temporary one
            with tempfile.TemporaryDirectory() as local:
                copy = os.path.join(local, posixpath.basename(path))
                with storage.open_file(path, "rb") as source, open(copy, "wb") as target:
                    target.write(source.read())
                client.log_artifact(run.info.run_id, copy)
        else:
            client.log_artifact(run.info.run_id, path)
    return run.info.run_id


def _parent_run(client, experiment_id: str, pipeline: str, pipeline_run_id: str, tags: Dict[str, str]) -> str:
    """The parent run of this pipeline run (made by the first registrar that logs for it)."""
    # The child runs carry tfx.pipeline_run_id too: the parent is the one tagged as such.
    found = client.search_runs([experiment_id], f"tags.`tfx.pipeline_run_id` = '{pipeline_run_id}' and "
                               f"tags.`{RUN_KIND_TAG}` = 'pipeline'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"{pipeline} {pipeline_run_id}",
                            tags={"tfx.pipeline_run_id": pipeline_run_id, "tfx.pipeline": pipeline,
                                  RUN_KIND_TAG: "pipeline", **tags})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _mlflow_module(saved_model_dir: str):
    """(tf.Module, its signatures, the loaded SavedModel): MLflow's tensorflow flavor wants a tf.Module, so a loaded
    SavedModel is wrapped in one that keeps its callable (what pyfunc.predict calls) and every named signature."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    loaded = tf.saved_model.load(saved_model_dir)
    module = tf.Module()
    module.saved = loaded
    module.__call__ = loaded.__call__
    return module, dict(loaded.signatures), loaded


def _log_model(config: TrackingConfig, run_id: str, saved_model_dir: str, input_example, registered_name: str):
    import mlflow  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from mlflow.models import infer_signature  # pylint: disable=import-outside-toplevel
    module, signatures, loaded = _mlflow_module(saved_model_dir)
    output = loaded(tf.constant(input_example)).numpy()
    with _fluent_api_at(config), mlflow.start_run(run_id=run_id), _registry_chatter_kept_unless_verbose():
        info = mlflow.tensorflow.log_model(
            module, name="model", signature=infer_signature(input_example, output), input_example=input_example,
            registered_model_name=registered_name, saved_model_kwargs={"signatures": signatures},
            # Given, not inferred: inference loads the model again in a subprocess (tens of seconds).
            pip_requirements=[f"tensorflow=={tf.__version__}"])
    return info


@contextlib.contextmanager
def _registry_chatter_kept_unless_verbose():
    """MLflow prints "Successfully registered model ...", "Created version ..." to stderr itself (its eprint; the
    run reports the version). Kept out of the default output, and shown after all if registering fails."""
    if verbose():
        yield
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise


@contextlib.contextmanager
def champion_lock(config: TrackingConfig):
    """Held while the champion is re-read and moved: an exclusive flock on a file beside a local store (SQLite
    or file:), so two pipelines on this machine (or on one shared filesystem) registering into one model move
    the alias one at a time. A server store has no lock to take: the re-read narrows the race to the moment
    between reading and setting the alias."""
    import fcntl  # pylint: disable=import-outside-toplevel
    local = (config.uri[len("sqlite:///"):] if config.uri.startswith("sqlite:///") else
             config.uri[len("file://"):] if config.uri.startswith("file://") else None)
    if local is None:
        yield
        return
    lock_path = (local.rstrip("/") + ".champion.lock") if not os.path.isdir(local) else os.path.join(
        local, ".champion.lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _champion_now(client, name: str) -> Optional[Tuple[str, Dict[str, float]]]:
    """(version, its evaluator's metrics) of NAME@champion as the registry says now, or None."""
    import mlflow  # pylint: disable=import-outside-toplevel
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    run_id = version.tags.get("evaluator_run_id")
    return str(version.version), dict(client.get_run(run_id).data.metrics) if run_id else {}


def log_pipeline_run(config: TrackingConfig, *, pipeline: str, pipeline_run_id: str, registered_name: str,
                     saved_model_dir: str, input_example, blessed: bool, key_metric: str,
                     key_metric_value: Optional[float], trainer: ChildRun, evaluator: ChildRun,
                     version_tags: Dict[str, str], parent_tags: Dict[str, str],
                     metric_network: Optional[Tuple[ChildRun, str, Any, str]] = None,
                     still_beats: Optional[Callable[[Optional[Tuple[str, Dict[str, float]]]], bool]] = None
                     ) -> LoggedVersion:
    """Logs one trained model's runs, registers it as a new version of `registered_name` and moves `champion`
    to it when `blessed` and, with `still_beats`, when it still beats the champion as the registry has it at
    the moment of the move (under `champion_lock`: another pipeline may have moved it since the Evaluator
    read it). metric_network: (its child run, SavedModel dir, input example, registered name), registered only
    when no version of that name holds the same artifact."""
    check_reachable(config)
    with _guarded(f"logging {registered_name}", config):
        client = _client(config)
        experiment_id = _experiment_id(client, config)
        parent_id = _parent_run(client, experiment_id, pipeline, pipeline_run_id, parent_tags)
        trainer_id = _log_child(client, experiment_id, parent_id, trainer)
        evaluator_id = _log_child(client, experiment_id, parent_id, evaluator)
        info = _log_model(config, trainer_id, saved_model_dir, input_example, registered_name)
        version = str(info.registered_model_version)
        tags = {**version_tags, "evaluator_run_id": evaluator_id, "trainer_run_id": trainer_id,
                "key_metric": key_metric, "blessed": str(blessed),
                **({"key_metric_value": str(key_metric_value)} if key_metric_value is not None else {})}
        for key, value in tags.items():
            client.set_model_version_tag(registered_name, version, key, value)
        champion = False
        if blessed:
            with champion_lock(config):
                current = _champion_now(client, registered_name)
                champion = still_beats is None or still_beats(current)
                if champion:
                    client.set_registered_model_alias(registered_name, CHAMPION, version)
            client.set_model_version_tag(registered_name, version, "champion_at_registration", str(champion))
        for run_id in (trainer_id, evaluator_id):
            client.set_terminated(run_id)
        if metric_network is not None:
            _register_metric_network(config, client, experiment_id, parent_id, *metric_network)
        return LoggedVersion(registered_name, version, champion, parent_id, trainer_id, evaluator_id)


def log_child_run(config: TrackingConfig, *, pipeline: str, pipeline_run_id: str, child: ChildRun,
                  parent_tags: Dict[str, str]) -> str:
    """Logs one component's child run under this pipeline run's parent run (made here if no registrar made it
    yet); returns its run id."""
    check_reachable(config)
    with _guarded(f"logging {child.name}", config):
        client = _client(config)
        experiment_id = _experiment_id(client, config)
        parent_id = _parent_run(client, experiment_id, pipeline, pipeline_run_id, parent_tags)
        run_id = _log_child(client, experiment_id, parent_id, child)
        client.set_terminated(run_id)
        return run_id


def log_search(config: TrackingConfig, *, pipeline: str, pipeline_run_id: str, search: ChildRun,
               trials: Sequence[ChildRun], parent_tags: Dict[str, str]) -> str:
    """A hyperparameter search: its run under this pipeline run's parent run, each trial a child of it (params,
    the metric after each epoch, how it ended; the best tagged). Returns the search's run id."""
    check_reachable(config)
    with _guarded(f"logging {search.name}", config):
        client = _client(config)
        experiment_id = _experiment_id(client, config)
        parent_id = _parent_run(client, experiment_id, pipeline, pipeline_run_id, parent_tags)
        search_id = _log_child(client, experiment_id, parent_id, search)
        for trial in trials:
            client.set_terminated(_log_child(client, experiment_id, search_id, trial))
        client.set_terminated(search_id)
        return search_id


def _register_metric_network(config, client, experiment_id, parent_id, child: ChildRun, saved_model_dir: str,
                             input_example, name: str) -> None:
    artifact = child.tags.get("tfx.artifact_uri", saved_model_dir)
    existing = client.search_model_versions(f"name = '{name}'")
    if any(v.tags.get("tfx.artifact_uri") == artifact for v in existing):
        return  # this network (the same TFX artifact, from the cache) is registered already
    run_id = _log_child(client, experiment_id, parent_id, child)
    info = _log_model(config, run_id, saved_model_dir, input_example, name)
    client.set_model_version_tag(name, str(info.registered_model_version), "tfx.artifact_uri", artifact)
    client.set_terminated(run_id)


def register_saved_model(config: TrackingConfig, name: str, saved_model_dir: str, input_example, *,
                         alias: Optional[str] = None, tags: Optional[Dict[str, str]] = None) -> str:
    """Logs an exported SavedModel (trainers/export.py) in a run of its own, registers it as a new version of NAME
    and, with `alias`, points the alias at it; returns the version. For models trained outside a pipeline run."""
    check_reachable(config)
    with _guarded(f"registering {name}", config):
        client = _client(config)
        run = client.create_run(_experiment_id(client, config), run_name=f"register {name}", tags=tags or {})
        version = str(_log_model(config, run.info.run_id, saved_model_dir, input_example, name)
                      .registered_model_version)
        client.set_terminated(run.info.run_id)
        if alias:
            client.set_registered_model_alias(name, alias, version)
        return version


def registry_version(config: TrackingConfig, name: str, alias: Optional[str] = None,
                     version: Optional[str] = None) -> str:
    """The version number NAME@ALIAS points at (or VERSION, checked to exist); TrackingError naming what is
    missing otherwise."""
    import mlflow  # pylint: disable=import-outside-toplevel
    check_reachable(config)
    with _guarded(f"reading {name}", config):
        client = _client(config)
        try:
            found = (client.get_model_version(name, str(version)) if version is not None
                     else client.get_model_version_by_alias(name, alias or CHAMPION))
        except mlflow.exceptions.MlflowException as error:
            if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise
            known = [m.name for m in client.search_registered_models(max_results=100)]
            what = f"version {version}" if version is not None else f"alias @{alias or CHAMPION}"
            raise RegistryLookupError(f"the MLflow registry at {config.uri} has no {what} of {name!r} (registered "
                                f"models: {', '.join(sorted(known)) or 'none'}); `latentforge run` registers "
                                "DATASET-FAMILY and sets @champion when the Evaluator blesses a model") from None
        return str(found.version)


def download_saved_model(config: TrackingConfig, name: str, version: str, destination: str) -> str:
    """Downloads version VERSION of registered model NAME (logged with the tensorflow flavor) into
    `destination`; returns the SavedModel directory inside it."""
    import mlflow  # pylint: disable=import-outside-toplevel
    from mlflow.models import Model  # pylint: disable=import-outside-toplevel
    check_reachable(config)
    with _guarded(f"downloading {name} version {version}", config), _fluent_api_at(config):
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=destination)
        flavor = Model.load(local).flavors.get("tensorflow")
    if flavor is None or "saved_model_dir" not in flavor:
        raise TrackingError(f"{name} version {version} was not logged with MLflow's tensorflow flavor; it has no "
                            "SavedModel to serve")
    return os.path.join(local, flavor["saved_model_dir"])


def all_model_versions(config: TrackingConfig) -> list:
    """Every version of every registered model (for retention: what they came from must stay)."""
    check_reachable(config)
    with _guarded("listing registered model versions", config):
        client = _client(config)
        versions, token = [], None
        while True:
            page = client.search_model_versions(max_results=1000, page_token=token)
            versions.extend(page)
            token = page.token
            if not token:
                return versions


def delete_pipeline_runs(config: TrackingConfig, pipeline_run_ids: Sequence[str]) -> int:
    """Deletes (MLflow's soft delete) the parent and child runs of these TFX pipeline runs in the experiment;
    returns how many. Runs a registered version names are left alone."""
    check_reachable(config)
    with _guarded("deleting old pipeline runs", config):
        client = _client(config)
        experiment = client.get_experiment_by_name(config.experiment)
        if experiment is None or not pipeline_run_ids:
            return 0
        needed = {v.tags.get(k) for v in all_model_versions(config) for k in ("trainer_run_id", "evaluator_run_id")}
        deleted = 0
        for run_id in pipeline_run_ids:
            for run in client.search_runs([experiment.experiment_id], f"tags.`tfx.pipeline_run_id` = '{run_id}'",
                                          max_results=1000):
                if run.info.run_id not in needed:
                    client.delete_run(run.info.run_id)
                    deleted += 1
        return deleted


def load_model(config: TrackingConfig, model_uri: str):
    """An MLflow pyfunc model, e.g. models:/mnist-autoencoder@champion."""
    import mlflow  # pylint: disable=import-outside-toplevel
    with _guarded(f"loading {model_uri}", config), _fluent_api_at(config):
        return mlflow.pyfunc.load_model(model_uri)
