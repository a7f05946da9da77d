"""What the benchmarks share: the real MNIST (../shared/datasets/mnist or LATENTFORGE_MNIST_DIR), timing, results."""
import json
import os
import platform
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MNIST_DIR = os.environ.get("LATENTFORGE_MNIST_DIR", os.path.join(REPO_ROOT, "..", "shared", "datasets", "mnist"))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")


def load_mnist():
    """(x_train (60000, 28, 28, 1), y_train, x_test (10000, 28, 28, 1), y_test); pixels float32 in [0, 1]."""
    from components.image_example_gen import sources
    if not os.path.isdir(MNIST_DIR):
        sys.exit(f"benchmarks need the real MNIST IDX files in {MNIST_DIR} (or set LATENTFORGE_MNIST_DIR)")
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        _, images = sources.read_idx(os.path.join(MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz"), 3)
        _, labels = sources.read_idx(os.path.join(MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz"), 1)
        arrays[split] = (images[..., None].astype(np.float32) / 255.0, labels.astype(np.int64))
    return (*arrays["train"], *arrays["test"])


class TreeMemory:
    """The resident memory of a process and all its descendants (a driver, Ray, Beam workers), sampled every
    `interval` s in a thread until the process exits: `samples` holds (seconds since `started`, bytes)."""

    def __init__(self, process, started: float, interval: float = 0.2):
        import threading
        self.samples = []
        self._thread = threading.Thread(target=self._sample, args=(process, started, interval), daemon=True)
        self._thread.start()

    def _sample(self, process, started, interval):
        import psutil
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                self.samples.append((time.time() - started, sum(p.memory_info().rss for p in tree if p.is_running())))
            except psutil.Error:  # a process that ended while being looked at
                pass
            time.sleep(interval)

    def join(self) -> None:
        self._thread.join()

    def peak(self, start: float = 0.0, end: float = float("inf")) -> int:
        """The largest sample between `start` and `end` seconds (0 without one)."""
        return max([rss for t, rss in self.samples if start <= t < end] or [0])


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def load_results(name: str) -> dict:
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        results = json.load(f)
    results.pop("machine", None)
    return results


def save_results(name: str, results: dict) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    with open(path, "w") as f:
        json.dump({"machine": machine, **results}, f, indent=1)
    return path


S3_BUCKET = "latentforge-bench"


def start_s3():
    """(moto's S3 server on 127.0.0.1, a boto3 client) with the bucket S3_BUCKET, and this process's AWS settings
    pointing at it (child processes inherit them). The caller kills the server."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import boto3  # pylint: disable=import-outside-toplevel
    from tests.conftest import free_port  # pylint: disable=import-outside-toplevel
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    client = boto3.client("s3")
    for _ in range(100):
        try:
            client.create_bucket(Bucket=S3_BUCKET)
            return server, client
        except Exception:  # pylint: disable=broad-except
            time.sleep(0.2)
    server.kill()
    sys.exit("moto's S3 server did not start")
