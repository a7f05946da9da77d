"""Few labels as a pipeline output: generated training data (SyntheticExampleGen, from a generator that saw only
the classifier's K labels per class) and the label-efficiency curve (LabelEfficiencyCurve)."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from backends import tracking
from trainers import label_efficiency
from pipelines import cli, metadata
from tests.conftest import SAMPLE_DIR


def _write_ranked(path: str, images: np.ndarray, labels: np.ndarray, ranks: np.ndarray) -> str:
    """Transform-shaped examples with the label rank the Transform gives when K is set."""
    int64 = lambda value: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for image, label, rank in zip(images, labels, ranks):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel().tolist())),
                "label": int64(label), "labeled": int64(rank < 4), "label_rank": int64(rank)})).SerializeToString())
    return path


def test_a_generator_for_k_labels_per_class_sees_only_those_labels(tmp_path):
    """No label leaks: with labels_per_class=K a conditional generator's training pairs keep the label of exactly
    the examples ranked below K (the classifier's K per class) and -1 (its unconditional path) for every other;
    images arrive in the generator's own pixel range whatever the Transform's."""
    from trainers import job as training
    labels, ranks = np.arange(60) % 3, np.arange(60) // 3  # ranks 0..19 in each class
    images = np.random.default_rng(0).uniform(size=(60, 28, 28, 1)).astype(np.float32)
    images[:, 0, 0, 0] = np.arange(60) / 100  # which example it is, after the shuffle
    path = _write_ranked(str(tmp_path / "train.gz"), images, labels, ranks)
    spec = {"image": ([28, 28, 1], "float32"), "label": ([], "int64"), "labeled": ([], "int64"),
            "label_rank": ([], "int64")}
    job = training.TrainingJob("dcgan_cond", {"num_classes": 3, "batch_size": 60}, (28, 28, 1), [path], [path], spec,
                               labels_per_class=2, data_pixel_range="unit")
    train, _ = training.datasets(job, job.make_config())
    seen_images, seen_labels = (np.concatenate(parts) for parts in zip(*((x.numpy(), y.numpy()) for x, y in train)))
    index = np.round((seen_images[:, 0, 0, 0] + 1) / 2 * 100).astype(int)
    assert sorted(index) == list(range(60))
    np.testing.assert_array_equal(seen_labels, np.where(ranks < 2, labels, -1)[index])
    assert np.sum(seen_labels >= 0) == 6 and np.bincount(seen_labels[seen_labels >= 0]).tolist() == [2, 2, 2]
    assert seen_images.min() < -0.9 and seen_images.max() > 0.9  # [0, 1] data -> the GAN's [-1, 1]
    # labeled_share: the same 6 labelled images, drawn for about half of each batch (no new label appears).
    mixed = training.TrainingJob("dcgan_cond", {"num_classes": 3, "batch_size": 20, "labeled_share": 0.5},
                                 (28, 28, 1), [path], [path], spec, labels_per_class=2, data_pixel_range="unit")
    batches = [(x.numpy(), y.numpy()) for x, y in training.datasets(mixed, mixed.make_config())[0]]
    mixed_images, mixed_labels = (np.concatenate(parts) for parts in zip(*batches))
    index = np.round((mixed_images[:, 0, 0, 0] + 1) / 2 * 100).astype(int)
    assert set(index[mixed_labels < 0]) <= set(np.flatnonzero(ranks >= 2))
    assert set(index[mixed_labels >= 0]) <= set(np.flatnonzero(ranks < 2))
    # An epoch: the batches that use up the 54 unlabelled images at half of each batch (6 of 20).
    assert len(batches) == 6 and 0.3 < np.mean(mixed_labels >= 0) < 0.7
    without_ranks = training.TrainingJob("dcgan_cond", {"num_classes": 3}, (28, 28, 1), [path], [path],
                                         {k: v for k, v in spec.items() if k != "label_rank"}, labels_per_class=2)
    with pytest.raises(ValueError, match="label_rank"):
        training.datasets(without_ranks, without_ranks.make_config())


@pytest.mark.parametrize("flags, message", [
    (["--model", "vae", "--labels-per-class", "1,5"], "label-efficiency curve of the few-label classifier"),
    (["--model", "vae", "--labels-per-class", "10,"], "label-efficiency curve of the few-label classifier"),
    (["--model", "classifier", "--augment-with", "vae"], "class-conditional model"),
    (["--model", "classifier", "--augment-with", "cvea"], "--augment-with 'cvea' is unknown"),
    (["--model", "dcgan", "--augment-with", "cvae"], "feeds the few-label classifier"),
    (["--model", "classifier", "--augment-with", "cvae", "--augment-set", "beta=-1"], "--augment-with cvae: beta"),
    (["--model", "classifier", "--augment-set", "epochs=3"], "name the generator"),
    (["--model", "classifier", "--labels-per-class", "10", "--semi-supervised", "ssgan"],
     "line of the label-efficiency curve"),
    (["--model", "ssgan", "--labels-per-class", "1,5", "--semi-supervised", "ssgan"],
     "line of the label-efficiency curve"),
    (["--model", "classifier", "--labels-per-class", "1,5", "--semi-supervised", "dcgan"],
     "not a semi-supervised model; choose one of: ssgan"),
    (["--model", "classifier", "--labels-per-class", "1,5", "--semi-supervised", "ssgn"],
     "--semi-supervised 'ssgn' is unknown"),
    (["--model", "classifier", "--labels-per-class", "1,5", "--semi-supervised", "ssgan", "--semi-supervised-set",
      "decay_share=2"], "--semi-supervised ssgan: decay_share=2"),
    (["--model", "classifier", "--semi-supervised-set", "epochs=3"], "name the model"),
])
def test_bad_few_label_requests_exit_2_before_any_work(tmp_path, capsys, flags, message):
    args = ["run", "--source", f"idx:{SAMPLE_DIR}", "--run-dir", str(tmp_path), *flags]
    assert cli.main(args) == cli.EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "latentforge" / "tfx")


def test_compiling_generated_data_for_kubeflow_is_refused_with_the_reason(tmp_path, capsys):
    args = ["compile", "--source", f"idx:{SAMPLE_DIR}", "--model", "classifier", "--labels-per-class", "10",
            "--augment-with", "cvae", "--mlflow-uri", "http://mlflow:5000", "--pipeline-root", "gs://bucket/root",
            "--out", str(tmp_path / "pipeline.json")]
    assert cli.main(args) == cli.EXIT_BAD_INPUT
    assert "one channel per input" in capsys.readouterr().err and not os.path.exists(tmp_path / "pipeline.json")


def test_labels_per_class_takes_one_k_or_a_list():
    parse = lambda text: cli.build_parser().parse_args(["run", "--labels-per-class", text]).labels_per_class
    assert parse("10") == 10 and parse("100,1,10") == [1, 10, 100]
    with pytest.raises(SystemExit):
        parse("1,x")


def _records(split_dir: str):
    spec = {"image": tf.io.FixedLenFeature([28, 28, 1], tf.float32), "label": tf.io.FixedLenFeature([], tf.int64),
            "synthetic": tf.io.FixedLenFeature([], tf.int64), "model_version": tf.io.FixedLenFeature([], tf.string)}
    files = sorted(glob.glob(os.path.join(split_dir, "*")))
    return [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


@pytest.mark.slow
def test_the_curve_with_generated_data_and_a_classifier_trained_beside_them(tmp_path):
    """`--labels-per-class 2,5 --augment-with cvae`: a generator per K, trained with K labels per class, registered,
    draws synthetic examples that carry their flag and its version; the curve has a point per K and method and
    is logged to MLflow. Then one K: the classifier's Trainer reads the same (cached) synthetic examples beside
    the real ones."""
    run_dir = str(tmp_path)
    common = ["--source", f"idx:{SAMPLE_DIR}", "--pretrain", "stacked_ae", "--pretrain-epochs", "2", "--epochs", "2",
              "--augment-with", "cvae", "--augment-set", "epochs=2", "--synthetic-per-class", "20",
              "--eval-samples", "100", "--metric-network-epochs", "1", "--trainer", "in-process", "--run-dir", run_dir]
    # The semi-supervised GAN line: a small one, one epoch per K.
    semi_supervised = ["--semi-supervised", "ssgan", "--semi-supervised-set", "epochs=1", "--semi-supervised-set",
                       "discriminator_units=[64,32]", "--semi-supervised-set", "generator_units=[64]"]
    assert cli.main(["run", "--model", "classifier", "--labels-per-class", "2,5", "--examples-per-phase", "200",
                     *semi_supervised, *common]) == 0
    store = os.path.join(run_dir, "latentforge", "metadata.sqlite")
    nodes = {n.node: n for n in metadata.latest_run(store, "latentforge")}
    assert "Trainer" not in nodes and "Pusher" not in nodes  # a curve run registers and pushes no classifier
    config = tracking.resolve(None, os.path.join(run_dir, "latentforge"), "latentforge")
    client = tracking._client(config)
    versions = {}
    for k in (2, 5):
        with open(os.path.join(nodes[f"GeneratorTrainer_{k}labels"].outputs["model_run"], "metrics.json")) as f:
            assert json.load(f)["labels_per_class"] == k
        registration = nodes[f"MlflowRegistrar_{k}labels"].properties["registration"]
        assert registration["name"] == f"mnist-sample-conditional_vae-{k}-labels-per-class"
        client.get_model_version(registration["name"], registration["version"])  # registered in MLflow
        versions[k] = f"models:/{registration['name']}/{registration['version']}"
        synthetic = nodes[f"SyntheticExampleGen_{k}labels"]
        assert synthetic.properties["examples"]["model_version"] == versions[k]
        assert synthetic.properties["examples"]["labels_per_class"] == str(k)
        records = _records(os.path.join(synthetic.outputs["examples"], "Split-train"))
        assert len(records) == 200 and not os.listdir(os.path.join(synthetic.outputs["examples"], "Split-eval"))
        assert all(int(r["synthetic"]) == 1 and r["model_version"].numpy().decode() == versions[k] for r in records)
        assert np.bincount([int(r["label"]) for r in records]).tolist() == [20] * 10
        pixels = np.stack([r["image"].numpy() for r in records])
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.std() > 0.05  # the classifier's [0, 1]

    curve_dir = nodes["LabelEfficiencyCurve"].outputs["curve"]
    with open(os.path.join(curve_dir, "curve.json")) as f:
        curve = json.load(f)
    assert curve["labels_per_class"] == [2, 5] and list(curve["accuracy"]) == [
        *label_efficiency.METHODS, "semi_supervised_gan"]
    assert all(len(v) == 2 and all(0.0 <= a <= 1.0 for a in v) for v in curve["accuracy"].values())
    # It learns: five labels per class beat two, and well above chance (0.1; measured 0.28 and 0.42).
    scratch = curve["accuracy"]["scratch"]
    assert scratch[1] > scratch[0] and scratch[1] > 0.3, curve["accuracy"]
    assert [p["labels"] for p in curve["points"]] == [20, 50]
    assert [p["semi_supervised_epochs"] for p in curve["points"]] == [1, 1]
    # Every other training image trained it unlabelled: the same train split at each K.
    assert len({p["unlabelled"] + p["labels"] for p in curve["points"]}) == 1 and curve["points"][0]["unlabelled"] > 1000
    assert [p["generator"] for p in curve["points"]] == [versions[2], versions[5]]
    assert os.path.getsize(os.path.join(curve_dir, "curve.png")) > 5000
    run = next(r for r in client.search_runs([client.get_experiment_by_name("latentforge").experiment_id])
               if r.info.run_name == "LabelEfficiencyCurve")
    history = client.get_metric_history(run.info.run_id, "test_accuracy.reused")
    assert sorted((m.step, m.value) for m in history) == list(zip([2, 5], curve["accuracy"]["reused"]))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"curve.json", "curve.png"}

    assert cli.main(["run", "--model", "classifier", "--labels-per-class", "5", *common]) == 0
    nodes = {n.node: n for n in metadata.latest_run(store, "latentforge")}
    assert {nodes[n].state for n in ("Transform", "GeneratorTrainer_5labels", "SyntheticExampleGen_5labels")} == {
        "CACHED"}
    assert nodes["Trainer"].state == "COMPLETE"
    assert sorted(nodes["Trainer"].inputs["examples"]) == sorted(
        [nodes["Transform"].outputs["transformed_examples"], nodes["SyntheticExampleGen_5labels"].outputs["examples"]])
    assert nodes["Pusher"].state == "COMPLETE"


@pytest.mark.slow  # trains for more than ~20 s on 2 cores
def test_the_same_seed_gives_the_same_point_and_another_seed_another():
    """Same seed, same answer: every phase seeds its weights and its data order (op-level seeds; CPU kernels here
    are deterministic), so a point repeats exactly; the seed is what varies it."""
    from trainers import classifier, registry
    from tests.conftest import sample_digits, sample_labels
    images, labels = sample_digits(600), sample_labels(600)
    pretrained = registry.get_model("conv_ae").build(registry.make_config("conv_ae", {"seed": 0}), (28, 28, 1))
    encoder = classifier.reusable_encoder(pretrained)
    few = np.concatenate([np.flatnonzero(labels[:500] == c)[:3] for c in range(10)])

    def point(seed):
        config = registry.make_config("classifier", {"seed": seed, "epochs": 1, "unfrozen_epochs": 1,
                                                     "batch_size": 16})
        accuracy, _ = label_efficiency.curve_point(config, encoder, (images[few], labels[few]),
                                                   (images[500:], labels[500:]), examples_per_phase=64)
        return accuracy

    first = point(0)
    assert point(0) == first
    assert point(1) != first
