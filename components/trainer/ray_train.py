"""Ray Train: a TrainingJob on Ray workers with MultiWorkerMirroredStrategy. The one module that uses Ray Train.

    outcome = ray_train.train(job, RaySettings(workers=2), storage_path="runs/latentforge/ray", name="...")
    outcome.checkpoint_dir  -> the final saved state (trainers.job.restore rebuilds the model from it)

- Cluster: `RaySettings.address` (or RAY_ADDRESS) joins a running cluster; without either, a local Ray starts in
  this process with the machine's cores (backends/ray_cluster.py connects, for Train, submit and Serve alike).
  Inside a Ray job (`latentforge submit`) the job's cluster is used.
- Workers: `ray.train.tensorflow.TensorflowTrainer` starts `workers` actors and sets TF_CONFIG; each builds the
  model under MultiWorkerMirroredStrategy (a single worker: as in process, see _strategy) and reads the
  TFRecords itself. tf.data auto-shards them by DATA: each
  worker keeps its 1/N of every global batch, so the per-replica batch is global_batch / N and every worker
  runs the same number of steps (file-level sharding would give workers unequal steps when the files differ
  in size, and a collective all-reduce then waits forever).
- Checkpoints: after every epoch all workers save (a collective operation) and report; the chief's directory
  is the checkpoint Ray keeps, every worker adds a `worker-RANK.json` (pid, host, replicas in sync).
  FailureConfig(max_failures) restarts the worker group from the latest checkpoint when a worker dies; the
  same `name` and `storage_path` also resume a run whose driver died.
- Resources are checked before anything starts: asking for GPUs (or more CPUs) than the cluster has is an
  error that says what the cluster has, instead of a run waiting for resources forever.
"""
import contextlib
import dataclasses
import glob
import json
import logging
import os
import posixpath
import shutil
import socket
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from backends import ray_cluster, storage

if TYPE_CHECKING:
    from trainers.job import TrainingJob

# No TensorFlow at import: Ray's controller unpickles this module's train loop (and the job, passed as a dict)
# without training anything, and importing TF there would cost seconds and half a GiB for nothing.

COMPLETE_MARKER = "latentforge-complete.json"
_log = logging.getLogger("latentforge.ray")


@dataclasses.dataclass(frozen=True)
class RaySettings:
    address: Optional[str] = None  # None: RAY_ADDRESS, else a local Ray in this process
    workers: int = 1
    cpus_per_worker: Optional[float] = None  # None: a local Ray's cores shared among the workers; 1 on a cluster
    gpus_per_worker: float = 0.0
    max_failures: int = 1  # worker-group restarts from the latest checkpoint before the run fails
    checkpoints_to_keep: int = 2

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}: must be at least 1")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker}: must be >= 0")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker={self.cpus_per_worker}: must be positive")
        if self.max_failures < -1:
            raise ValueError(f"max_failures={self.max_failures}: must be >= 0 (or -1: retry forever)")
        if self.checkpoints_to_keep < 1:
            raise ValueError(f"checkpoints_to_keep={self.checkpoints_to_keep}: must be at least 1")


@dataclasses.dataclass(frozen=True)
class TrainingOutcome:
    checkpoint_dir: str  # the final saved state (trainers.job.save_state's layout)
    history: Dict[str, List[float]]  # every epoch's metrics, across restarts
    workers: List[Dict[str, Any]]  # per worker: rank, pid, host, replicas, resumed_from_epoch
    run_path: str  # Ray's directory of this run (checkpoints, its state)
    epoch_started_at: List[float]  # wall-clock time each epoch began on the chief (time.time())
    finished_at: float  # when the run's result reached this driver
    kept_epoch: Optional[int] = None  # the best epoch by the sample-quality proxy, whose checkpoint checkpoint_dir is
    @property
    def downloaded(self) -> bool:
        """Whether checkpoint_dir is a local copy: the run's checkpoints are on object storage."""
        return storage.is_uri(self.run_path)

    def remove_download(self) -> None:
        """Deletes checkpoint_dir when it is a download (once the model is restored); a local run's stays."""
        if self.downloaded:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)


def _describe(resources: Dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory") or k.startswith("accelerator")}
    return ", ".join(f"{k} {v / 1024 ** 3:.1f} GiB" if k == "memory" else f"{k} {v:g}"
                     for k, v in sorted(shown.items()))


def worker_resources(settings: RaySettings, available: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Resources each worker asks for, checked against what the cluster has in total (`available`; default: the
    connected cluster's)."""
    if available is None:
        import ray  # pylint: disable=import-outside-toplevel
        available = ray.cluster_resources()
    where = ray_cluster.cluster_address(settings.address) or "local Ray"
    cpus = settings.cpus_per_worker
    if cpus is None:
        cpus = max(1.0, float(available.get("CPU", 1)) // settings.workers) if not ray_cluster.cluster_address(
            settings.address) else 1.0
    need = {"CPU": cpus * settings.workers, "GPU": settings.gpus_per_worker * settings.workers}
    if need["GPU"] > available.get("GPU", 0):
        raise ray_cluster.RayClusterError(
            f"{settings.workers} worker(s) x {settings.gpus_per_worker:g} GPU need {need['GPU']:g} GPUs, but the "
            f"Ray cluster ({where}) has {available.get('GPU', 0):g}: it has {_describe(available)}. Train on CPU "
            "(drop --gpus-per-worker) or join a cluster with GPUs (--ray-address).")
    if need["CPU"] > available.get("CPU", 0):
        raise ray_cluster.RayClusterError(
            f"{settings.workers} worker(s) x {cpus:g} CPU need {need['CPU']:g} CPUs, but the Ray cluster ({where}) "
            f"has {available.get('CPU', 0):g}: it has {_describe(available)}. Use fewer --workers or "
            "--cpus-per-worker.")
    return {"CPU": cpus, **({"GPU": settings.gpus_per_worker} if settings.gpus_per_worker else {})}


def run_name(storage_path: str, base: str) -> str:
    """`base` while a run of that name is unfinished (so a rerun resumes from its checkpoint), else the next free
    `base-N`: a finished run is never resumed into, nor overwritten. `storage_path`: a directory or a URI."""
    import pyarrow.fs  # pylint: disable=import-outside-toplevel
    filesystem, root = storage.pyarrow_filesystem(storage_path)
    name, attempt = base, 1
    while filesystem.get_file_info(posixpath.join(root, name, COMPLETE_MARKER)).type != pyarrow.fs.FileType.NotFound:
        attempt += 1
        name = f"{base}-{attempt}"
    return name


def kept_checkpoint(storage_path: str, name: str) -> Optional[str]:
    """The checkpoint the run `name` keeps (a directory, or a URI: trainers.job.restore reads either): a
    finished run's, as its completion marker names it, else, for a run that was stopped (a search's trials end
    when Tune has their last report, before train() returns), the best of its checkpoints by the
    sample-quality proxy where the history has one, else its latest. None when it has no checkpoint."""
    storage_path = storage.absolute(storage_path)
    filesystem, root = storage.pyarrow_filesystem(storage_path)
    run = posixpath.join(root, name)
    try:
        with filesystem.open_input_stream(posixpath.join(run, COMPLETE_MARKER)) as f:
            return json.loads(f.read())["checkpoint"]
    except (FileNotFoundError, OSError):
        pass
    candidates = []
    for path in _checkpoint_dirs(filesystem, run):
        try:
            with filesystem.open_input_stream(posixpath.join(path, "state.json")) as f:
                state = json.loads(f.read())
        except (FileNotFoundError, OSError, ValueError):  # one Ray had not finished copying
            continue
        epoch, proxy = int(state["epoch"]), state.get("history", {}).get(_PROXY_METRIC, [])
        candidates.append((proxy[epoch - 1] if len(proxy) >= epoch else None, epoch, path))
    if not candidates:
        return None
    return _as_uri(storage_path, name, run, _best(candidates))


def _best(candidates):
    """The rule for the kept checkpoint, whether Ray ranked the checkpoints or their state.json does:
    (score, epoch, checkpoint) triples -> the checkpoint with the lowest score, the latest among equals;
    unscored ones only when none is scored."""
    return min(candidates, key=lambda c: (c[0] is None, c[0] if c[0] is not None else 0.0, -c[1]))[2]


def _as_uri(storage_path: str, name: str, run_path: str, checkpoint_path: str) -> str:
    """A checkpoint under the run `name` as trainers.job.restore reads it: its URI on object storage (the
    filesystem's path has no scheme), the path itself on a local disk."""
    if not storage.is_uri(storage_path):
        return checkpoint_path
    return storage.join(storage_path, name, posixpath.relpath(checkpoint_path, run_path))


REPORT_POLL_S = 0.25  # seconds between the Ray Train controller's polls of its workers (see train)
_PROXY_METRIC = "proxy_kid_x1e3"  # trainers.best_epoch.PROXY_METRIC (not imported: it would import TensorFlow)


def train(job: "TrainingJob", settings: RaySettings, storage_path: str, name: str, callbacks: Sequence = (),
          progress_to_terminal: bool = True) -> TrainingOutcome:
    """Trains `job` on Ray workers to the end of its budget (resuming the run `name` if it has a checkpoint).
    `callbacks`: Ray Train callbacks (a search's TuneReportCallback); progress_to_terminal=False leaves the
    epochs' progress in the workers' logs (a search's trials: the search reports instead)."""
    import ray.train  # pylint: disable=import-outside-toplevel
    from ray.train.tensorflow import TensorflowTrainer  # pylint: disable=import-outside-toplevel
    from ray.train.v2.api.exceptions import WorkerGroupError  # pylint: disable=import-outside-toplevel

    ray_cluster.connect(settings.address)
    # Ray Train's controller collects each worker's report by polling every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s
    # by default) and a worker's report queue holds one: ray.train.report blocks until the next poll, so every
    # epoch took at least 2 s (make run's epochs: 0.3 s of training, reported 2.0 s apart). The driver's value
    # reaches the controller (Ray's ENV_VARS_TO_PROPAGATE); a user's own setting wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(REPORT_POLL_S))
    resources = worker_resources(settings)
    storage_path = storage.absolute(storage_path)
    # A URI goes to Ray as its pyarrow filesystem and the path on it: Ray uploads every checkpoint there, and a
    # restarted worker on any node downloads it from there (no shared disk).
    filesystem, ray_path = storage.pyarrow_filesystem(storage_path)
    _log.info("Ray Train: %d worker(s) with %s each; checkpoints in %s", settings.workers, resources,
              storage.join(storage_path, name))
    progress = _DriverProgress() if progress_to_terminal else contextlib.nullcontext()
    # A generative model with a feature network keeps its best epochs by the sample-quality proxy every worker
    # reports (trainers/best_epoch.py); Ray always keeps the latest too, which a restart resumes from.
    best_by = _PROXY_METRIC if job.feature_network and job.family.generative else None
    checkpoint_config = ray.train.CheckpointConfig(
        num_to_keep=settings.checkpoints_to_keep,
        **({"checkpoint_score_attribute": best_by, "checkpoint_score_order": "min"} if best_by else {}))
    trainer = TensorflowTrainer(
        train_loop_per_worker=_train_loop,
        train_loop_config={"job": dataclasses.asdict(job), "threads": max(1, int(resources["CPU"])),
                           "progress": progress.queue if progress_to_terminal else None},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=ray_path if storage.is_uri(storage_path) else storage_path,
            storage_filesystem=filesystem if storage.is_uri(storage_path) else None,
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=checkpoint_config, callbacks=list(callbacks),
            worker_runtime_env={"env_vars": ray_cluster.worker_env()}))
    try:
        with progress:
            result = trainer.fit()
    except WorkerGroupError as e:
        raise _worker_error(e) from e
    if result.checkpoint is None:
        raise RuntimeError(f"the Ray run {name} finished without a checkpoint: no epoch was trained")
    finished_at = time.time()
    kept_epoch, checkpoint = None, result.checkpoint
    scored = [(metrics[best_by], metrics["epoch"], (metrics["epoch"], kept))
              for kept, metrics in (result.best_checkpoints or []) if best_by and best_by in metrics]
    if scored:
        kept_epoch, checkpoint = _best(scored)
    # On object storage the kept checkpoint is downloaded once, here (Ray's Checkpoint.to_directory), for the
    # model to be restored from; a local one is read where it is.
    checkpoint_dir = (checkpoint.to_directory(tempfile.mkdtemp(prefix="latentforge-kept-"))
                      if storage.is_uri(storage_path) else checkpoint.path)
    # The whole history is the latest checkpoint's (trainers.job.STATE_FILE), not the kept one's, which ends at
    # the kept epoch.
    with result.checkpoint.filesystem.open_input_stream(posixpath.join(result.checkpoint.path, "state.json")) as f:
        state = json.loads(f.read())
    workers = []
    for path in sorted(glob.glob(os.path.join(checkpoint_dir, "worker-*.json"))):
        with open(path) as f:
            workers.append(json.load(f))
    with filesystem.open_output_stream(posixpath.join(ray_path, name, COMPLETE_MARKER)) as f:
        # (a local checkpoint's path is checkpoint_dir itself)
        f.write(json.dumps({"checkpoint": _as_uri(storage_path, name, posixpath.join(ray_path, name), checkpoint.path),
                            "workers": workers}).encode())
    return TrainingOutcome(checkpoint_dir, state["history"], workers, storage.join(storage_path, name),
                           state.get("epoch_started_at", []), finished_at, kept_epoch)


class _QueueSink:
    """trainers.progress events from the chief to the driver through a Ray queue (workers' own output does not
    reach the driver by default: backends/ray_cluster.worker_output). Never blocks training: a full queue (a
    driver that stopped reading) drops the event."""

    def __init__(self, queue):
        self.queue = queue

    def _send(self, *event) -> None:
        from ray.exceptions import RayError  # pylint: disable=import-outside-toplevel
        from ray.util.queue import Full  # pylint: disable=import-outside-toplevel
        try:
            self.queue.put_nowait(event)
        except (Full, RayError):  # a full queue, or one whose node is gone: progress never stops training
            pass

    def begin(self, *args) -> None:
        self._send("begin", *args)

    def update(self, *args) -> None:
        self._send("update", *args)

    def end(self, *args) -> None:
        self._send("end", *args)

    def note(self, text: str) -> None:
        self._send("note", text)


class _DriverProgress:
    """The driver's side: a Ray queue (an actor asking no CPU, so it never waits for the workers' cores) and a
    thread that replays its events into this terminal's trainers.progress.TerminalProgress while fit() runs."""

    def __init__(self):
        import ray  # pylint: disable=import-outside-toplevel
        from ray.util.queue import Queue  # pylint: disable=import-outside-toplevel
        from ray.util import scheduling_strategies  # pylint: disable=import-outside-toplevel
        # On the driver's node, as Ray Train pins its controller: a queue on another node would die with it, and
        # the restarted workers' first progress event would fail the run (found losing a node of two).
        here = scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(),
                                                                    soft=False)
        self.queue = Queue(maxsize=1000, actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._replay, name="latentforge-progress", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(timeout=30)
        self.queue.shutdown()

    def _replay(self) -> None:
        from ray.util.queue import Empty  # pylint: disable=import-outside-toplevel
        from trainers.progress import TerminalProgress  # pylint: disable=import-outside-toplevel
        terminal = TerminalProgress()
        while True:
            try:
                kind, *args = self.queue.get(timeout=0.5)
            except Empty:
                if self._stop.is_set():
                    return
                continue
            except Exception:  # pylint: disable=broad-except
                return  # the queue's actor is gone: the run is ending
            getattr(terminal, kind)(*args)


def _worker_error(error) -> BaseException:
    """The lowest-ranked failed worker's own exception (a TrainingDiverged, a bad config...) rather than Ray's
    wrapper, so the CLI can name the problem and pick its exit code."""
    failures = [failure for _, failure in sorted(error.worker_failures.items())]
    if not failures:
        return error
    cause = getattr(failures[0], "cause", None)  # a RayTaskError wraps the worker's exception as `cause`
    return cause if isinstance(cause, BaseException) else failures[0]


def _train_loop(loop_config: Dict[str, Any]) -> None:
    """Runs on every Ray Train worker (TensorflowTrainer has set TF_CONFIG)."""
    os.environ.update(ray_cluster.worker_env())
    job_config = loop_config["job"]
    for path in [*job_config["train_files"], *job_config["eval_files"], job_config.get("tensorboard_dir") or "",
                 job_config.get("feature_network") or ""]:
        storage.enable_tensorflow(path)  # the run's files on object storage: TensorFlow reads them through gfile
    import ray.train  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    from trainers import job as training, progress  # pylint: disable=import-outside-toplevel
    from trainers.common import resolve_precision  # pylint: disable=import-outside-toplevel

    # TF's INFO logs (collective all-reduce set-up, checkpoint sharding) would bury the epochs' progress.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    absl_logging.set_verbosity(absl_logging.WARNING)
    job = training.TrainingJob(**loop_config["job"])
    context = ray.train.get_context()
    rank, size = context.get_world_rank(), context.get_world_size()
    # As many TF threads as CPUs Ray gave this worker: two workers on two cores would each start two pools.
    tf.config.threading.set_intra_op_parallelism_threads(loop_config["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(loop_config["threads"])
    strategy = _strategy(tf, size)
    identity = {"rank": rank, "workers": size, "pid": os.getpid(), "host": socket.gethostname(),
                "node": ray.get_runtime_context().get_node_id(),
                "replicas": strategy.num_replicas_in_sync, "resumed_from_epoch": 0}
    config = job.make_config()
    # "auto" resolved where the model computes: a GPU worker may differ from the driver that submitted the run.
    identity["precision"] = resolve_precision(config.precision)
    # The chief's progress and notes reach the driver's terminal (trainers/progress.py); the others' stay silent.
    # (`is not None`: a ray.util.queue.Queue has a length, so an empty one is falsy.)
    queue = loop_config.get("progress")
    sink = _QueueSink(queue) if rank == 0 and queue is not None else progress.SILENT

    def note(text: str) -> None:
        print(text, flush=True)  # Ray's worker log (and the driver's output with -v)
        sink.note(text)

    # Who trains where: in Ray's worker log (and the driver's output with -v); metrics.json keeps it too.
    print(f"latentforge worker {rank + 1}/{size}: pid {identity['pid']} on {identity['host']}, "
          f"{identity['replicas']} replicas in sync, {config.batch_size // identity['replicas']} images per replica "
          "per step", flush=True)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_data, eval_data = training.datasets(job, config, options)
    # Loaded outside the strategy's scope: inside it, the feature network's variables would become mirrored ones
    # and its graph, called from a callback in cross-replica context, fails ("Trying to access a placeholder that is
    # not supposed to be executed").
    proxy = training.sample_quality_proxy(job, config)
    with strategy.scope():
        model = training.build_model(job, config)
        initial_epoch, history, started_at = 0, {}, []
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            directory, skipped = _readable_checkpoint(checkpoint, tf, training, rank, size)
            identity["unreadable_checkpoints"] = skipped
            if directory is not None:
                training.load_weights(model, directory)
                state = training.read_state(directory)
                initial_epoch, history = state["epoch"], state["history"]
                started_at = state.get("epoch_started_at", [])[:initial_epoch]
                identity["resumed_from_epoch"] = initial_epoch
                # What the restored averages are, before any step moves them (the test of "EMA intact").
                identity["resumed_weight_average_digest"] = training.weight_average_digest(model)
                note(f"latentforge worker {rank + 1}/{size}: resumed from the checkpoint of epoch {initial_epoch}")
        # The sample-quality proxy first: it adds its score to the logs the report and the progress read.
        callbacks = ([proxy] if proxy else []) + [_report_each_epoch(job, identity, history, started_at),
                                                  progress.EpochProgress(config.batch_size, sink)]
        # Single-worker runs only: with 2+ workers under MultiWorkerMirroredStrategy, the chief alone calling
        # these callbacks hung the run (a collective the other worker never joined); the executor then writes the
        # per-epoch scalars from the history after training (components/trainer/tensorboard.write_history).
        if rank == 0 and size == 1 and job.tensorboard_dir:
            from components.trainer import tensorboard  # pylint: disable=import-outside-toplevel
            callbacks += tensorboard.callbacks(job.family, job.tensorboard_dir, eval_data, training.pixel_range(job),
                                               config.seed)
        try:
            training.train(job, model, config, train_data, eval_data, callbacks, initial_epoch)
        finally:
            if checkpoint is not None and directory is not None and checkpoint.filesystem.type_name != "local":
                shutil.rmtree(directory, ignore_errors=True)  # the resumed checkpoint's download (object storage)


def _checkpoint_dirs(filesystem, run: str) -> List[str]:
    """The checkpoint_* directories of a run folder on a pyarrow filesystem (local or object storage)."""
    import pyarrow.fs  # pylint: disable=import-outside-toplevel
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(run, allow_not_found=True))
    return [info.path.rstrip("/") for info in entries
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_")]


def _checkpoints_newest_first(checkpoint) -> List[str]:
    """Ray's latest checkpoint, then the ones it kept before it in the same run folder, newest first (their names
    are timestamps), as paths on the checkpoint's own filesystem (local or object storage)."""
    latest = checkpoint.path.rstrip("/")
    parent, name = posixpath.split(latest)
    if not name.startswith("checkpoint_"):
        return [latest]
    older = sorted((path for path in _checkpoint_dirs(checkpoint.filesystem, parent) if path != latest), reverse=True)
    return [latest, *older]


def _readable_checkpoint(checkpoint, tf, training, rank: int, size: int):
    """(the local directory of the newest checkpoint whose state and every saved tensor read back, the names of
    the unreadable ones skipped on the way). Ray hands a restarted or resumed run its latest checkpoint; when that
    one is damaged (a truncated file after a crash or a full disk), the ones Ray kept before it are tried, newest
    first, on whatever storage holds them. (None, ...) when none is readable: training starts over.

    A local checkpoint is read in place; one on object storage is downloaded to a directory that lives until the
    worker has trained (_train_loop removes it): the restore is deferred (the optimizer's slots load when it is
    built, at the first step), so Checkpoint.as_directory's copy, deleted when its block ends, would be gone by
    then. The download of a checkpoint found unreadable is removed at once."""
    import ray.train  # pylint: disable=import-outside-toplevel
    local = checkpoint.filesystem.type_name == "local"
    skipped = []
    for path in _checkpoints_newest_first(checkpoint):
        name = path if local else f"{checkpoint.filesystem.type_name}://{path}"
        directory = path if local else tempfile.mkdtemp(prefix="latentforge-resume-")
        try:
            if not local:
                ray.train.Checkpoint(path, filesystem=checkpoint.filesystem).to_directory(directory)
            training.read_state(directory)
            reader = tf.train.load_checkpoint(os.path.join(directory, training.WEIGHTS))
            for tensor in reader.get_variable_to_shape_map():
                reader.get_tensor(tensor)
            if skipped:
                print(f"latentforge worker {rank + 1}/{size}: falling back to {name}", flush=True)
            return directory, skipped
        except Exception as error:  # pylint: disable=broad-except
            print(f"latentforge worker {rank + 1}/{size}: checkpoint {name} is unreadable "
                  f"({type(error).__name__}: {str(error).splitlines()[0][:200]})", flush=True)
            skipped.append(name)
            if not local:
                shutil.rmtree(directory, ignore_errors=True)
    print(f"latentforge worker {rank + 1}/{size}: no readable checkpoint; training from epoch 0", flush=True)
    return None, skipped


def _strategy(tf, workers: int):
    """MultiWorkerMirroredStrategy across workers. A single worker trains as in process (MirroredStrategy over its
    GPUs when it has several): one worker gains nothing from collective ops, and they cost ~10 % of a small
    model's steps (and XLA, which cannot read variables mirrored for collectives)."""
    if workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _report_each_epoch(job: "TrainingJob", identity: Dict[str, Any], history: Dict[str, List[float]],
                       started_at: List[float]):
    """A Keras callback: after each epoch every worker saves the model (a collective operation) and calls
    ray.train.report with the epoch's metrics and its checkpoint directory; Ray keeps the chief's weights and
    every worker's identity file. The state also keeps when each epoch began (throughput, start-up time)."""
    import ray.train  # pylint: disable=import-outside-toplevel
    import tf_keras as keras  # pylint: disable=import-outside-toplevel
    from trainers import job as training  # pylint: disable=import-outside-toplevel

    class ReportEachEpoch(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history = {k: list(v) for k, v in history.items()}
            self.started_at = list(started_at)

        def on_epoch_begin(self, epoch, logs=None):
            self.started_at = self.started_at[:epoch] + [time.time()]

        def on_epoch_end(self, epoch, logs=None):
            metrics = {k: float(v) for k, v in (logs or {}).items() if not k.startswith("step_")}
            for key, value in metrics.items():
                self.history.setdefault(key, []).append(value)
            # Ray uploads the directory in the background and deletes it after (ASYNC): the next epoch starts
            # as soon as the weights are written. The upload still ends before fit() returns.
            directory = tempfile.mkdtemp(prefix="latentforge-checkpoint-")
            training.save_state(self.model, directory, job, epoch + 1, self.history,
                                epoch_started_at=self.started_at)
            if identity["rank"] != 0:  # only the chief's weights are the checkpoint
                for name in os.listdir(directory):
                    os.remove(os.path.join(directory, name))
            with open(os.path.join(directory, f"worker-{identity['rank']}.json"), "w") as f:
                json.dump(identity, f)
            ray.train.report({"epoch": epoch + 1, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)

    return ReportEachEpoch()
