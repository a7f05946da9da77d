"""The whole local pipeline on real data: a run, a cached rerun (checked in ML Metadata), and validation
failures that stop it before training with the anomaly named."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from pipelines import cli, metadata
from tests.conftest import SAMPLE_DIR, random_images

pytestmark = pytest.mark.slow
ALL_NODES = ["ImageExampleGen", "StatisticsGen", "SchemaGen", "ImageSchemaCurator", "StrictExampleValidator",
             "Transform", "Trainer", "Pusher"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
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


def test_a_gan_trains_on_symmetric_pixels_and_exports_generate(sample_run):
    """Same data, another family: the data components come from the cache; Transform reruns for [-1, 1]."""
    run_dir, _, _ = sample_run
    args = ["run", "--source", f"idx:{SAMPLE_DIR}", "--model", "gan", "--epochs", "1", "--run-dir", run_dir]
    assert cli.main(args) == 0
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"),
                                                    "latentforge")}
    assert nodes["ImageExampleGen"].state == "CACHED" and nodes["Transform"].state == "COMPLETE"
    transformed = glob.glob(os.path.join(nodes["Transform"].outputs["transformed_examples"], "Split-train", "*"))
    record = next(iter(tf.data.TFRecordDataset(transformed, compression_type="GZIP")))
    pixels = tf.train.Example.FromString(record.numpy()).features.feature["image"].float_list.value
    assert min(pixels) == -1.0 and max(pixels) <= 1.0
    pushed = glob.glob(os.path.join(run_dir, "latentforge", "serving", "gan", "*", "saved_model.pb"))
    model = tf.saved_model.load(os.path.dirname(pushed[0]))
    images = model.signatures["generate"](n=tf.constant(4), seed=tf.constant(1))["images"].numpy()
    assert images.shape == (4, 28, 28, 1) and images.min() >= 0 and images.max() <= 1


def test_transform_writes_every_split_of_the_sample(sample_run):
    run_dir, _, first = sample_run
    transform = next(n for n in first if n.node == "Transform")
    examples_uri = transform.outputs["transformed_examples"]
    counts = {}
    for split in ("train", "eval", "test"):
        files = glob.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
        counts[split] = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    assert counts["train"] + counts["eval"] == 2000 and counts["test"] == 500 and 150 <= counts["eval"] <= 250


def test_second_run_is_served_from_the_tfx_cache(sample_run):
    run_dir, args, first = sample_run
    assert cli.main(args) == 0
    second = metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"), "latentforge")
    assert [n.node for n in second] == ALL_NODES
    assert {n.state for n in second} == {"CACHED"}, [(n.node, n.state) for n in second]
    # Cached executions point at the first run's artifacts: nothing was recomputed.
    assert [n.outputs for n in second] == [n.outputs for n in first]


def _npz(path, x_train, y_train, x_test, y_test):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def _run_expecting_validation_failure(capsys, run_dir, source, *extra):
    code = cli.main(["run", "--source", source, "--run-dir", run_dir, "--epochs", "1", *extra])
    err = capsys.readouterr().err
    nodes = metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"), "latentforge")
    assert code == cli.EXIT_DATA_INVALID, err
    assert "Transform" not in [n.node for n in nodes] and "Trainer" not in [n.node for n in nodes]
    return err


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
