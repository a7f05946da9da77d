"""Ray clusters of two nodes on one machine whose nodes share no disk (tests/test_cluster.py,
benchmarks/cluster_epoch.py): the second node runs in its own mount namespace with a private tmpfs over the
head's directory for the run and over Ray's temp dirs, as another machine's disk would be. Needs root and unshare."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

from backends.local_ray import own_ports
from tests.conftest import free_port

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def available() -> bool:
    import shutil  # pylint: disable=import-outside-toplevel
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def start_process(command, log_path, env=None):
    with open(log_path, "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def kill(process):
    """A node lost at once, as a machine that fails: SIGKILL to its processes, nothing shut down in order."""
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.Error:
        return
    for member in tree:
        try:
            member.kill()
        except psutil.Error:
            pass
    process.wait(20)


def descendants(process) -> set:
    try:
        return {p.pid for p in psutil.Process(process.pid).children(recursive=True)}
    except psutil.Error:
        return set()


def stop(process):
    """The node and every process it started (a `ray stop` would stop every Ray on the machine)."""
    try:
        started = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        started = []
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
    for child in started:
        try:
            child.kill()
        except psutil.Error:
            pass


class Cluster:
    """A Ray head (1 CPU) and a second node (1 CPU) in its own mount namespace: a private tmpfs over `hidden` (the
    head's directory for the run) and over the cluster's Ray temp dir, so it sees neither, as another machine
    would not."""

    def __init__(self, hidden, logs, head_cpus: int = 1, second_node: bool = True):
        """`hidden` must hold a file named `marker` (the second node checks it cannot see it); head_cpus=2 and
        second_node=False: the one-node cluster of the same CPUs."""
        self.hidden, self.logs = hidden, logs
        port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.common = ["--object-store-memory=200000000", "--disable-usage-stats", "--block",
                       "--node-ip-address=127.0.0.1"]
        # The head has the dashboard (Ray's Jobs and state APIs); the job's driver runs there and finds `python`
        # (the project's environment) on the PATH, as a cluster's image provides it.
        self.env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
                    "LATENTFORGE_STATE_DIR": str(hidden / "state")}
        self.env.pop("RAY_ADDRESS", None)
        # The cluster's own temp dir: Ray resolves "auto" (a job's driver, the State API) to the newest cluster in
        # its temp dir, and with the default /tmp/ray shared by the suite's other Rays it found another one. (Short:
        # Ray's unix sockets live under it.) The second node gets a private tmpfs over it.
        self.temp_dir = tempfile.mkdtemp(prefix="lfc-", dir="/tmp")
        self.head = start_process([RAY, "start", "--head", f"--port={port}", f"--temp-dir={self.temp_dir}",
                                   "--include-dashboard=true",
                                   "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                                   f"--num-cpus={head_cpus}", *self.common, *own_ports()], logs / "head.log", self.env)
        self.node, self.nodes_started = None, 0
        if second_node:
            self.start_node()
        else:
            self.wait_for_nodes(1)

    def start_node(self):
        script = (f"mount -t tmpfs tmpfs {self.hidden} && mount -t tmpfs tmpfs {self.temp_dir} && "
                  "mount -t tmpfs tmpfs /tmp/ray && "
                  f"test ! -e {self.hidden}/marker && exec {RAY} start --address={self.address} "
                  f"--num-cpus=1 {' '.join(self.common + own_ports())}")
        os.makedirs("/tmp/ray", exist_ok=True)
        self.nodes_started += 1
        self.node = start_process(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                  self.logs / f"node-{self.nodes_started}.log", self.env)
        self.wait_for_nodes()

    def wait_for_nodes(self, count: int = 2):
        deadline = time.monotonic() + 120
        while True:
            status = subprocess.run([RAY, "status", f"--address={self.address}"], capture_output=True, text=True)
            if status.stdout.split("Pending:")[0].count(" node_") >= count:  # `ray status` lists each active node
                return
            for process, log in ((self.head, "head.log"), (self.node, f"node-{self.nodes_started}.log")):
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"a Ray node exited: {(self.logs / log).read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"two nodes did not come up: {status.stdout[-1500:]}")
            time.sleep(1)

    def stop(self):
        if self.node is not None:
            stop(self.node)
        stop(self.head)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
