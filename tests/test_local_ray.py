"""The local Ray head (backends/local_ray.py) lives as long as the process that launched it, also when that
process is killed outright."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

LAUNCHER = """
import time
from backends import local_ray
head = local_ray.LocalRay(num_cpus=1, object_store_bytes=100_000_000)
import ray
ray.init(address=head.address, log_to_driver=False)
ray.get(ray.remote(lambda: 1).remote())  # a driver and a worker, each with a port its node handed it
print(head.process.pid, flush=True)
time.sleep(600)
"""


def test_a_head_whose_launcher_is_killed_goes_with_everything_it_started():
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                                env={**os.environ, "PYTHONPATH": REPO_ROOT})
    try:
        head = psutil.Process(int(launcher.stdout.readline()))
        started = head.children(recursive=True)
        assert any("gcs_server" in p.name() for p in started), [p.name() for p in started]
        # Another Ray on this machine (a user's, the suite's other tests') takes its ports from Ray's defaults:
        # 10001 (Ray Client), 10002 and up (workers; a node checks a port is free, then its worker binds it, so
        # two nodes raced for one), 52365 (the dashboard agent). This head and its workers take none of them.
        driver = psutil.Process(launcher.pid)
        ports = {c.laddr.port for p in {driver, head, *started, *driver.children(recursive=True)}
                 for c in _listening(p)}
        assert ports, "the head's processes listen on no port"
        taken = sorted(port for port in ports if 10001 <= port <= 19999 or port == 52365)
        assert not taken, taken
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        # The head's TERM, then (backends/local_ray.STOP_GRACE_S later at most) SIGKILL to all it started.
        deadline = time.monotonic() + 45
        alive = [p for p in [head, *started] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        while alive and time.monotonic() < deadline:
            time.sleep(0.5)
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        if launcher.poll() is None:
            launcher.kill()


def _listening(process):
    try:
        return [c for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return []
