"""A two-node Ray cluster on one machine whose nodes share no disk: the second node runs in its own mount namespace
with a private tmpfs over everything the run keeps locally (its state directory, its source, its working
directory), and the run directory is a bucket on an S3-compatible server on 127.0.0.1. A pipeline run with one
Ray Train worker per node trains, checkpoints into the bucket, loses the second node in its second epoch, goes on
from the bucket's checkpoint on a fresh node (another empty disk), evaluates, registers and pushes; only ML
Metadata and the MLflow database stay on the head's disk."""
import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests import cluster as cluster_on_one_machine
from tests.conftest import REPO_ROOT, S3_BUCKET, free_port, s3_keys, skip_or_fail_in_ci

pytestmark = pytest.mark.slow
RAY = cluster_on_one_machine.RAY


@pytest.fixture(scope="module")
def two_nodes(s3_store, tmp_path_factory):
    if not cluster_on_one_machine.available():
        skip_or_fail_in_ci("a node in its own mount namespace needs root and unshare (CI runs as root)")
    hidden = tmp_path_factory.mktemp("head-only")
    (hidden / "marker").write_text("the head's disk")
    cluster = cluster_on_one_machine.Cluster(hidden, hidden.parent)
    try:
        yield cluster
    finally:
        cluster.stop()


def _finished_checkpoints(store, prefix):
    """{checkpoint directory: its state} for the Ray checkpoints in the bucket whose three files are all there."""
    keys = set(s3_keys(store, prefix))
    done = {}
    for key in keys:
        directory, _, name = key.rpartition("/")
        if "/checkpoint_" in directory and name == "state.json" and {
                f"{directory}/worker-0.json", f"{directory}/worker-1.json"} <= keys:
            body = store["client"].get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
            done[directory] = json.loads(body)
    return done


def _ended_early(output: str) -> str:
    """The run's end, and the lines a Ray process that aborts prints before its stack trace (which alone would
    fill the message)."""
    checks = [line for line in output.splitlines() if "Check failed" in line or "Error" in line]
    return "the run ended before its first checkpoint:\n" + "\n".join(checks[-20:]) + "\n...\n" + output[-2000:]


def _read_json(store, key):
    return json.loads(store["client"].get_object(Bucket=S3_BUCKET, Key=key)["Body"].read())


def test_a_run_survives_losing_a_node_and_keeps_everything_in_the_bucket(two_nodes, s3_store):
    cluster = two_nodes
    hidden = cluster.hidden
    workdir, source = hidden / "cwd", hidden / "mnist-sample"
    workdir.mkdir()
    shutil.copytree(os.path.join(REPO_ROOT, "data", "mnist-sample"), source)
    env = {**cluster.env, "PYTHONPATH": os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")])}
    # The notebook's dense GAN with its generator's weight average (on by default): 2 epochs of ~225 steps of a
    # global batch of 8 (four images per worker), ~13 s each on 2 cores: long enough to lose a node inside epoch 2.
    prefix = "cluster/runs/latentforge/"
    run = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--model", "gan", "--epochs", "2", "--batch-size", "8",
         "--workers", "2", "--cpus-per-worker", "1", "--ray-address", cluster.address, "--source", f"idx:{source}",
         # Until Ray marks the lost node dead (missed heartbeats, seconds), a restarted group can still be handed
         # actors there and fail once more: a node loss may take more than one restart.
         "--max-failures", "3", "--eval-samples", "200", "--metric-network-epochs", "1", "--run-dir", f"s3://{S3_BUCKET}/cluster/runs"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=workdir)
    try:
        deadline = time.monotonic() + 600
        while not _finished_checkpoints(s3_store, prefix + "ray/"):
            assert run.poll() is None, _ended_early(run.stdout.read())
            assert time.monotonic() < deadline, "no checkpoint of epoch 1 reached the bucket"
            time.sleep(0.5)
        (first_dir, epoch_one), = _finished_checkpoints(s3_store, prefix + "ray/").items()
        assert epoch_one["epoch"] == 1
        # The worker on the second node: the one whose process is the node's.
        before = [_read_json(s3_store, f"{first_dir}/worker-{rank}.json") for rank in (0, 1)]
        on_node = [w for w in before if w["pid"] in cluster_on_one_machine.descendants(cluster.node)]
        assert len(on_node) == 1, before
        time.sleep(2.0)  # Ray Train's controller has registered the checkpoint (it polls every 0.25 s)
        assert len(_finished_checkpoints(s3_store, prefix + "ray/")) == 1, "epoch 2 ended before the kill"
        cluster_on_one_machine.kill(cluster.node)
        cluster.start_node()  # a replacement with an empty disk, as an autoscaler would bring
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output[-5000:]

    keys = s3_keys(s3_store, prefix)
    assert any(k.startswith(prefix + "serving/gan/") and k.endswith("saved_model.pb") for k in keys)
    metrics = _read_json(s3_store, next(k for k in keys if k.startswith(prefix + "tfx/Trainer/model_run/")
                                        and k.endswith("metrics.json")))
    workers = metrics["workers"]
    # The worker group that finished: one worker on each node (the replacement, not the lost one), both resumed
    # from epoch 1's checkpoint in the bucket, with the generator's average exactly as it was saved there.
    assert len(workers) == 2 and len({w["node"] for w in workers}) == 2, workers
    assert on_node[0]["node"] not in {w["node"] for w in workers}
    assert all(w["replicas"] == 2 and w["resumed_from_epoch"] == 1 for w in workers), workers
    assert epoch_one["weight_average_digest"]
    assert {w["resumed_weight_average_digest"] for w in workers} == {epoch_one["weight_average_digest"]}
    # The lost epoch is the only one trained twice: the history keeps epoch 1 as the first group trained it.
    assert metrics["history"]["g_loss"][0] == epoch_one["history"]["g_loss"][0]
    assert len(metrics["history"]["g_loss"]) == 2
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
    version = client.get_model_version_by_alias("mnist-sample-gan", "champion")
    assert client.get_run(version.run_id).info.artifact_uri.startswith(
        f"s3://{S3_BUCKET}/cluster/runs/latentforge/mlartifacts/")


@pytest.fixture(scope="module")
def mlflow_on_the_bucket(two_nodes, s3_store):
    """An MLflow tracking server on 127.0.0.1 whose artifact store is the bucket (`--artifacts-destination s3://`):
    the registry a cluster's nodes share."""
    root = two_nodes.hidden.parent / "mlflow-server"
    root.mkdir()
    port = free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = cluster_on_one_machine.start_process([
        mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", f"s3://{S3_BUCKET}/cluster/mlflow-artifacts"], root / "server.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a loaded 2-core machine
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                cluster_on_one_machine.stop(server)
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
    yield url
    cluster_on_one_machine.stop(server)


def _digits_npz(path, count):
    """The bundled sample's first `count` training digits and labels as an npz source."""
    def idx(name):
        with gzip.open(os.path.join(REPO_ROOT, "data", "mnist-sample", name)) as f:
            data = f.read()
        dims = data[3]
        shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
        return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)
    np.savez(path, x=idx("train-images-idx3-ubyte.gz")[:count], y=idx("train-labels-idx1-ubyte.gz")[:count])


def test_submit_from_a_directory_the_cluster_cannot_see_then_serve_the_champion_on_it(
        two_nodes, s3_store, mlflow_on_the_bucket):
    cluster = two_nodes
    # The client: its own mount namespace, a private tmpfs holding a copy of the project and a dataset nobody
    # else has (moved in from a staging file, so no other copy remains). The job gets both only through the
    # working_dir Ray uploads; a relative --source resolves inside it.
    staged = cluster.hidden.parent / "client-digits.npz"
    _digits_npz(staged, 1200)
    client = cluster.hidden.parent / "client"
    client.mkdir()
    excludes = " ".join(f"--exclude={name}" for name in (".venv", ".git", "runs", "__pycache__", ".pytest_cache"))
    submit = shlex.join([sys.executable, "-m", "pipelines.cli", "submit", "--address", cluster.dashboard, "--",
                         "run", "--model", "stacked_ae", "--epochs", "1", "--source", "npz:data/client-digits.npz",
                         "--run-dir", f"s3://{S3_BUCKET}/submitted/runs", "--mlflow-uri", mlflow_on_the_bucket])
    script = (f"mount -t tmpfs tmpfs {client} && mkdir {client}/project && "
              f"tar -C {REPO_ROOT} {excludes} -cf - . | tar -C {client}/project -xf - && "
              f"mv {staged} {client}/project/data/client-digits.npz && cd {client}/project && exec {submit}")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=900, env=cluster.env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert "SUCCEEDED" in result.stdout and "latentforge: pipeline finished" in result.stdout
    assert not staged.exists() and list(client.iterdir()) == []  # the client's files were only ever its own

    # The job trained on the client's 1,200 digits (a split of them), pushed to the bucket, registered in MLflow
    # with the model's files in the bucket.
    keys = s3_keys(s3_store, "submitted/runs/latentforge/")
    assert any(k.startswith("submitted/runs/latentforge/serving/stacked_ae/") and k.endswith("saved_model.pb")
               for k in keys)
    # Trained by Ray Train on the job's own cluster (the driver joins it as a job, not as a client): its
    # checkpoints are in the bucket.
    assert any("/ray/stacked_ae-" in k and "/checkpoint_" in k and k.endswith("state.json") for k in keys), keys
    import mlflow
    registry = mlflow.MlflowClient(mlflow_on_the_bucket)
    version = registry.get_model_version_by_alias("client-digits-autoencoder", "champion")
    assert s3_keys(s3_store, "cluster/mlflow-artifacts/")

    # Served on the cluster: two replicas, one on each node (a node has one CPU), each loading the champion
    # from the registry and the bucket; the second node never saw the head's disk.
    port = free_port()
    serve = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "serve", "--model", "client-digits-autoencoder",
         "--mlflow-uri", mlflow_on_the_bucket, "--ray-address", cluster.address, "--replicas", "2",
         "--port", str(port), "--detach"],
        capture_output=True, text=True, timeout=600, env={**cluster.env, "PYTHONPATH": REPO_ROOT}, cwd=client)
    assert serve.returncode == 0, serve.stdout[-3000:] + serve.stderr[-3000:]
    actors = subprocess.run([RAY, "list", "actors", "--address", cluster.dashboard, "--filter", "state=ALIVE",
                             "--format", "json", "--limit", "1000"], capture_output=True, text=True, env=cluster.env)
    replicas = [a for a in json.loads(actors.stdout) if a["class_name"].startswith("ServeReplica")]
    assert len(replicas) == 2 and len({a["node_id"] for a in replicas}) == 2, replicas
    url = f"http://127.0.0.1:{port}/v1/models/client-digits-autoencoder"
    digit = np.zeros((28, 28, 1), np.float32)
    digit[6:22, 12:16] = 1.0  # a "1"
    for _ in range(4):  # Serve spreads requests over both replicas
        request = urllib.request.Request(url + ":predict", json.dumps({"instances": [digit.tolist()]}).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.headers["X-Model-Version"] == version.version
            assert np.asarray(json.loads(response.read())["predictions"]).shape == (1, 28, 28, 1)
