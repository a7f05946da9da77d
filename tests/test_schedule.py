"""docs/operations.md's cron line and deploy/'s systemd units, run as written (the install path /opt/latentforge swapped for
a directory laid out like an install: the project's .venv and data linked in). The second run, the same command,
comes from the TFX cache: a schedule repeats safely."""
import json
import os
import re
import shlex
import shutil
import subprocess

import numpy as np
import pytest

from pipelines import cli
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
INSTALL = "/opt/latentforge"


@pytest.fixture
def install(tmp_path):
    directory = tmp_path / "opt-latentforge"
    directory.mkdir()
    for name in (".venv", "deploy"):
        os.symlink(os.path.join(REPO_ROOT, name), directory / name)
    shutil.copytree(os.path.join(REPO_ROOT, "data"), directory / "data")  # its own: a test adds a snapshot
    return str(directory)


def _cron_line() -> str:
    with open(os.path.join(REPO_ROOT, "docs", "operations.md")) as f:
        lines = [line.strip() for line in f if re.match(r"^[\d*/,-]+ [\d*/,-]+ [\d*/,-]+ [\d*/,-]+ [\d*/,-]+ ", line)]
    assert len(lines) == 1, lines
    return lines[0]


def _unit(name: str) -> dict:
    fields = {}
    with open(os.path.join(REPO_ROOT, "deploy", name)) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                key, _, value = line.strip().partition("=")
                fields[key] = value
    return fields


def _records(install):
    with open(os.path.join(install, "runs", "latentforge", "runs.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_the_cron_line_then_the_systemd_service_run_as_written(install, tmp_path):
    command = _cron_line().split(maxsplit=5)[5].replace(INSTALL, install)
    # cron's environment: /bin/sh, a bare PATH, HOME.
    cron_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh",
                "LATENTFORGE_MNIST_DIR": os.environ.get("LATENTFORGE_MNIST_DIR", "")}
    done = subprocess.run(["/bin/sh", "-c", command], env=cron_env, timeout=900)
    assert done.returncode == 0, open(os.path.join(install, "runs", "cron.log")).read()[-3000:]
    with open(os.path.join(install, "runs", "cron.log")) as f:
        logged = f.read()
    assert "latentforge: summary" in logged
    first = _records(install)[-1]
    assert first["status"] == "ok" and "Trainer" in first["ran"] and first["registered"]
    # A quiet log: the pipeline's progress, plain epoch lines (no terminal: no bar; epochs of a fraction of a second
    # keep a line at most every 2 s, the first and the last always), the results; none of TF's C++ start-up lines,
    # library warnings, Ray's or TFX's INFO records.
    lines = logged.splitlines()
    epochs = [line for line in lines if line.startswith("  epoch ")]
    numbers = [int(line.split("/")[0].split()[-1]) for line in epochs]
    assert numbers[0] == 1 and numbers[-1] == 20 and numbers == sorted(set(numbers))  # stacked_ae's 20 epochs
    # The rest: the run's header, 10 component lines, the results and where to look (and XLA's 4 C++ lines of a
    # process that compiles, which TF 2.16 cannot silence: DEVELOPERS.md).
    assert len(lines) - len(epochs) <= 26, logged
    assert "latentforge: [ 1/10] ImageExampleGen" in logged and "  epoch 1/" in logged and "\r" not in logged
    for noise in ("Unable to register", "FutureWarning", "INFO", "oneDNN", "Checkpoint successfully created",
                  "Reporting training result", "Created version"):
        assert noise not in logged, noise

    service = _unit("latentforge.service")
    assert service["Type"] == "oneshot" and service["SuccessExitStatus"] == str(cli.EXIT_BUSY)
    assert service["WorkingDirectory"] == INSTALL
    done = subprocess.run(shlex.split(service["ExecStart"].replace(INSTALL, install)),
                          cwd=service["WorkingDirectory"].replace(INSTALL, install),
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    again = _records(install)[-1]
    assert again["status"] == "ok" and again["ran"] == [] and "Trainer" in again["cached"]
    assert again["registered"] == first["registered"]  # nothing new trained, nothing new registered

    # A new snapshot of the source (200 more training digits): the next scheduled run ingests it and trains.
    from components.image_example_gen import sources
    from tests.conftest import write_idx
    sample = os.path.join(install, "data", "mnist-sample")
    for kind, rank in (("images", 3), ("labels", 1)):
        path = os.path.join(sample, f"train-{kind}-idx{rank}-ubyte.gz")
        _, array = sources.read_idx(path, rank)
        write_idx(path, np.concatenate([array, array[:200]]))
    done = subprocess.run(["/bin/sh", "-c", command], env=cron_env, timeout=900)
    assert done.returncode == 0
    snapshot = _records(install)[-1]
    assert snapshot["status"] == "ok" and {"ImageExampleGen", "Transform", "Trainer"} <= set(snapshot["ran"])
    assert snapshot["registered"] != first["registered"]


def test_the_systemd_units_verify(tmp_path, install):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed here")
    for name in ("latentforge.service", "latentforge.timer"):
        with open(os.path.join(REPO_ROOT, "deploy", name)) as f:
            (tmp_path / name).write_text(f.read().replace(INSTALL, install))
    done = subprocess.run([analyze, "verify", str(tmp_path / "latentforge.service"),
                           str(tmp_path / "latentforge.timer")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    assert _unit("latentforge.timer")["Persistent"] == "true"
