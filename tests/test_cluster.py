"""A two-node Ray cluster on one machine whose nodes share no disk: the second node runs in its own mount namespace
with a private tmpfs over everything the run keeps locally (its state directory, its source, its working
directory), and the run directory is a bucket on an S3-compatible server on 127.0.0.1. A pipeline run with one
Ray Train worker per node trains, checkpoints into the bucket, evaluates, registers and pushes; only ML Metadata
and the MLflow database stay on the head's disk."""
import json
import os
import shutil
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import S3_BUCKET, free_port, s3_keys

pytestmark = pytest.mark.slow
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _start(command, log_path):
    with open(log_path, "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(process):
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


@pytest.fixture(scope="module")
def two_nodes(s3_store, tmp_path_factory):
    """(GCS address, the directory the second node cannot see, its mount namespace's view checked)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a node in its own mount namespace needs root and unshare (CI runs as root)")
    hidden = tmp_path_factory.mktemp("head-only")
    (hidden / "marker").write_text("the head's disk")
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats", "--block"]
    head = _start([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                  hidden.parent / "head.log")
    # The second node: the same machine, but a private tmpfs over the head's directory in its own mount namespace
    # (what another machine's disk would be), and its own /tmp/ray for Ray's session files.
    script = (f"mount -t tmpfs tmpfs {hidden} && mount -t tmpfs tmpfs /tmp/ray && "
              f"test ! -e {hidden}/marker && exec {RAY} start --address={address} {' '.join(common)}")
    os.makedirs("/tmp/ray", exist_ok=True)
    node = _start(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                  hidden.parent / "node.log")
    try:
        deadline = time.monotonic() + 120
        while True:
            status = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, text=True)
            if status.stdout.count(" node_") >= 2:  # `ray status` lists each active node
                break
            for process, name in ((head, "head"), (node, "node")):
                if process.poll() is not None:
                    pytest.fail(f"the {name} exited: {(hidden.parent / (name + '.log')).read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"two nodes did not come up: {status.stdout[-1500:]}")
            time.sleep(1)
        yield {"address": address, "hidden": hidden}
    finally:
        _stop(node)
        _stop(head)


def test_a_run_trains_one_worker_per_node_through_the_bucket(two_nodes, s3_store):
    hidden = two_nodes["hidden"]
    workdir, source = hidden / "cwd", hidden / "mnist-sample"
    workdir.mkdir()
    shutil.copytree(os.path.abspath("data/mnist-sample"), source)
    env = {**os.environ, "LATENTFORGE_STATE_DIR": str(hidden / "state"),
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--model", "conv_ae", "--epochs", "2", "--workers", "2",
         "--cpus-per-worker", "1", "--ray-address", two_nodes["address"], "--source", f"idx:{source}",
         "--run-dir", f"s3://{S3_BUCKET}/cluster/runs"],
        capture_output=True, text=True, timeout=900, env=env, cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    keys = s3_keys(s3_store, "cluster/runs/latentforge/")
    assert any("/ray/" in k and "/checkpoint_" in k and k.endswith("state.json") for k in keys), keys
    assert any(k.startswith("cluster/runs/latentforge/serving/conv_ae/") and k.endswith("saved_model.pb")
               for k in keys)
    metrics_key = next(k for k in keys if k.startswith("cluster/runs/latentforge/tfx/Trainer/model_run/")
                       and k.endswith("metrics.json"))
    metrics = json.loads(s3_store["client"].get_object(Bucket=S3_BUCKET, Key=metrics_key)["Body"].read())
    workers = metrics["workers"]
    # One worker on each node, both training the same model in sync.
    assert len(workers) == 2 and len({w["node"] for w in workers}) == 2, workers
    assert all(w["replicas"] == 2 for w in workers)
    # Everything but the state directory is in the bucket: TFX's artifacts, the Trainer's and Evaluator's files,
    # MLflow's artifacts; nothing was written in the working directory.
    for expected in ("tfx/ImageExampleGen/", "tfx/Transform/", "tfx/Trainer/model/", "/evaluation.json", "/loss.png",
                     "mlartifacts/"):
        assert any(expected in key for key in keys), (expected, keys)
    assert list(workdir.iterdir()) == []
    state = hidden / "state" / "s3" / S3_BUCKET / "cluster" / "runs" / "latentforge"
    assert {"metadata.sqlite", "mlflow.db", "runs.jsonl"} <= {p.name for p in state.iterdir()}
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{state}/mlflow.db")
    version = client.get_model_version_by_alias("mnist-sample-autoencoder", "champion")
    assert client.get_run(version.run_id).info.artifact_uri.startswith(
        f"s3://{S3_BUCKET}/cluster/runs/latentforge/mlartifacts/")
