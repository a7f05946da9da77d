"""`latentforge submit` against a real Ray head this module starts on 127.0.0.1 (and stops): a bad flag fails the
job with the CLI's own error in its logs and the CLI's exit code; --no-wait returns with the job's status. (A whole
pipeline submitted from a directory the cluster cannot see, trained there by Ray Train: tests/test_cluster.py.)"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from backends.local_ray import own_ports
from pipelines import cli
from tests.conftest import free_port, skip_or_fail_in_ci

VENV_BIN = os.path.dirname(sys.executable)



def _start_head(ray_cli):
    """(process, dashboard address, temp dir, log) of a `ray start --head --block`, or None when it died while
    starting (its dashboard gives each module 30 s: a loaded 2-core machine has missed that)."""
    # A short temp dir: Ray's unix sockets live under it, and socket paths are limited to ~100 characters.
    temp_dir = tempfile.mkdtemp(prefix="lf-ray-")
    port, dashboard_port = free_port(), free_port()
    # The cluster's nodes run this project's environment: `python` on their PATH is the venv's.
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ["PATH"]}
    env.pop("RAY_ADDRESS", None)
    log = open(os.path.join(temp_dir, "head.log"), "w")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard_port}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
         f"--temp-dir={temp_dir}", "--disable-usage-stats", *own_ports()],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    from ray.job_submission import JobSubmissionClient
    deadline = time.time() + 360  # a loaded 2-core machine (Ray Train tests beside it) took over 180 s twice
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            return head, address, temp_dir, log
        except Exception:  # pylint: disable=broad-except
            if time.time() > deadline or head.poll() is not None:
                _stop_head(head, temp_dir, log, keep_log=True)
                return None, address, temp_dir, None
            time.sleep(1)


def _stop_head(head, temp_dir, log, keep_log=False):
    try:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` and everything it started
    except ProcessLookupError:
        pass
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    log.close()
    if not keep_log:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    ray_cli = os.path.join(VENV_BIN, "ray")
    if not os.path.exists(ray_cli):
        skip_or_fail_in_ci(f"no `ray` command beside {sys.executable}")
    for _ in range(3):  # a head whose dashboard missed its start-up timeout is started again
        head, address, temp_dir, log = _start_head(ray_cli)
        if head is not None:
            break
    else:
        with open(os.path.join(temp_dir, "head.log")) as f:
            pytest.fail(f"the Ray head did not come up at {address} in 3 tries:\n{f.read()[-3000:]}")
    try:
        yield address
    finally:
        _stop_head(head, temp_dir, log)


def test_a_job_with_a_bad_flag_fails_with_the_clis_error_and_exit_code(ray_head, capsys):
    code = cli.main(["submit", "--address", ray_head, "--", "run", "--epochs", "0"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_BAD_INPUT, out[-3000:] + err[-3000:]
    assert "argument --epochs: 0 is not a positive integer" in out
    assert "FAILED (exit code 2)" in out


def test_an_unreachable_jobs_api_is_a_cluster_error(capsys):
    assert cli.main(["submit", "--address", f"http://127.0.0.1:{free_port()}", "--", "run"]) == cli.EXIT_CLUSTER
    assert "cannot reach the Ray Jobs API" in capsys.readouterr().err


def test_no_wait_returns_at_once_with_the_job_status(ray_head, capsys):
    import re
    import time
    from pipelines import ray_jobs
    assert cli.main(["submit", "--address", ray_head, "--no-wait", "--", "models"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"Ray job (\S+) (PENDING|RUNNING|SUCCEEDED);", out)
    assert found, out
    deadline = time.monotonic() + 120
    while ray_jobs.status(ray_head, found.group(1)) != "SUCCEEDED" and time.monotonic() < deadline:
        time.sleep(1)
    assert ray_jobs.status(ray_head, found.group(1)) == "SUCCEEDED"


def test_a_space_file_travels_with_the_job_or_is_refused_before_submitting(tmp_path, monkeypatch, capsys):
    """The job runs in the uploaded project directory: a space file inside it is passed relative to it (whatever
    directory the user typed the command in); one outside it is refused before anything is submitted."""
    from pipelines import ray_jobs
    from tests.conftest import REPO_ROOT
    submitted = []
    monkeypatch.setattr(ray_jobs, "submit", lambda address, args, **kw: submitted.append(args) or "job-1")
    monkeypatch.setattr(ray_jobs, "status", lambda address, job_id: "PENDING")
    monkeypatch.chdir(tmp_path)
    outside = tmp_path / "space.yaml"
    outside.write_text("learning_rate: {loguniform: [1.0e-4, 1.0e-3]}\n")
    code = cli.main(["submit", "--address", "http://head:8265", "--no-wait", "--", "run", "--tune", str(outside)])
    assert code == cli.EXIT_BAD_INPUT and not submitted
    assert f"--tune {outside}: the job runs in the project directory" in capsys.readouterr().err
    inside = os.path.relpath(os.path.join(REPO_ROOT, "docs", "tuning.md"), tmp_path)
    assert cli.main(["submit", "--address", "http://head:8265", "--no-wait", "--", "run", "--tune", inside,
                     "--run-dir", "s3://bucket/runs"]) == 0
    assert submitted == [["run", "--tune", os.path.join("docs", "tuning.md"), "--run-dir", "s3://bucket/runs"]]
    assert cli.main(["submit", "--address", "http://head:8265", "--no-wait", "--", "run", "--tune=default"]) == 0
    assert submitted[-1] == ["run", "--tune=default"]
