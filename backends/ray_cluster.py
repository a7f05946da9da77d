"""Connecting to Ray: the one module that joins a Ray cluster or starts a local one, for Ray Train
(components/trainer/ray_train.py), `latentforge submit` (pipelines/ray_jobs.py) and Ray Serve (serving/server.py).

- `connect(address)` joins `address` (or RAY_ADDRESS); without either, a local Ray starts in this process with
  the machine's cores. Inside a Ray job (`latentforge submit`) the job's cluster is used.
- A remote cluster gets this project as the job's working_dir (PROJECT_EXCLUDES keep environments, runs and data
  out) and WORKER_ENV in every worker's environment.
"""
import logging
import os
from typing import Optional

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a worker needs in its environment: tf_keras behind tf.keras (Keras 3 fails under
# MultiWorkerMirroredStrategy with 2+ workers, keras-team/keras#20585) and quiet TF C++ logs.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
# Shipped to a remote cluster as the job's working_dir: the code, not environments, runs or data.
PROJECT_EXCLUDES = [".venv", ".git", "runs", "mlruns", "**/__pycache__", ".pytest_cache", "*.egg-info"]
_log = logging.getLogger("latentforge.ray")


class RayClusterError(RuntimeError):
    """The Ray cluster cannot be reached, or cannot ever give the workers what they ask for."""


def _in_ray_job() -> bool:
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def connect(address: Optional[str] = None) -> None:
    """Joins the cluster (`address`, else RAY_ADDRESS) or starts a local Ray in this process; no-op when this
    process is already connected."""
    import ray  # pylint: disable=import-outside-toplevel
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # A driver inside a Ray job runs the job's working_dir already; from elsewhere, ship this project.
        runtime_env = None if _in_ray_job() else {"working_dir": PROJECT_ROOT, "excludes": PROJECT_EXCLUDES,
                                                  "env_vars": dict(WORKER_ENV)}
        _log.info("joining the Ray cluster at %s", address)
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except (ConnectionError, TimeoutError, ValueError) as e:
            raise RayClusterError(f"cannot join the Ray cluster at {address}: {e}. Is it running (`ray status "
                                  f"--address {address}`)? Drop --ray-address (and RAY_ADDRESS) to train on a "
                                  "local Ray.") from e
    else:
        python_path = os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH")) if p)
        _log.info("starting a local Ray with %d CPUs", os.cpu_count())
        # No dashboard: it doubles the start-up (16 s vs 8 s on 2 cores). Ray's default object store is 30%
        # of memory; training passes files, not objects.
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True,
                 object_store_memory=256 * 1024 ** 2,
                 runtime_env={"env_vars": {"PYTHONPATH": python_path, **WORKER_ENV},
                              "worker_process_setup_hook": "backends.ray_cluster.quiet_local_cluster_logs"})


def quiet_local_cluster_logs() -> None:
    """Runs in each process of the local Ray. Without a dashboard there is no state API, so Ray Train's placement
    group cleaner (which frees a crashed driver's resources on a shared cluster; a local Ray ends with its
    driver) warns every second that it cannot query it."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
