"""Against a real `mlflow server` started here on 127.0.0.1 (SQLite backend, temporary artifact root) and stopped
after: pipeline runs log params, metrics and pictures; every trained model becomes a new registered version;
`champion` moves to a better model and stays on a worse one; models:/NAME@champion loads and predicts."""
import glob
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from backends import tracking
from pipelines import cli, metadata
from tests.conftest import SAMPLE_DIR, free_port

pytestmark = pytest.mark.slow
NAME = "mnist-sample-autoencoder"



def _start_server(root, port):
    """(the `mlflow server` process, its URL) once /health answers; SQLite store and artifacts under `root`."""
    os.makedirs(root, exist_ok=True)
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    process = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")],
        stdout=open(root / "server.log", "a"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300  # a loaded 2-core machine
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return process, url
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(1)


def _stop_server(process, sig=signal.SIGTERM):
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    process, url = _start_server(tmp_path_factory.mktemp("mlflow-server"), free_port())
    yield url
    _stop_server(process)


def _run(run_dir, url, *extra):
    args = ["run", "--source", f"idx:{SAMPLE_DIR}", "--model", "stacked_ae", "--trainer", "in-process",
            "--mlflow-uri", url, "--run-dir", run_dir, *extra]
    assert cli.main(args) == 0
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"),
                                                    "latentforge")}
    return nodes


def test_runs_register_versions_and_champion_moves_only_to_a_better_model(mlflow_server, tmp_path):
    import mlflow
    run_dir = str(tmp_path / "runs")
    first = _run(run_dir, mlflow_server, "--epochs", "1")
    better = _run(run_dir, mlflow_server, "--epochs", "3")
    # A tiny budget: one epoch at a hundredth of the learning rate.
    worse = _run(run_dir, mlflow_server, "--epochs", "1", "--learning-rate", "1e-5")
    registrations = [n["MlflowRegistrar"].properties["registration"] for n in (first, better, worse)]
    assert [(r["version"], r["champion"]) for r in registrations] == [("1", "1"), ("2", "1"), ("3", "0")]

    client = mlflow.MlflowClient(mlflow_server, mlflow_server)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{NAME}'")}
    assert sorted(versions) == ["1", "2", "3"]  # nothing overwritten
    assert versions["3"].tags["blessed"] == "False" and versions["2"].tags["blessed"] == "True"
    mse = {v: float(versions[v].tags["key_metric_value"]) for v in versions}
    assert mse["2"] < mse["1"] and mse["3"] > mse["2"]
    with open(os.path.join(worse["ModelEvaluator"].outputs["evaluation"], "evaluation.json")) as f:
        assert "does not beat" in f.read()

    # Params, per-epoch metrics and pictures went to the server.
    trainer_run = client.get_run(versions["2"].tags["trainer_run_id"])
    assert trainer_run.data.params["epochs"] == "3"
    assert len(client.get_metric_history(trainer_run.info.run_id, "loss")) == 3
    assert {"loss.png", "reconstructions.png"} <= {a.path for a in client.list_artifacts(trainer_run.info.run_id)}
    evaluator_run = client.get_run(versions["2"].tags["evaluator_run_id"])
    assert evaluator_run.data.metrics["test_mse"] == pytest.approx(mse["2"])
    assert "codings.png" in {a.path for a in client.list_artifacts(evaluator_run.info.run_id)}
    parent = client.get_run(trainer_run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["tfx.pipeline"] == "latentforge" and parent.data.tags["dataset"] == "mnist-sample"

    # The champion loads from the registry and predicts what the blessed SavedModel computes; older versions load.
    config = tracking.TrackingConfig(mlflow_server, "latentforge")
    images = np.random.default_rng(0).random((4, 28, 28, 1), np.float32)
    champion = tracking.load_model(config, f"models:/{NAME}@champion")
    saved_model = os.path.join(better["Trainer"].outputs["model"], "Format-Serving")
    expected = tf.saved_model.load(saved_model).signatures["reconstruct"](images=images)["reconstructions"]
    np.testing.assert_allclose(champion.predict(images), expected.numpy(), atol=1e-6)
    assert tracking.load_model(config, f"models:/{NAME}/1").predict(images).shape == (4, 28, 28, 1)
    # Only blessed models were pushed for serving.
    assert len(glob.glob(os.path.join(run_dir, "latentforge", "serving", "stacked_ae", "*"))) == 2


def test_an_mlflow_server_that_does_not_answer_stops_the_run_before_any_work(tmp_path, capsys):
    start = time.time()
    code = cli.main(["run", "--mlflow-uri", f"http://127.0.0.1:{free_port()}", "--run-dir", str(tmp_path)])
    assert code == cli.EXIT_CLUSTER and time.time() - start < 30
    assert "does not answer" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(str(tmp_path), "latentforge", "metadata.sqlite"))


def test_the_server_going_away_during_training_fails_the_run_clearly_and_keeps_the_model(tmp_path, capsys):
    """The server is killed when the Trainer starts. Training needs no MLflow and finishes; the Evaluator, which
    reads the champion, fails the run with exit code 5 naming the server; the trained SavedModel stays on disk.
    When the server is back on the same store, the same command takes the model from the TFX cache and registers
    it."""
    import json
    import threading
    root, port = tmp_path / "server", free_port()
    process, url = _start_server(root, port)
    run_dir = str(tmp_path / "runs")

    def kill_when_training_starts():
        while not glob.glob(os.path.join(run_dir, "latentforge", "tfx", "Trainer", "model_run", "*")):
            time.sleep(0.1)
        _stop_server(process, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_training_starts, daemon=True)
    killer.start()
    args = ["run", "--source", f"idx:{SAMPLE_DIR}", "--model", "stacked_ae", "--trainer", "in-process",
            "--epochs", "2", "--mlflow-uri", url, "--run-dir", run_dir]
    code = cli.main(args)
    out, err = capsys.readouterr()
    killer.join(timeout=5)
    assert code == cli.EXIT_CLUSTER, err[-2000:]
    assert url in err and "does not answer" in err
    summary = json.loads(out.split("latentforge: summary ", 1)[1].splitlines()[0])
    assert summary["status"] == "failed" and summary["exit_code"] == cli.EXIT_CLUSTER
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"),
                                                    "latentforge")}
    assert nodes["Trainer"].state == "COMPLETE" and nodes["ModelEvaluator"].state == "FAILED"
    saved_model = os.path.join(nodes["Trainer"].outputs["model"], "Format-Serving")
    reconstructed = tf.saved_model.load(saved_model).signatures["reconstruct"](images=tf.zeros([2, 28, 28, 1]))
    assert reconstructed["reconstructions"].shape == (2, 28, 28, 1)  # the kept SavedModel serves

    process, url = _start_server(root, port)  # back, same store
    try:
        nodes = _run(run_dir, url, "--epochs", "2")
        assert nodes["Trainer"].state == "CACHED"
        assert nodes["MlflowRegistrar"].properties["registration"]["version"] == "1"
    finally:
        _stop_server(process)
