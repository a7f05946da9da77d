"""`latentforge submit`: a pipeline run as a Ray Job, through Ray's Job Submission API (JobSubmissionClient).

The job's runtime_env carries this project as its working_dir (the code the user has, not what the cluster
had), and the workers' environment. Its entrypoint is the same CLI: `python -m pipelines.cli run ...`, which
inside the job trains on the job's cluster. The job's logs are followed until it ends; its status becomes the
exit code (the driver's own exit code when Ray knows it).
"""
import shlex
import sys
import time
from typing import Callable, List, Optional, TextIO

from backends import storage
from backends.ray_cluster import PROJECT_EXCLUDES, PROJECT_ROOT, WORKER_ENV

POLL_SECONDS = 1.0
AGENT_WAIT_SECONDS = 60.0  # how long a just-started head may take to accept jobs


class JobSubmissionError(RuntimeError):
    """The Ray Jobs API could not be reached or refused the job."""


def _client(address: str):
    from ray.job_submission import JobSubmissionClient  # pylint: disable=import-outside-toplevel
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise JobSubmissionError(f"cannot reach the Ray Jobs API at {address}: {e}. It is the head's dashboard "
                                 "address, e.g. http://HEAD:8265 (`ray start --head` prints it).") from e


def submit(address: str, cli_args: List[str], python: str = "python", submission_id: Optional[str] = None) -> str:
    """Submits `latentforge <cli_args>` as a Ray job; returns its id."""
    client = _client(address)
    entrypoint = shlex.join([python, "-m", "pipelines.cli", *cli_args])
    runtime_env = {"working_dir": PROJECT_ROOT, "excludes": PROJECT_EXCLUDES,
                   "env_vars": {**WORKER_ENV, **storage.worker_env()}}
    deadline = time.time() + AGENT_WAIT_SECONDS
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id)
        except RuntimeError as e:
            # A head that has just started answers before its job agent is up: "No available agent to submit
            # job, please try again later". Only that is retried.
            if "try again later" not in str(e) or time.time() > deadline:
                raise JobSubmissionError(f"the Ray cluster at {address} refused the job: {e}") from e
            print(f"latentforge: {address} has no job agent yet; retrying", file=sys.stderr, flush=True)
            time.sleep(2)


def follow(address: str, job_id: str, out: Optional[TextIO] = None,
           sleep: Callable[[float], None] = time.sleep) -> int:
    """Prints the job's logs (to `out`, default stdout) as they grow until it ends; returns its exit code (0 when
    it succeeded)."""
    from ray.job_submission import JobStatus  # pylint: disable=import-outside-toplevel
    out = out or sys.stdout
    client = _client(address)
    printed = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            out.write(logs[printed:])
            out.flush()
            printed = len(logs)
        if status.is_terminal():
            break
        sleep(POLL_SECONDS)
    return exit_code(client.get_job_info(job_id), JobStatus)


def exit_code(info, job_status) -> int:
    if info.status == job_status.SUCCEEDED:
        return 0
    driver_code = getattr(info, "driver_exit_code", None)
    if info.status == job_status.STOPPED:
        return 130
    return driver_code if driver_code else 1


def status(address: str, job_id: str) -> str:
    return _client(address).get_job_status(job_id).value
