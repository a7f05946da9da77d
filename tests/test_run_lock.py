"""pipelines/run_lock.py and `latentforge run`'s --if-busy: one writer per pipeline root; a killed holder leaves no
stale lock; the second run exits with code 6 (nothing done) or waits, as asked."""
import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines import cli, run_lock
from tests.conftest import REPO_ROOT, SAMPLE_DIR

HOLD = r'''
import sys, time
from pipelines import run_lock
with run_lock.pipeline_lock(sys.argv[1], command="latentforge run --model holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
'''


def _holder(root, seconds):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(seconds)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_held_root_is_refused_at_once_naming_the_holder(tmp_path):
    holder = _holder(tmp_path, 60)
    try:
        started = time.monotonic()
        with pytest.raises(run_lock.PipelineBusy) as error:
            with run_lock.pipeline_lock(str(tmp_path)):
                pass
        assert time.monotonic() - started < 5
        assert f"pid {holder.pid}" in str(error.value) and "latentforge run --model holder" in str(error.value)
        with pytest.raises(run_lock.PipelineBusy, match="after waiting 1.5 s"):
            with run_lock.pipeline_lock(str(tmp_path), wait_s=1.5):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = _holder(tmp_path, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with run_lock.pipeline_lock(str(tmp_path)) as path:
        assert os.path.exists(path)


def test_waiting_gets_the_lock_when_the_holder_finishes(tmp_path, capsys):
    holder = _holder(tmp_path, 2)
    started = time.monotonic()
    with run_lock.pipeline_lock(str(tmp_path), wait_s=None):
        waited = time.monotonic() - started
    holder.wait()
    assert 0.5 < waited < 30
    assert "waiting for it" in capsys.readouterr().err


def test_run_on_a_busy_root_exits_6_having_done_nothing(tmp_path, capsys):
    root = tmp_path / "runs" / "latentforge"
    holder = _holder(root, 60)
    try:
        code = cli.main(["run", "--source", f"idx:{SAMPLE_DIR}", "--run-dir", str(tmp_path / "runs"),
                         "--trainer", "in-process"])
        out, err = capsys.readouterr()
        assert code == cli.EXIT_BUSY == 6
        assert f"pid {holder.pid}" in err and "--if-busy wait" in err
        assert '"status": "busy"' in out
        assert sorted(os.listdir(root)) == [run_lock.LOCK_FILE]  # no metadata, no outputs, no runs.jsonl
        code = cli.main(["run", "--source", f"idx:{SAMPLE_DIR}", "--run-dir", str(tmp_path / "runs"),
                         "--trainer", "in-process", "--if-busy", "wait", "--lock-timeout", "1"])
        assert code == cli.EXIT_BUSY and "after waiting 1 s" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
