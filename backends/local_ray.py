"""A local Ray head in its own process, started on first use: `python -m backends.local_ray --port P ...` runs
`ray start --head --block` tied to the process that launched it.

Why not `ray.init()` in the pipeline's process: by the time a Trainer runs, Beam's components have filled that
process with threads (gRPC, Beam, TensorFlow pools), and ray.init forks its raylet with a preexec_fn (a plain
fork(), not vfork): the child hung before exec ("Other threads are currently calling into gRPC, skipping fork()
handlers", then "The current node timed out during startup"). Started before any component instead, every run
paid for a Ray even when the Trainer came from the TFX cache. A fresh interpreter, launched without preexec_fn
(CPython vforks then), starts Ray cleanly at any point of the run, and the driver joins it by address.

The head lives as long as its launcher: `stop()` at exit, and a thread in the head's process that watches the
launcher's pid stops it when the launcher is killed (SIGKILL runs no atexit).
"""
import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional

READY_LINE = "Ray runtime started"
STOP_GRACE_S = 20.0  # how long the head gets to stop what it started before it and they are killed


DASHBOARD_MODULE_TIMEOUT_ENV = "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT"


class LocalRay:
    """The head this process started: its GCS address, its launcher process and its log."""

    def __init__(self, num_cpus: int, object_store_bytes: int, startup_timeout_s: float = 120.0,
                 dashboard: bool = False):
        # No dashboard unless asked: it doubles the start-up (16 s vs 8 s on 2 cores). A search asks: Ray Train's
        # PlacementGroupCleaner learns through the dashboard's State API that a stopped trial's controller is gone,
        # and without it the trial's workers' CPUs stay reserved. Ray's default object store is 30 % of memory;
        # training passes files, not objects (object_store_bytes).
        port = _free_port()
        self.dashboard = dashboard
        self.address = f"127.0.0.1:{port}"
        self.log_path = os.path.join(tempfile.mkdtemp(prefix="latentforge-ray-"), "ray-start.log")
        command = [sys.executable, "-m", "backends.local_ray", "--parent", str(os.getpid()), "start", "--head",
                   "--block", f"--port={port}", f"--num-cpus={num_cpus}",
                   f"--object-store-memory={object_store_bytes}",
                   *(["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={_free_port()}"]
                     if dashboard else ["--include-dashboard=false"]),
                   *own_ports(), "--disable-usage-stats"]
        project_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (project_root, os.environ.get("PYTHONPATH"))
                                                           if p)}
        # The dashboard gives each of its modules 30 s to start; on a busy 2-core machine its metrics module has
        # missed that, failing the whole head. Ray reads this variable: a slower start instead of none.
        env.setdefault(DASHBOARD_MODULE_TIMEOUT_ENV, "180")
        with open(self.log_path, "w") as log:
            # No preexec_fn and no start_new_session: subprocess then vforks, safe in a threaded process.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, cwd=project_root)
        atexit.register(self.stop)
        deadline = time.time() + startup_timeout_s
        while READY_LINE not in self._log():
            if self.process.poll() is not None:
                raise RuntimeError(f"the local Ray head did not start (exit code {self.process.returncode}); "
                                   f"its log, {self.log_path}:\n{self._log()[-2000:]}")
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"the local Ray head did not start in {startup_timeout_s:.0f} s; its log: "
                                   f"{self.log_path}")
            time.sleep(0.2)

    def _log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM: `ray start --block` stops every process it started, then exits. It does not always: a head
        outlived its launcher with its raylet a zombie, TERM ignored, its GCS, dashboard and monitors still up
        (and `latentforge serve`, waiting on it at exit, outlived a 120-s Ctrl-C test under load). After
        `grace_s` the head and every process it started (known before the TERM) are killed."""
        if self.process.poll() is not None:
            return
        import psutil  # pylint: disable=import-outside-toplevel  (Ray's own dependency)
        try:
            started = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            started = []
        self.process.terminate()
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for child in started:
            try:
                child.kill()
            except psutil.Error:  # gone already: what TERM should have done
                pass


def own_ports() -> List[str]:
    """`ray start` options that keep a head off ports another Ray on this machine may take. By default each node
    hands its workers ports counting up from 10002 and checks each is free before the worker binds it, so two Rays
    on one machine race for the same port: a driver then aborted at start ("Failed to start the grpc server. The
    specified port is 10002"). Port 0 lets the kernel pick as the worker binds. The agents' and the Ray Client
    server's defaults (52365..., 10001) are fixed too: a head whose job agent cannot bind refuses every job."""
    return ["--min-worker-port=0", "--max-worker-port=0", f"--ray-client-server-port={_free_port()}",
            *(f"--{flag}={_free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                       "metrics-export-port", "runtime-env-agent-port"))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with(parent: int) -> None:
    """Stops this head when the launcher's process goes away, however it ends: SIGTERM (`ray start --block`
    stops what it started), then, if that was not enough within STOP_GRACE_S, SIGKILL to it and to every process
    it had started. (PR_SET_PDEATHSIG's TERM alone was not: a head whose raylet had become a zombie ignored it and
    outlived its killed launcher.) A thread watching the parent's pid, not the kernel's parent-death signal, which
    also fires when merely the launching thread ends."""
    if os.getppid() != parent:  # it died already
        sys.exit(0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        import psutil  # pylint: disable=import-outside-toplevel  (Ray's own dependency)
        started = psutil.Process().children(recursive=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_GRACE_S)
        for child in started:
            try:
                child.kill()
            except psutil.Error:
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="latentforge-launcher-watch", daemon=True).start()


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--parent"]:
        _die_with(int(argv[1]))
        argv = argv[2:]
    from ray.scripts import scripts  # pylint: disable=import-outside-toplevel
    sys.argv = ["ray", *argv]
    scripts.main()


if __name__ == "__main__":
    main()
