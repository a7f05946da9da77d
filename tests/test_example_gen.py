"""ImageExampleGen's executor (Beam, in memory): tf.Examples, split counts, eval carving, tfds builders."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from google.protobuf import message
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components.image_example_gen import executor, sources
from components.image_example_gen.component import ImageExampleGen
from tests.conftest import random_images, write_png


def run_example_gen(uri: str, out_dir: str, eval_percent: int = 10, **source_kwargs):
    """Runs the executor as TFX would after the driver; returns {split: [(image, label)]} and the artifact."""
    info = sources.probe(sources.parse_source(uri, **source_kwargs))
    component = ImageExampleGen(info, eval_percent=eval_percent)
    exec_properties = {k: proto_utils.proto_to_json(v) if isinstance(v, message.Message) else v
                       for k, v in component.exec_properties.items()}
    examples = standard_artifacts.Examples()
    examples.uri = out_dir
    executor.Executor().Do({}, {"examples": [examples]}, exec_properties)
    splits = {}
    for split in ("train", "eval", "test"):
        files = glob.glob(os.path.join(out_dir, f"Split-{split}", "*"))
        records = []
        for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator() if files else []:
            f = tf.train.Example.FromString(raw).features.feature
            shape = [f[k].int64_list.value[0] for k in ("height", "width", "channels")]
            image = np.frombuffer(f["image"].bytes_list.value[0], np.uint8).reshape(shape)
            records.append((image, f["label"].int64_list.value[0]))
        if files:
            splits[split] = records
    return splits, examples


def test_idx_source_to_examples_with_carved_eval(idx_dir, tmp_path):
    path, (x_train, _, x_test, y_test) = idx_dir
    splits, artifact = run_example_gen(f"idx:{path}", str(tmp_path / "out"), eval_percent=25)
    assert sorted(splits) == ["eval", "test", "train"]
    assert len(splits["train"]) + len(splits["eval"]) == 60 and 5 <= len(splits["eval"]) <= 25
    assert sorted(r[1] for r in splits["test"]) == sorted(y_test.tolist())
    # Every train image lands in exactly one of train / eval, unchanged.
    got = sorted(r[0].tobytes() for r in splits["train"] + splits["eval"])
    assert got == sorted(x[..., None].tobytes() for x in x_train)
    assert artifact.get_json_value_custom_property("image_shape") == [8, 8, 1]
    assert artifact.split_names == '["train", "eval", "test"]'


def test_eval_carving_is_deterministic(idx_dir, tmp_path):
    path, _ = idx_dir
    first, _ = run_example_gen(f"idx:{path}", str(tmp_path / "a"))
    second, _ = run_example_gen(f"idx:{path}", str(tmp_path / "b"))
    assert [r[0].tobytes() for r in first["eval"]] and sorted(r[0].tobytes() for r in first["eval"]) == sorted(
        r[0].tobytes() for r in second["eval"])


def test_folder_source_to_examples(tmp_path):
    for cls in ("a", "b", "c"):
        for i in range(10):
            write_png(str(tmp_path / "src" / cls / f"{i}.png"), random_images(1, (5, 5), seed=i)[0][..., None])
    splits, _ = run_example_gen(f"folder:{tmp_path / 'src'}", str(tmp_path / "out"), eval_percent=20)
    assert "test" not in splits and len(splits["train"]) + len(splits["eval"]) == 30
    assert {r[0].shape for r in splits["train"]} == {(5, 5, 1)}


def test_npz_source_to_examples(tmp_path):
    x = random_images(40, (3, 3))
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(40) % 2, x_test=x[:7], y_test=np.ones(7, int))
    splits, _ = run_example_gen(f"npz:{tmp_path / 'd.npz'}", str(tmp_path / "out"))
    assert len(splits["test"]) == 7 and {r[1] for r in splits["test"]} == {1}


class LatentforgeTinyDigits(tfds.core.GeneratorBasedBuilder):
    """A TFDS builder with no downloads, standing in for tfds:mnist offline."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(6, 6, 1)), "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30, 0), "test": self._generate_examples(9, 1)}

    def _generate_examples(self, n, seed):
        images = random_images(n, (6, 6, 1), seed=seed)
        for i in range(n):
            yield i, {"image": images[i], "label": i % 3}


def test_tfds_source_to_examples(tmp_path):
    data_dir = str(tmp_path / "tfds")
    LatentforgeTinyDigits(data_dir=data_dir).download_and_prepare()
    splits, _ = run_example_gen("tfds:latentforge_tiny_digits", str(tmp_path / "out"), data_dir=data_dir)
    assert len(splits["test"]) == 9 and len(splits["train"]) + len(splits["eval"]) == 30
    assert splits["test"][0][0].shape == (6, 6, 1) and {r[1] for r in splits["test"]} == {0, 1, 2}
    # Read without its labels: the same images, every label -1, and no classes on the artifact.
    unlabelled, artifact = run_example_gen("tfds:latentforge_tiny_digits", str(tmp_path / "unlabelled"),
                                           data_dir=data_dir, ignore_labels=True)
    assert {r[1] for split in unlabelled.values() for r in split} == {-1}
    assert sorted(r[0].tobytes() for r in unlabelled["test"]) == sorted(r[0].tobytes() for r in splits["test"])
    assert artifact.get_json_value_custom_property("class_names") == []


def test_a_flat_folder_to_unlabelled_examples(tmp_path):
    for i in range(20):
        write_png(str(tmp_path / "src" / f"{i}.png"), random_images(1, (5, 5), seed=i)[0][..., None])
    splits, _ = run_example_gen(f"folder:{tmp_path / 'src'}", str(tmp_path / "out"), eval_percent=20)
    assert len(splits["train"]) + len(splits["eval"]) == 20 and {r[1] for r in splits["train"]} == {-1}


def test_corrupt_file_inside_beam_keeps_the_clear_error(idx_dir, tmp_path):
    path, _ = idx_dir
    images = path / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-40])
    with pytest.raises(sources.SourceError, match="train-images-idx3-ubyte.gz"):
        run_example_gen(f"idx:{path}", str(tmp_path / "out"))


@pytest.mark.slow  # trains for more than ~20 s on 2 cores
def test_real_mnist_through_the_executor(mnist_dir, tmp_path):
    splits, _ = run_example_gen(f"idx:{mnist_dir}", str(tmp_path / "out"))
    assert len(splits["train"]) + len(splits["eval"]) == 60000 and len(splits["test"]) == 10000
    assert 5000 <= len(splits["eval"]) <= 7000
    assert {r[1] for r in splits["test"]} == set(range(10))


def test_a_split_sorted_by_class_is_written_mixed_and_whole(tmp_path):
    # 3,000 images written class by class (as many npz files and folders are): the ExampleGen writes every one,
    # in an order mixed well beyond the first class's block, the same order on a rerun.
    labels = np.repeat(np.arange(3), 1000)
    images = random_images(3000, seed=7)
    np.savez(tmp_path / "sorted.npz", x=images, y=labels)
    first, _ = run_example_gen(f"npz:{tmp_path / 'sorted.npz'}", str(tmp_path / "a"))
    again, _ = run_example_gen(f"npz:{tmp_path / 'sorted.npz'}", str(tmp_path / "b"))
    written = first["train"] + first["eval"]
    assert sorted(r[0].tobytes() for r in written) == sorted(x[..., None].tobytes() for x in images)
    head = [r[1] for r in first["train"][:300]]
    assert all(head.count(k) > 50 for k in range(3)), np.bincount(head)
    assert [r[0].tobytes() for r in first["train"]] == [r[0].tobytes() for r in again["train"]]


def test_the_shuffle_window_holds_a_window_and_no_more():
    # What keeps ingest memory flat: when the k-th record leaves, at most window + k have been read.
    read = []

    def records():
        for i in range(5000):
            read.append(i)
            yield np.full((8, 8, 1), i % 256, np.uint8), i

    window = 1024  # the smallest window: 1,024 images of 64 bytes
    out = []
    for k, record in enumerate(executor.shuffle_window(records(), (8, 8, 1), "train", window_bytes=64 * 1024)):
        assert len(read) <= window + k + 1
        out.append(record[1])
    assert sorted(out) == list(range(5000))
    # Mixed, not passed through: the first 1,000 out came from all over the first window.
    assert max(out[:1000]) > 1000 and sum(i < 1000 for i in out[:1000]) < 900
