"""The whole local pipeline on real data: a run, a cached rerun (checked in ML Metadata), and validation
failures that stop it before training with the anomaly named."""
import glob
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf

from backends import tracking
from pipelines import cli, metadata
from tests.conftest import SAMPLE_DIR, random_images, sample_digits

pytestmark = pytest.mark.slow
ALL_NODES = ["ImageExampleGen", "StatisticsGen", "SchemaGen", "ImageSchemaCurator", "StrictExampleValidator",
             "Transform", "Trainer", "ModelEvaluator", "MlflowRegistrar", "Pusher"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    from backends import ray_cluster
    ray_cluster.shutdown()  # a Ray another module left in this process: this run starts its own
    run_dir = str(tmp_path_factory.mktemp("runs"))
    args = ["run", "--source", f"idx:{SAMPLE_DIR}", "--model", "stacked_ae", "--epochs", "2", "--run-dir", run_dir]
    assert cli.main(args) == 0
    first = metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"), "latentforge")
    return run_dir, args, first


def test_first_run_executes_every_component_and_pushes_a_savedmodel(sample_run):
    run_dir, _, first = sample_run
    assert [n.node for n in first] == ALL_NODES
    assert {n.state for n in first} == {"COMPLETE"}
    pushed = glob.glob(os.path.join(run_dir, "latentforge", "serving", "stacked_ae", "*", "saved_model.pb"))
    assert len(pushed) == 1
    model = tf.saved_model.load(os.path.dirname(pushed[0]))
    assert set(model.signatures) >= {"serving_default", "encode", "decode", "reconstruct", "anomaly_score"}
    images = tf.random.uniform([3, 28, 28, 1])
    assert model.signatures["encode"](images=images)["codings"].shape == (3, 30)
    assert model.signatures["serving_default"](images=images)["reconstructions"].shape == (3, 28, 28, 1)
    # The anomaly threshold, calibrated on the eval split for 1 % false positives, travels in the SavedModel:
    # test digits stay under it, noise goes over.
    calibration = json.loads(model.metadata.numpy())["anomaly"]
    assert calibration["target_false_positive_rate"] == 0.01 and calibration["calibration_split"] == "eval"
    assert calibration["calibration_false_positive_rate"] <= 0.01 and calibration["calibration_examples"] >= 100
    scores = model.signatures["anomaly_score"](images=tf.constant(np.concatenate([
        sample_digits(20), np.random.default_rng(0).random((5, 28, 28, 1), np.float32)])))["scores"].numpy()
    assert np.mean(scores[:20] > calibration["threshold"]) <= 0.1 and np.all(scores[20:] > calibration["threshold"])


def _event_tags(model_run: str) -> dict:
    """TensorBoard run (the event file's folder under model_run) -> the tags written there."""
    tags = {}
    for path in glob.glob(os.path.join(model_run, "**", "events.out.tfevents.*"), recursive=True):
        run = os.path.relpath(os.path.dirname(path), model_run)
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.setdefault(run, set()).update(value.tag for value in event.summary.value)
    return tags


def _assert_tensorboard_events(model_run: str, picture: str = "reconstructions") -> None:
    tags = _event_tags(model_run)
    assert {"epoch_loss"} <= tags.get("train", set()) and {"epoch_loss"} <= tags.get("validation", set()), tags
    assert picture in tags.get("images", set()), tags


def _evaluation(node):
    with open(os.path.join(node.outputs["evaluation"], "evaluation.json")) as f:
        return json.load(f)


def test_the_model_is_evaluated_registered_in_the_embedded_mlflow_and_loads_as_champion(sample_run):
    import mlflow
    run_dir, _, first = sample_run
    nodes = {n.node: n for n in first}
    evaluated = _evaluation(nodes["ModelEvaluator"])
    assert evaluated["metrics"]["split"] == "test" and evaluated["metrics"]["test_examples"] == 500
    assert 0 < evaluated["metrics"]["test_mse"] < 0.2 and evaluated["blessing"]["blessed"] is True
    # The exported threshold on the 500 test digits: about the 1 % it was calibrated for on the eval split.
    assert evaluated["metrics"]["anomaly_target_fpr"] == 0.01
    assert evaluated["metrics"]["test_false_positive_rate"] <= 0.05
    assert os.path.exists(os.path.join(nodes["ModelEvaluator"].outputs["blessing"], "BLESSED"))
    registration = nodes["MlflowRegistrar"].properties["registration"]
    assert (registration["name"], registration["version"], registration["champion"]) == (
        "mnist-sample-autoencoder", "1", "1")
    uri = "sqlite:///" + os.path.join(run_dir, "latentforge", "mlflow.db")
    client = mlflow.MlflowClient(uri, uri)
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("latentforge").experiment_id])}
    parent = next(r for name, r in runs.items() if name.startswith("latentforge "))
    assert runs["Trainer"].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert runs["Trainer"].data.params["hidden_units"] == "[100, 30]" and runs["Trainer"].data.params["epochs"] == "2"
    assert [m.step for m in client.get_metric_history(runs["Trainer"].info.run_id, "val_loss")] == [1, 2]
    assert runs["Evaluator"].data.metrics["test_mse"] == pytest.approx(evaluated["metrics"]["test_mse"])
    assert runs["Evaluator"].data.metrics["anomaly_threshold"] == pytest.approx(
        evaluated["metrics"]["anomaly_threshold"])
    assert {"loss.png", "reconstructions.png"} <= {a.path for a in client.list_artifacts(runs["Trainer"].info.run_id)}
    # TensorBoard: the Ray chief's per-epoch scalars and images, copied into the Trainer's model_run.
    _assert_tensorboard_events(nodes["Trainer"].outputs["model_run"])
    assert "codings.png" in {a.path for a in client.list_artifacts(runs["Evaluator"].info.run_id)}
    version = client.get_model_version_by_alias("mnist-sample-autoencoder", "champion")
    assert str(version.version) == "1" and version.tags["key_metric"] == "test_mse"
    assert version.tags["tfx.trainer_execution_id"] == os.path.basename(nodes["Trainer"].outputs["model"])
    served = tracking.load_model(tracking.TrackingConfig(uri, "latentforge"), "models:/mnist-sample-autoencoder@champion")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # MLflow's global URI does not leak into the next run
    images = np.random.default_rng(0).random((3, 28, 28, 1), np.float32)
    pushed = glob.glob(os.path.join(run_dir, "latentforge", "serving", "stacked_ae", "*", "saved_model.pb"))[0]
    expected = tf.saved_model.load(os.path.dirname(pushed)).signatures["reconstruct"](images=images)
    np.testing.assert_allclose(served.predict(images), expected["reconstructions"].numpy(), atol=1e-6)


def test_the_trainer_ran_on_ray_and_kept_its_checkpoints_and_history(sample_run):
    run_dir, _, first = sample_run
    trainer = next(n for n in first if n.node == "Trainer")
    with open(os.path.join(trainer.outputs["model_run"], "metrics.json")) as f:
        metrics = json.load(f)
    assert [w["replicas"] for w in metrics["workers"]] == [1]
    assert len(metrics["history"]["loss"]) == 2 and len(metrics["history"]["val_loss"]) == 2
    assert metrics["ray_run"].startswith(os.path.join(run_dir, "latentforge", "ray"))
    assert len(glob.glob(os.path.join(metrics["ray_run"], "checkpoint_*", "state.json"))) == 2  # one per epoch
    # The Model artifact keeps the training state a later Trainer (a classifier) rebuilds from.
    with open(os.path.join(trainer.outputs["model"], "keras-state", "state.json")) as f:
        assert json.load(f)["epoch"] == 2


def test_the_in_process_trainer_leaves_the_same_outputs(sample_run):
    """--trainer in-process: TFX's own GenericExecutor runs the same job in the pipeline's process."""
    from trainers import job as training
    run_dir, args, _ = sample_run
    assert cli.main([*args[:-2], "--epochs", "1", "--trainer", "in-process", "--run-dir", run_dir]) == 0
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"),
                                                    "latentforge")}
    assert nodes["Transform"].state == "CACHED" and nodes["Trainer"].state == "COMPLETE"
    _assert_tensorboard_events(nodes["Trainer"].outputs["model_run"])  # written in process, into model_run
    with open(os.path.join(nodes["Trainer"].outputs["model_run"], "metrics.json")) as f:
        metrics = json.load(f)
    assert "workers" not in metrics and len(metrics["history"]["loss"]) == 1
    model, state = training.restore(os.path.join(nodes["Trainer"].outputs["model"], "keras-state"))
    assert state["epoch"] == 1 and model(tf.zeros([1, 28, 28, 1])).shape == (1, 28, 28, 1)


def test_a_classifier_fine_tunes_the_encoder_of_the_pretraining_trainer(sample_run):
    """--model classifier: a PretrainingTrainer's Model artifact is wired into the classifier's Trainer as
    base_model. With no unfrozen epochs the classifier's encoder is exactly the pretrained one."""
    from trainers import job as training
    run_dir, _, _ = sample_run
    args = ["run", "--source", f"idx:{SAMPLE_DIR}", "--model", "classifier", "--pretrain", "stacked_ae",
            "--pretrain-epochs", "3", "--epochs", "20", "--set", "unfrozen_epochs=0", "--labels-per-class", "10",
            "--trainer", "in-process", "--run-dir", run_dir]
    assert cli.main(args) == 0
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"),
                                                    "latentforge")}
    assert list(nodes)[-5:] == ["PretrainingTrainer", "Trainer", "ModelEvaluator", "MlflowRegistrar", "Pusher"]
    metrics = _evaluation(nodes["ModelEvaluator"])["metrics"]
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.sum() == 500 and metrics["test_accuracy"] == pytest.approx(np.trace(confusion) / 500)
    # It learned from its 100 labels: well above guessing the commonest test class (measured: 0.59 vs 0.13; with
    # 1 pretraining epoch and 2 head epochs, 8 steps, it stayed at 0.13 and only "above chance" could be asserted).
    commonest = confusion.sum(axis=1).max() / 500
    assert metrics["test_accuracy"] > 2 * commonest, (metrics["test_accuracy"], commonest)
    assert len(metrics["per_class_accuracy"]) == 10
    pretrained_state = os.path.join(nodes["PretrainingTrainer"].outputs["model"], "keras-state")
    classifier_state = os.path.join(nodes["Trainer"].outputs["model"], "keras-state")
    pretrained, _ = training.restore(pretrained_state)
    fine_tuned, state = training.restore(classifier_state)
    assert state["encoder_from"] == pretrained_state
    for mine, theirs in zip(fine_tuned.layers[0].get_weights(), pretrained.encoder.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    with open(os.path.join(nodes["Trainer"].outputs["model_run"], "metrics.json")) as f:
        history = json.load(f)["history"]
    assert len(history["val_accuracy"]) == 20

    pushed = glob.glob(os.path.join(run_dir, "latentforge", "serving", "classifier", "*", "saved_model.pb"))
    model = tf.saved_model.load(os.path.dirname(pushed[0]))
    out = model.signatures["classify"](images=tf.random.uniform([5, 28, 28, 1]))
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert out["classes"].shape == (5,)


def test_a_conditional_gan_trains_on_symmetric_pixels_and_labels_and_exports_generate(sample_run):
    """Same data, another family (the class-conditional DCGAN, in TFX's own Trainer): the data components come
    from the cache; Transform reruns for [-1, 1]; the labels reach the Trainer and the classes the SavedModel."""
    run_dir, _, _ = sample_run
    args = ["run", "--source", f"idx:{SAMPLE_DIR}", "--model", "dcgan_cond", "--epochs", "1", "--trainer",
            "in-process", "--set", "conv_filters=[16,32]", "--run-dir", run_dir]
    assert cli.main(args) == 0
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"),
                                                    "latentforge")}
    assert nodes["ImageExampleGen"].state == "CACHED" and nodes["Transform"].state == "COMPLETE"
    transformed = glob.glob(os.path.join(nodes["Transform"].outputs["transformed_examples"], "Split-train", "*"))
    record = next(iter(tf.data.TFRecordDataset(transformed, compression_type="GZIP")))
    pixels = tf.train.Example.FromString(record.numpy()).features.feature["image"].float_list.value
    assert min(pixels) == -1.0 and max(pixels) <= 1.0
    pushed = glob.glob(os.path.join(run_dir, "latentforge", "serving", "dcgan_cond", "*", "saved_model.pb"))
    model = tf.saved_model.load(os.path.dirname(pushed[0]))
    metadata_json = json.loads(model.metadata.numpy().decode())
    assert metadata_json["num_classes"] == 10 and metadata_json["class_names"] == [str(k) for k in range(10)]
    images = model.signatures["generate"](n=tf.constant(4), seed=tf.constant(1),
                                          labels=tf.constant([7]))["images"].numpy()
    assert images.shape == (4, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
    # Generative: a metric network was trained on the labelled data; FID, KID and mode coverage on 1,000 samples,
    # and, conditional, how often it sees the asked class and each class's FID against its real images.
    assert nodes["MetricNetworkTrainer"].state == "COMPLETE"
    with open(os.path.join(nodes["MetricNetworkTrainer"].outputs["evaluation"], "evaluation.json")) as f:
        network = json.load(f)
    assert network["test_accuracy"] > 0.8 and network["fid_floor"] > 0
    metrics = _evaluation(nodes["ModelEvaluator"])["metrics"]
    assert metrics["samples"] == 1000 and metrics["fid"] > network["fid_floor"]
    assert 0 <= metrics["mode_entropy"] <= metrics["mode_entropy_max"] and metrics["mode_kl"] >= 0
    # Every class was asked for, equally often (a class never asked would have no accuracy: NaN), so the overall
    # share is the mean of the per-class ones. Whether the generator draws the class is test_conditional_gan's:
    # one epoch of this tiny DCGAN on 2,000 digits still draws one digit whatever it is asked.
    per_class = metrics["per_class_conditional_accuracy"]
    assert len(per_class) == 10 and all(0 <= a <= 1 for a in per_class)
    assert metrics["conditional_accuracy"] == pytest.approx(np.mean(per_class))
    assert len(metrics["per_class_fid"]) == 10 and metrics["mean_class_fid"] > 0
    assert os.path.exists(os.path.join(nodes["ModelEvaluator"].outputs["evaluation"], "modes.png"))
    trainer_pictures = os.listdir(nodes["Trainer"].outputs["model_run"])
    assert "classes.png" in trainer_pictures, trainer_pictures


def test_the_metric_network_is_trained_once_per_dataset_and_reused_from_the_cache(sample_run):
    """After the conditional GAN's run, a VAE on the same data reuses the metric network; MLflow registers it
    once."""
    import mlflow
    run_dir, _, _ = sample_run
    args = ["run", "--source", f"idx:{SAMPLE_DIR}", "--model", "vae", "--epochs", "1", "--eval-samples", "300",
            "--trainer", "in-process", "--run-dir", run_dir]
    assert cli.main(args) == 0
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"),
                                                    "latentforge")}
    assert nodes["MetricNetworkTrainer"].state == "CACHED"
    metrics = _evaluation(nodes["ModelEvaluator"])["metrics"]
    assert metrics["test_neg_elbo"] > metrics["test_kl"] > 0 and metrics["samples"] == 300 and metrics["fid"] > 0
    uri = "sqlite:///" + os.path.join(run_dir, "latentforge", "mlflow.db")
    client = mlflow.MlflowClient(uri, uri)
    assert len(client.search_model_versions("name = 'mnist-sample-metric-network'")) == 1
    assert str(client.get_model_version_by_alias("mnist-sample-vae", "champion").version) == "1"


def test_transform_writes_every_split_of_the_sample(sample_run):
    run_dir, _, first = sample_run
    transform = next(n for n in first if n.node == "Transform")
    examples_uri = transform.outputs["transformed_examples"]
    counts = {}
    for split in ("train", "eval", "test"):
        files = glob.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
        counts[split] = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    assert counts["train"] + counts["eval"] == 2000 and counts["test"] == 500 and 150 <= counts["eval"] <= 250


def test_second_run_is_served_from_the_tfx_cache_and_starts_no_ray(sample_run):
    import ray
    from backends import ray_cluster
    run_dir, args, first = sample_run
    ray_cluster.shutdown()  # the first run's local Ray: the rerun must not need one
    assert cli.main(args) == 0
    assert not ray.is_initialized() and not ray_cluster.local_ray_running()
    second = metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"), "latentforge")
    assert [n.node for n in second] == ALL_NODES
    assert {n.state for n in second} == {"CACHED"}, [(n.node, n.state) for n in second]
    # Cached executions point at the first run's artifacts: nothing was recomputed.
    assert [n.outputs for n in second] == [n.outputs for n in first]
    # One summary line per run, for a scheduler's logs: what ran, what was cached, the scores, the version.
    with open(os.path.join(run_dir, "latentforge", "runs.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert records[0]["status"] == "ok" and records[0]["exit_code"] == 0 and records[0]["ran"] == ALL_NODES
    assert records[0]["registered"] == "mnist-sample-autoencoder/1" and records[0]["champion"] is True
    assert 0 < records[0]["metrics"]["test_mse"] < 0.2 and records[0]["pushed"]
    assert records[-1]["cached"] == ALL_NODES and records[-1]["ran"] == [] and records[-1]["status"] == "ok"
    assert records[0]["started_ray"] is True and records[-1]["started_ray"] is False


def _npz(path, x_train, y_train, x_test, y_test):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def _run_expecting_validation_failure(capsys, run_dir, source, *extra):
    code = cli.main(["run", "--source", source, "--run-dir", run_dir, "--epochs", "1", *extra])
    out, err = capsys.readouterr()
    summary = json.loads(out.split("latentforge: summary ", 1)[1].splitlines()[0])
    assert summary["status"] == "failed" and summary["exit_code"] == cli.EXIT_DATA_INVALID
    nodes = metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"), "latentforge")
    assert code == cli.EXIT_DATA_INVALID, err
    assert "Transform" not in [n.node for n in nodes] and "Trainer" not in [n.node for n in nodes]
    return err


def test_a_folder_dataset_s_class_names_reach_the_evaluation_mlflow_and_the_savedmodel(tmp_path):
    """Class folders named as a user names them (CIFAR's airplane, automobile...): the names, not 0..K-1, are
    what evaluation.json, the Evaluator's MLflow run and the SavedModel's metadata carry (the plots' legends and
    ticks: tests/test_figures.py)."""
    import mlflow
    from tests.conftest import sample_labels, write_png
    names = ["airplane", "automobile", "bird"]
    digits, labels = (sample_digits(900) * 255).astype(np.uint8), sample_labels(900)
    for split, (start, stop) in (("train", (0, 700)), ("test", (700, 900))):
        for i in range(start, stop):
            if labels[i] < len(names):
                write_png(str(tmp_path / "src" / split / names[labels[i]] / f"{i}.png"), digits[i])
    run_dir = str(tmp_path / "runs")
    assert cli.main(["run", "--source", f"folder:{tmp_path / 'src'}", "--model", "stacked_ae", "--epochs", "1",
                     "--trainer", "in-process", "--run-dir", run_dir]) == 0
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"),
                                                    "latentforge")}
    evaluation_dir = nodes["ModelEvaluator"].outputs["evaluation"]
    assert _evaluation(nodes["ModelEvaluator"])["class_names"] == names
    assert os.path.exists(os.path.join(evaluation_dir, "codings.png"))
    saved = tf.saved_model.load(glob.glob(os.path.join(run_dir, "latentforge", "serving", "stacked_ae", "*"))[0])
    assert json.loads(saved.metadata.numpy())["class_names"] == names
    uri = "sqlite:///" + os.path.join(run_dir, "latentforge", "mlflow.db")
    client = mlflow.MlflowClient(uri, uri)
    evaluator = next(r for r in client.search_runs([client.get_experiment_by_name("latentforge").experiment_id])
                     if r.info.run_name == "Evaluator")
    assert json.loads(evaluator.data.tags["class_names"]) == names


def test_the_beam_components_run_on_the_multi_processing_direct_runner(sample_run, tmp_path, monkeypatch):
    """--beam-arg reaches the components: ExampleGen, StatisticsGen and Transform run on Beam's DirectRunner with
    2 worker processes (docs/operations.md's recipe) and write what the in-memory runner wrote."""
    from tfx.utils import dependency_utils
    build_ephemeral_package = dependency_utils.build_ephemeral_package

    def package_into_tmp_path():
        # Beam options make TFX package itself per Beam component (<temp dir>/build/tfx/dist/*.tar.gz beside a
        # 50-MB copy of TFX) and leave it there: keep the package, remove the copy.
        sdist = pathlib.Path(build_ephemeral_package())
        kept = shutil.copy(sdist, tmp_path)
        shutil.rmtree(sdist.parents[3])
        return kept
    monkeypatch.setattr(dependency_utils, "build_ephemeral_package", package_into_tmp_path)
    run_dir, _, first = sample_run
    args = ["run", "--source", f"idx:{SAMPLE_DIR}", "--model", "stacked_ae", "--epochs", "1", "--trainer",
            "in-process", "--beam-arg=--direct_running_mode=multi_processing", "--beam-arg=--direct_num_workers=2",
            "--run-dir", str(tmp_path)]
    assert cli.main(args) == 0
    nodes = {n.node: n for n in metadata.latest_run(str(tmp_path / "latentforge" / "metadata.sqlite"),
                                                    "latentforge")}
    assert {n.state for n in nodes.values()} == {"COMPLETE"}

    def split_sizes(examples_uri):
        return {split: sum(1 for _ in tf.data.TFRecordDataset(
            glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")), compression_type="GZIP"))
            for split in ("train", "eval", "test")}
    in_memory = {n.node: n for n in first}
    for node in ("ImageExampleGen", "Transform"):
        key = "examples" if node == "ImageExampleGen" else "transformed_examples"
        assert split_sizes(nodes[node].outputs[key]) == split_sizes(in_memory[node].outputs[key])


def test_labels_outside_the_schema_stop_the_pipeline(tmp_path, capsys):
    x = random_images(300, (8, 8), seed=5)
    source = _npz(tmp_path / "d.npz", x, np.arange(300) % 3, x[:30], np.arange(30) % 3 + 4)
    err = _run_expecting_validation_failure(capsys, str(tmp_path / "runs"), source)
    assert "split 'test', feature 'label'" in err and "Out-of-range" in err and "Traceback" not in err


def test_empty_split_stops_the_pipeline(tmp_path, capsys):
    x = random_images(300, (8, 8), seed=5)
    source = _npz(tmp_path / "d.npz", x, np.arange(300) % 3, x[:0], np.arange(0))
    err = _run_expecting_validation_failure(capsys, str(tmp_path / "runs"), source)
    assert "split 'test'" in err and "no examples" in err


def test_wrong_image_size_against_a_given_schema(sample_run, tmp_path, capsys):
    run_dir, _, first = sample_run
    curated = next(n for n in first if n.node == "ImageSchemaCurator").outputs["curated_schema"]
    schema = os.path.join(curated, "schema.pbtxt")
    x = random_images(300, (8, 8), seed=5)
    source = _npz(tmp_path / "d.npz", x, np.arange(300) % 10, x[:30], np.arange(30) % 10)
    err = _run_expecting_validation_failure(capsys, str(tmp_path / "runs"), source, "--schema", schema)
    assert "feature 'height'" in err and "feature 'width'" in err and "Unexpectedly small value: 8" in err


def _tree_digest(directory):
    import hashlib
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(directory)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()


def _registered_checkpoint(run):
    """The checkpoint Ray's controller has recorded for a Ray run directory (what a resumed run is handed), or
    None. A checkpoint's files can be in storage before the controller records it: a run killed in between
    restarts from scratch, rightly, so the test waits for the record."""
    try:
        with open(os.path.join(run, "checkpoint_manager_snapshot.json")) as f:
            latest = json.load(f).get("latest_checkpoint_result")
    except (OSError, ValueError):  # not written yet, or being written
        return None
    return os.path.join(run, latest["checkpoint_dir_name"]) if latest else None


def test_a_runner_killed_during_training_is_resumed_by_the_rerun(sample_run):
    """SIGKILL the `latentforge run` process (by its pid) once Ray has recorded the Trainer's first checkpoint. The
    same command again: the data components come from the TFX cache, the Trainer resumes from the killed run's last
    checkpoint, and the first run's registered model and artifacts are untouched."""
    import mlflow
    import signal
    import subprocess
    import sys
    import time
    run_dir, args, first = sample_run
    root = os.path.join(run_dir, "latentforge")
    nodes = {n.node: n for n in first}
    before = {key: _tree_digest(nodes[node].outputs[key]) for node, key in
              (("Trainer", "model"), ("Transform", "transformed_examples"), ("Pusher", "pushed_model"))}
    uri = "sqlite:///" + os.path.join(root, "mlflow.db")
    versions_before = {v.version: v.source for v in
                       mlflow.MlflowClient(uri, uri).search_model_versions("name = 'mnist-sample-autoencoder'")}
    rayed = set(glob.glob(os.path.join(root, "ray", "*")))
    # 16 epochs of ~0.4 s after the first: time for Ray's controller to record a checkpoint (it collects reports
    # every 0.25 s) well before the run ends.
    command = [sys.executable, "-m", "pipelines.cli", *args[:-2], "--epochs", "16", "--set", "hidden_units=[64,16]",
               "--run-dir", run_dir]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    checkpoints = []
    while time.monotonic() < deadline and process.poll() is None and not checkpoints:
        checkpoints = [c for c in map(_registered_checkpoint, set(glob.glob(os.path.join(root, "ray", "*"))) - rayed)
                       if c]
        time.sleep(0.2)
    assert checkpoints and process.poll() is None, "Ray recorded no checkpoint of the Trainer before the run ended"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_run = os.path.dirname(checkpoints[0])
    assert not os.path.exists(os.path.join(killed_run, "latentforge-complete.json"))

    assert cli.main([*args[:-2], "--epochs", "16", "--set", "hidden_units=[64,16]", "--run-dir", run_dir]) == 0
    rerun = {n.node: n for n in metadata.latest_run(os.path.join(root, "metadata.sqlite"), "latentforge")}
    assert all(rerun[n].state == "CACHED" for n in ALL_NODES[:6]), [(n, rerun[n].state) for n in ALL_NODES[:6]]
    assert rerun["Trainer"].state == "COMPLETE"
    with open(os.path.join(rerun["Trainer"].outputs["model_run"], "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["ray_run"] == killed_run  # the killed run, resumed, not a new one
    assert metrics["workers"][0]["resumed_from_epoch"] >= 1 and len(metrics["history"]["loss"]) == 16
    # Nothing of the earlier run changed; its registered version is still there, still loadable.
    assert {key: _tree_digest(nodes[node].outputs[key]) for node, key in
            (("Trainer", "model"), ("Transform", "transformed_examples"), ("Pusher", "pushed_model"))} == before
    client = mlflow.MlflowClient(uri, uri)
    versions = {v.version: v.source for v in client.search_model_versions("name = 'mnist-sample-autoencoder'")}
    assert {k: versions[k] for k in versions_before} == versions_before and len(versions) == len(versions_before) + 1
    model = tracking.load_model(tracking.TrackingConfig(uri, "latentforge"), "models:/mnist-sample-autoencoder/1")
    assert model.predict(np.zeros((1, 28, 28, 1), np.float32)).shape == (1, 28, 28, 1)


def test_two_runs_started_together_on_one_root_run_one_after_the_other(sample_run):
    """Two identical `latentforge run --if-busy wait` started at the same moment: one takes the root's lock and
    trains; the other waits for it, then finds everything in the TFX cache. One summary line each, in order."""
    import subprocess
    import sys
    run_dir, args, _ = sample_run
    root = os.path.join(run_dir, "latentforge")
    with open(os.path.join(root, "runs.jsonl")) as f:
        logged = len(f.readlines())
    command = [sys.executable, "-m", "pipelines.cli", *args[:-2], "--epochs", "1", "--trainer", "in-process",
               "--set", "hidden_units=[32,8]", "--run-dir", run_dir, "--if-busy", "wait"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [o[1][-2000:] for o in outputs]
    waited = [i for i, (_, err) in enumerate(outputs) if "waiting for it" in err]
    assert len(waited) == 1
    with open(os.path.join(root, "runs.jsonl")) as f:
        records = [json.loads(line) for line in f][logged:]
    assert len(records) == 2 and [r["status"] for r in records] == ["ok", "ok"]
    assert "Trainer" in records[0]["ran"]  # the first trained ...
    assert records[1]["ran"] == [] and "Trainer" in records[1]["cached"]  # ... the one that waited reused it
    assert records[1]["time"] >= records[0]["time"]


def test_gc_deletes_only_runs_that_no_kept_run_and_no_registered_version_needs(sample_run, capsys):
    """A user deletes registered version 2 (the in-process run's model). `gc --keep 1` then collects that run: its
    Trainer's outputs leave the disk and are DELETED in ML Metadata, so the same command trains again instead of
    reusing a hole from the cache. Runs behind registered versions keep everything."""
    import mlflow
    from ml_metadata.proto import metadata_store_pb2
    run_dir, args, first = sample_run
    root = os.path.join(run_dir, "latentforge")
    uri = "sqlite:///" + os.path.join(root, "mlflow.db")
    client = mlflow.MlflowClient(uri, uri)
    name = "mnist-sample-autoencoder"
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
    dropped, kept = versions["2"], versions["1"]
    client.delete_model_version(name, "2")

    assert cli.main(["gc", "--keep", "1", "--run-dir", run_dir, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete" in out and dropped.tags["tfx.model_uri"] in out
    assert os.path.exists(dropped.tags["tfx.model_uri"])  # a dry run deletes nothing

    assert cli.main(["gc", "--keep", "1", "--run-dir", run_dir]) == 0
    assert "deleted" in capsys.readouterr().out
    assert not os.path.exists(dropped.tags["tfx.model_uri"])
    for version in versions.values():  # everything a registered version came from is still there
        if version.version != dropped.version:
            assert os.path.exists(version.tags["tfx.model_uri"]), version.version
    assert os.path.exists(kept.tags["tfx.model_uri"])
    assert all(os.path.exists(uri) for n in first for uri in n.outputs.values())  # the first run: all there
    store = metadata.open_store(os.path.join(root, "metadata.sqlite"))
    gone = store.get_artifacts_by_uri(dropped.tags["tfx.model_uri"])
    assert gone and all(a.state == metadata_store_pb2.Artifact.DELETED for a in gone)
    deleted_runs = client.search_runs([client.get_experiment_by_name("latentforge").experiment_id],
                                      f"tags.`tfx.pipeline_run_id` = '{dropped.tags['tfx.pipeline_run_id']}'",
                                      run_view_type=mlflow.entities.ViewType.DELETED_ONLY)
    assert deleted_runs

    # The collected run's command again: the data from the cache, the Trainer trained anew (its old outputs are
    # DELETED, so TFX's cache does not offer them).
    assert cli.main([*args[:-2], "--epochs", "1", "--trainer", "in-process", "--run-dir", run_dir]) == 0
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(root, "metadata.sqlite"), "latentforge")}
    assert nodes["Transform"].state == "CACHED" and nodes["Trainer"].state == "COMPLETE"
