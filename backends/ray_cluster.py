"""Connecting to Ray: the one module that joins a Ray cluster or starts a local one, for Ray Train
(components/trainer/ray_train.py), `latentforge submit` (pipelines/ray_jobs.py) and Ray Serve (serving/server.py).

- `connect(address)` joins `address` (or RAY_ADDRESS); without either, a local Ray head starts with the machine's
  cores, in its own process (backends/local_ray.py: on first use, so a run whose Trainer is cached starts none). Inside a Ray job (`latentforge submit`) the job's cluster is used.
- A remote cluster gets this project as the job's working_dir (PROJECT_EXCLUDES keep environments, runs and data
  out) and WORKER_ENV in every worker's environment.
"""
import atexit
import logging
import os
from typing import Optional

from backends import VERBOSE_ENV, verbose

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a worker needs in its environment: tf_keras behind tf.keras (Keras 3 fails under
# MultiWorkerMirroredStrategy with 2+ workers, keras-team/keras#20585) and quiet TF C++ logs.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
# Shipped to a remote cluster as the job's working_dir: the code, not environments, runs or data.
PROJECT_EXCLUDES = [".venv", ".git", "runs", "mlruns", "**/__pycache__", ".pytest_cache", "*.egg-info"]
_log = logging.getLogger("latentforge.ray")
_local_head = None  # the local_ray.LocalRay this process started, if any


class RayClusterError(RuntimeError):
    """The Ray cluster cannot be reached, or cannot ever give the workers what they ask for."""


def worker_output() -> bool:
    """Whether the Ray workers' stdout and stderr reach this driver (Ray's log_to_driver). Not by default: TF's C++
    start-up lines, library warnings and Ray Train's per-report lines from every worker drowned the run's own
    output. Training progress comes through components.trainer.ray_train's progress queue instead, a worker's
    exception through Ray's error, and everything stays in Ray's log files (/tmp/ray/session_latest/logs)."""
    return verbose()


def _driver_log_level() -> int:
    """ray.init sets the "ray" logger's level itself ("Connecting to existing Ray cluster..." at INFO)."""
    return logging.INFO if verbose() else logging.WARNING


def worker_env() -> dict:
    """WORKER_ENV, quieter unless verbose (TF's C++ errors about CUDA plugins on CPU-only machines:
    TF_CPP_MIN_LOG_LEVEL 3; google-api-core's FutureWarning in every process), plus the object-storage endpoint
    this process uses (backends/storage.worker_env): Train workers, a job's driver and Serve replicas on other
    nodes reach the same store."""
    from backends import storage  # pylint: disable=import-outside-toplevel
    if verbose():
        return {**WORKER_ENV, VERBOSE_ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "0", **storage.worker_env()}
    return {**WORKER_ENV, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore::FutureWarning",
            **storage.worker_env()}


def cluster_address(address: Optional[str] = None) -> Optional[str]:
    """The cluster to join: `address`, else RAY_ADDRESS; None means a local Ray."""
    return address or os.environ.get("RAY_ADDRESS")


def _in_ray_job() -> bool:
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def connect(address: Optional[str] = None, dashboard: bool = False) -> None:
    """Joins the cluster (`address`, else RAY_ADDRESS) or starts a local Ray in this process; no-op when this
    process is already connected. `dashboard`: a local Ray gets Ray's dashboard (its State API), which a
    hyperparameter search's stopped trials need to release their workers' resources."""
    import ray  # pylint: disable=import-outside-toplevel
    if ray.is_initialized():
        return
    address = cluster_address(address)
    if address:
        # A driver inside a Ray job runs the job's working_dir already; from elsewhere, ship this project.
        runtime_env = None if _in_ray_job() else {"working_dir": PROJECT_ROOT, "excludes": PROJECT_EXCLUDES,
                                                  "env_vars": worker_env()}
        _log.info("joining the Ray cluster at %s", address)
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=worker_output(),
                     logging_level=_driver_log_level())
        except (ConnectionError, TimeoutError, ValueError) as e:
            raise RayClusterError(f"cannot join the Ray cluster at {address}: {e}. Is it running (`ray status "
                                  f"--address {address}`)? Drop --ray-address (and RAY_ADDRESS) to train on a "
                                  "local Ray.") from e
    else:
        global _local_head  # pylint: disable=global-statement
        from backends import local_ray  # pylint: disable=import-outside-toplevel
        python_path = os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p)
        _log.info("starting a local Ray with %d CPUs", os.cpu_count())
        if _local_head is None or _local_head.process.poll() is not None or (dashboard and not _local_head.dashboard):
            if _local_head is not None:
                _local_head.stop()
            _local_head = local_ray.LocalRay(num_cpus=os.cpu_count(), object_store_bytes=256 * 1024 ** 2,
                                             dashboard=dashboard)
        # RAY_ADDRESS in its workers: Ray's State API client (which Ray Train's placement-group cleaner uses)
        # otherwise picks "the latest" of the Rays on this machine, and with several (parallel test processes,
        # two users) it asked another cluster, failed, and left a stopped trial's CPUs reserved.
        ray.init(address=_local_head.address, log_to_driver=worker_output(), logging_level=_driver_log_level(),
                 runtime_env={"env_vars": {"PYTHONPATH": python_path, "RAY_ADDRESS": _local_head.address,
                                           **worker_env()},
                              "worker_process_setup_hook": "backends.ray_cluster.quiet_local_cluster_logs"})
        # Leave before the head goes (atexit runs this before LocalRay's own stop): a driver still connected
        # when its raylet dies logs object-recovery errors on the way out.
        atexit.unregister(shutdown)  # once, and after the newest head's own stop (atexit runs in reverse)
        atexit.register(shutdown)


def local_resources() -> dict:
    """What a local Ray would have, known without starting it: the machine's cores and the GPUs TensorFlow sees
    (the ones Ray's workers would train on)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return {"CPU": float(os.cpu_count()), "GPU": float(len(tf.config.list_physical_devices("GPU")))}


def shutdown() -> None:
    """Leaves the cluster and stops the local Ray this process started (if any)."""
    global _local_head  # pylint: disable=global-statement
    import ray  # pylint: disable=import-outside-toplevel
    ray.shutdown()
    if _local_head is not None:
        _local_head.stop()
        _local_head = None


def stop_local_head() -> None:
    """Stops (or kills) the local Ray this process started, without leaving it first: for a driver whose calls
    into Ray are stuck."""
    if _local_head is not None:
        _local_head.stop()


def local_ray_running() -> bool:
    """Whether this process started a local Ray that is still up."""
    return _local_head is not None and _local_head.process.poll() is None


def quiet_local_cluster_logs() -> None:
    """Runs in each process of the local Ray. Without a dashboard there is no state API, so Ray Train's placement
    group cleaner (which frees a crashed driver's resources on a shared cluster; a local Ray ends with its
    driver) warns every second that it cannot query it."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
