"""Shared fixtures: small datasets written by the tests themselves, and the real MNIST when present."""
import gzip
import json
import os
import struct

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras 2 before TensorFlow's first import (trainers/__init__.py says why): TensorFlow then loads no Keras 3 with it
# (~1.8 CPU-s), in this process and in every process a test starts that does not import TFX's components.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Every Ray head a test starts (`ray start` in fixtures included): the dashboard's modules get 180 s, not 30, to
# start; three test processes on 2 cores have made its metrics module miss 30 s (backends/local_ray.py does the same).
os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "180")
# The `mlflow server`s tests start: no job runner (MLflow 3's GenAI jobs; two more processes each that nothing
# here uses, whose start-up under the suite's load made a server miss its deadline).
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO_ROOT, "data", "mnist-sample")
MNIST_DIR = os.environ.get("LATENTFORGE_MNIST_DIR", os.path.join(REPO_ROOT, "..", "shared", "datasets", "mnist"))


def free_port() -> int:
    """A TCP port nothing listens on now (for servers the tests start on 127.0.0.1)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_idx(path: str, array: np.ndarray) -> str:
    """Writes an IDX file of unsigned bytes, gzipped when the name ends in .gz."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())
    return path


def random_images(n: int, shape=(8, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.fixture
def idx_dir(tmp_path):
    """60 train + 20 test 8x8 images, labels 0..2, gzipped like the MNIST download."""
    x_train, x_test = random_images(60, seed=1), random_images(20, seed=2)
    y_train, y_test = np.arange(60) % 3, np.arange(20) % 3
    write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), x_train)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), y_train.astype(np.uint8))
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), x_test)
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), y_test.astype(np.uint8))
    return tmp_path, (x_train, y_train, x_test, y_test)


def write_png(path, array: np.ndarray) -> None:
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array.squeeze() if array.shape[-1] == 1 else array).save(path)


def skip_or_fail_in_ci(reason: str):
    """pytest.skip(reason) on a developer's machine; under CI=true (`.ci/run` sets it) a failure: CI has every
    prerequisite (root, chromium, the real MNIST), so a skip there would hide a broken install."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: what CI should have is missing)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def mnist_dir():
    needed = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz"]
    if not all(os.path.exists(os.path.join(MNIST_DIR, n)) for n in needed):
        skip_or_fail_in_ci(f"real MNIST not found in {MNIST_DIR} (set LATENTFORGE_MNIST_DIR to the folder with the "
                    "four IDX .gz files)")
    return MNIST_DIR


def sample_digits(n: int) -> np.ndarray:
    """The first n real MNIST training digits of the bundled sample, (n, 28, 28, 1) float32 in [0, 1]."""
    from components.image_example_gen import sources
    info = sources.probe(sources.parse_source(f"idx:{SAMPLE_DIR}"))
    images = [record[0] for _, record in zip(range(n), sources.read_split(info, "train"))]
    return np.stack(images).astype(np.float32) / 255.0


# The Transform's output features (pipelines/preprocessing.py) as trainers.job.TrainingJob takes them.
TRANSFORMED_SPEC = {"image": ([28, 28, 1], "float32"), "label": ([], "int64"), "labeled": ([], "int64")}


def sample_labels(n: int) -> np.ndarray:
    from components.image_example_gen import sources
    info = sources.probe(sources.parse_source(f"idx:{SAMPLE_DIR}"))
    return np.array([record[1] for _, record in zip(range(n), sources.read_split(info, "train"))], np.int64)


def write_transformed(path: str, images: np.ndarray, labels: np.ndarray) -> str:
    """Gzipped tf.Examples shaped like the Transform's output: image floats, label, labeled flag (all 1)."""
    import tensorflow as tf
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for image, label in zip(images, labels):
            example = tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel().tolist())),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                "labeled": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}))
            writer.write(example.SerializeToString())
    return path


# Fixtures that start Ray, a server or a whole pipeline: a test that uses one (directly or through another
# fixture) is slow, marked here rather than by hand (`make test-fast` runs what is not).
STARTS_SERVICES = {"local_ray", "ray_head", "mlflow_server", "two_nodes", "s3_store", "served", "sample_run"}
# Module fixtures that train a model for more than ~20 s on 2 cores: their tests run in `make test`, not in the
# fast lane (a test that trains that long by itself is marked slow where it is defined).
TRAINS_FOR_LONG = {("test_diffusion", "trained"), ("test_stylegan", "trained"), ("test_conditional_gan", "dcgan_cond"),
                   ("test_export", "exported"), ("test_conditional", "zeros_and_ones")}


def pytest_collection_modifyitems(items):
    """Marks the tests that start services (STARTS_SERVICES) or use a long-training fixture slow. The longest modules
    first: `make test` hands whole modules to its processes in this order (pytest-xdist's --dist loadfile with
    --no-loadscope-reorder: by default xdist reorders modules by their number of tests, which sent the two-test
    cluster module last and left one process alone with it), and longest-first lets them finish together.
    tests/module_seconds.json holds each module's seconds from a whole `make test` (refresh it from `--junitxml`
    when modules change much); a module not in it goes by whether it has slow tests."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = item.module.__name__.rsplit(".", 1)[-1]
        if STARTS_SERVICES & fixtures or {(module, name) for name in fixtures} & TRAINS_FOR_LONG:
            item.add_marker(pytest.mark.slow)
    with open(os.path.join(os.path.dirname(__file__), "module_seconds.json")) as f:
        measured = json.load(f)
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}

    def expected_seconds(item):
        name = item.module.__name__.rsplit(".", 1)[-1]
        return measured.get(name, 60 if item.module.__name__ in slow_modules else 1)

    items.sort(key=lambda item: -expected_seconds(item))


def write_feature_network(directory: str, images=None, epochs: int = 1) -> str:
    """A metric network laid out as the MetricNetworkTrainer leaves it (DIR/saved_model, DIR/reference.npz),
    trained for `epochs` on the sample's first 640 digits (or `images` with their labels), as a Trainer's
    `metric_model` input: where its epochs are scored."""
    from evaluation import scoring
    images = sample_digits(640) if images is None else images
    labels = sample_labels(len(images))
    config = scoring.MetricNetworkConfig(epochs=epochs)
    model = scoring.build_metric_network(images.shape[1:], 10, config)
    model.fit(images, labels, batch_size=128, epochs=epochs, verbose=0)
    scoring.export_metric_network(model, os.path.join(directory, "saved_model"))
    features, _ = scoring.MetricNetwork(os.path.join(directory, "saved_model"))(images)
    scoring.FeatureReference.from_features(features, labels, 10).save(directory)
    return directory


def pytest_sessionfinish(session, exitstatus):
    """A test process that loaded TensorFlow's S3 plugin leaves before its C++ destructors, which abort
    (backends/storage.py): with the session's own exit status."""
    from backends import storage
    storage.set_exit_code(exitstatus)


S3_BUCKET = "latentforge-test"
S3_SETTINGS = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


@pytest.fixture(scope="module")
def s3_store():
    """An S3-compatible server on 127.0.0.1 (moto's, the test double Ray's own tests use) with one bucket, and this
    process's AWS settings pointing at it (restored after the module). {"endpoint", "bucket", "client"}."""
    import subprocess
    import sys
    import time
    import boto3
    import botocore.exceptions
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in S3_SETTINGS}
    os.environ.update(AWS_ENDPOINT_URL_S3=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_REGION="us-east-1")
    client = boto3.client("s3")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=S3_BUCKET)
            break
        except botocore.exceptions.EndpointConnectionError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto's S3 server did not start")
            time.sleep(0.2)
    try:
        yield {"endpoint": endpoint, "bucket": S3_BUCKET, "client": client}
    finally:
        server.terminate()
        server.wait(timeout=30)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def s3_keys(store, prefix: str) -> list:
    """Every key in the test bucket under `prefix`."""
    pages = store["client"].get_paginator("list_objects_v2").paginate(Bucket=store["bucket"], Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]
