"""Sources: each kind probes and reads correctly; every corrupt input is one clear error naming the file."""
import gzip
import os
import time

import numpy as np
import pytest

from components.image_example_gen import sources
from tests.conftest import random_images, write_idx, write_png


def _read_all(uri):
    info = sources.probe(sources.parse_source(uri))
    return info, {s.name: list(sources.read_split(info, s.name)) for s in info.splits}


def test_idx_reads_images_labels_and_splits(idx_dir):
    path, (x_train, y_train, x_test, y_test) = idx_dir
    info, splits = _read_all(f"idx:{path}")
    assert info.image_shape == (8, 8, 1) and info.class_names == ("0", "1", "2")
    assert [s.name for s in info.splits] == ["train", "test"]
    images = np.stack([r[0] for r in splits["train"]])
    assert images.dtype == np.uint8 and images.shape == (60, 8, 8, 1)
    np.testing.assert_array_equal(images[..., 0], x_train)
    assert [r[1] for r in splits["test"]] == y_test.tolist()


def test_idx_uncompressed_files_read_the_same(tmp_path):
    x = random_images(10)
    write_idx(str(tmp_path / "train-images-idx3-ubyte"), x)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.arange(10, dtype=np.uint8) % 2)
    info, splits = _read_all(f"idx:{tmp_path}")
    assert [s.name for s in info.splits] == ["train"]
    np.testing.assert_array_equal(np.stack([r[0][..., 0] for r in splits["train"]]), x)


def test_folder_with_train_and_test_subfolders_rgb(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                write_png(str(tmp_path / split / cls / f"{i}.png"), rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    info, splits = _read_all(f"folder:{tmp_path}")
    assert info.image_shape == (6, 5, 3) and info.class_names == ("cat", "dog")
    assert len(splits["train"]) == 8 and len(splits["test"]) == 4
    assert sorted(r[1] for r in splits["test"]) == [0, 0, 1, 1]


def test_folder_without_split_subfolders_is_all_train_and_grey(tmp_path):
    image = random_images(1, (7, 7))[0]
    write_png(str(tmp_path / "a" / "x.png"), image[..., None])
    write_png(str(tmp_path / "b" / "y.png"), image[..., None])
    info, splits = _read_all(f"folder:{tmp_path}")
    assert [s.name for s in info.splits] == ["train"] and info.image_shape == (7, 7, 1)
    np.testing.assert_array_equal(splits["train"][0][0][..., 0], image)


def test_npz_plain_and_keras_layouts(tmp_path):
    x = random_images(12, (4, 4))
    np.savez(tmp_path / "plain.npz", x=x)
    info, splits = _read_all(f"npz:{tmp_path / 'plain.npz'}")
    assert info.num_classes == 0 and {r[1] for r in splits["train"]} == {-1}
    np.savez(tmp_path / "keras.npz", x_train=x, y_train=np.arange(12) % 4, x_test=x[:3], y_test=np.arange(3))
    info, splits = _read_all(f"npz:{tmp_path / 'keras.npz'}")
    assert info.num_classes == 4 and len(splits["test"]) == 3 and splits["train"][0][0].shape == (4, 4, 1)


def test_real_mnist_counts_labels_and_pixel_sums(mnist_dir):
    info, splits = _read_all(f"idx:{mnist_dir}")
    assert info.image_shape == (28, 28, 1) and info.num_classes == 10
    assert len(splits["train"]) == 60000 and len(splits["test"]) == 10000
    for split, prefix in (("train", "train"), ("test", "t10k")):
        with gzip.open(os.path.join(mnist_dir, f"{prefix}-images-idx3-ubyte.gz")) as f:
            expected = np.frombuffer(f.read(), np.uint8, offset=16)
        assert sum(int(r[0].sum()) for r in splits[split]) == int(expected.sum(dtype=np.int64))
        assert {r[1] for r in splits[split]} == set(range(10))


# ------------------------------------------------------------------------------ corrupt inputs


def _error(uri, read=True) -> str:
    with pytest.raises(sources.SourceError) as raised:
        _read_all(uri) if read else sources.probe(sources.parse_source(uri))
    return str(raised.value)


def test_truncated_gzip_names_the_file(idx_dir):
    path, _ = idx_dir
    images = path / "train-images-idx3-ubyte.gz"
    data = images.read_bytes()
    images.write_bytes(data[: len(data) // 2])
    message = _error(f"idx:{path}")
    assert str(images) in message and "truncated" in message


def test_wrong_idx_magic_names_the_file(idx_dir):
    path, _ = idx_dir
    # Labels written where the images should be: a 1-D IDX file.
    write_idx(str(path / "train-images-idx3-ubyte.gz"), np.zeros(60, np.uint8))
    message = _error(f"idx:{path}", read=False)
    assert "train-images-idx3-ubyte.gz" in message and "magic 0x00000801" in message


def test_mismatched_image_and_label_counts(idx_dir):
    path, _ = idx_dir
    write_idx(str(path / "train-labels-idx1-ubyte.gz"), np.zeros(59, np.uint8))
    message = _error(f"idx:{path}", read=False)
    assert "60 images" in message and "59 labels" in message and "train-labels-idx1-ubyte.gz" in message


def test_folder_with_mixed_image_sizes_names_the_odd_file(tmp_path):
    write_png(str(tmp_path / "a" / "1.png"), random_images(1, (8, 8))[0][..., None])
    write_png(str(tmp_path / "b" / "2.png"), random_images(1, (9, 8))[0][..., None])
    message = _error(f"folder:{tmp_path}")
    assert os.path.join("b", "2.png") in message and "9x8" in message and "8x8" in message


def test_unreadable_image_names_the_file(tmp_path):
    write_png(str(tmp_path / "a" / "1.png"), random_images(1, (8, 8))[0][..., None])
    (tmp_path / "a" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    message = _error(f"folder:{tmp_path}")
    assert os.path.join("a", "2.png") in message and "cannot decode" in message


@pytest.mark.parametrize("uri, expected", [
    ("mnist", "not of the form KIND:LOCATION"),
    ("csv:/tmp/x", "not of the form KIND:LOCATION"),
    ("idx:/no/such/dir", "no such directory"),
    ("npz:/no/such/file.npz", "no such file"),
])
def test_bad_source_flags(uri, expected):
    assert expected in _error(uri, read=False)


def test_tfds_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    # Offline, whatever this machine's network: no name resolves (every library's connection starts there).
    import socket
    resolve = socket.getaddrinfo

    def offline(host, *args, **kwargs):
        if host not in ("localhost", "127.0.0.1", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (offline: the test)")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    assert not sources.tfds._reachable("storage.googleapis.com")  # pylint: disable=protected-access
    start = time.time()
    with pytest.raises(sources.SourceError) as raised:
        sources.probe(sources.parse_source("tfds:mnist", data_dir=str(tmp_path)))
    assert time.time() - start < 20
    message = str(raised.value)
    assert "--manual-dir" in message and "train-images-idx3-ubyte.gz" in message and "idx:" in message


# ------------------------------------------------------------------------------ streamed reads


def test_idx_images_stream_in_chunks_with_the_whole_files_content(idx_dir):
    path, (x_train, _, _, _) = idx_dir
    chunks = list(sources.iter_idx_chunks(str(path / "train-images-idx3-ubyte.gz"), 3, chunk_rows=7))
    assert [len(c) for c in chunks] == [7] * 8 + [4]
    np.testing.assert_array_equal(np.concatenate(chunks), x_train)


def test_idx_file_longer_than_its_header_names_the_file(idx_dir):
    path, _ = idx_dir
    images = path / "train-images-idx3-ubyte.gz"
    with gzip.open(images) as f:
        data = f.read()
    with gzip.open(images, "wb") as f:
        f.write(data + b"\0" * 64)
    message = _error(f"idx:{path}")
    assert str(images) in message and "holds more" in message


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_images_stream_in_chunks_with_the_arrays_content(tmp_path, save):
    x = random_images(50, (5, 4))
    save(tmp_path / "d.npz", x_train=x, y_train=np.arange(50) % 3)
    chunks = list(sources.npz._npz_array_chunks(str(tmp_path / "d.npz"), "x_train", chunk_rows=16))  # pylint: disable=protected-access
    assert [len(c) for c in chunks] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), x)
    _, splits = _read_all(f"npz:{tmp_path / 'd.npz'}")
    np.testing.assert_array_equal(np.stack([r[0][..., 0] for r in splits["train"]]), x)
    assert [r[1] for r in splits["train"]] == (np.arange(50) % 3).tolist()


def test_npz_wider_integer_pixels_are_read_as_uint8_and_out_of_range_ones_refused(tmp_path):
    x = random_images(6, (3, 3)).astype(np.int32)
    np.savez(tmp_path / "ok.npz", x=x)
    _, splits = _read_all(f"npz:{tmp_path / 'ok.npz'}")
    assert splits["train"][0][0].dtype == np.uint8
    np.testing.assert_array_equal(np.stack([r[0][..., 0] for r in splits["train"]]), x)
    x[3, 1, 1] = 300
    np.savez(tmp_path / "bad.npz", x=x)
    assert "values outside 0..255" in _error(f"npz:{tmp_path / 'bad.npz'}", read=False)
    # Changed after the probe: the read checks again rather than wrapping 300 to 44.
    info = sources.probe(sources.parse_source(f"npz:{tmp_path / 'ok.npz'}"))
    np.savez(tmp_path / "ok.npz", x=x)
    with pytest.raises(sources.SourceError, match="values outside 0..255"):
        list(sources.read_split(info, "train"))


def test_npz_truncated_archive_names_the_file(tmp_path):
    np.savez(tmp_path / "d.npz", x=random_images(40, (8, 8)))
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(data[: len(data) // 2])
    message = _error(f"npz:{tmp_path / 'd.npz'}")
    assert "d.npz" in message


def test_npz_fortran_ordered_images_read_whole_with_the_same_content(tmp_path):
    x = np.asfortranarray(random_images(20, (5, 4)))
    np.savez(tmp_path / "f.npz", x=x)
    chunks = list(sources.npz._npz_array_chunks(str(tmp_path / "f.npz"), "x", chunk_rows=8))  # pylint: disable=protected-access
    assert [len(c) for c in chunks] == [8, 8, 4]
    _, splits = _read_all(f"npz:{tmp_path / 'f.npz'}")
    np.testing.assert_array_equal(np.stack([r[0][..., 0] for r in splits["train"]]), x)


# ------------------------------------------------------------------------------ unlabelled sources

def _pngs(directory, count, shape=(6, 6, 3), seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
    for i, image in enumerate(images):
        write_png(str(directory / f"{i:03d}.png"), image)
    return images


def test_a_folder_with_its_images_directly_in_it_is_unlabelled(tmp_path):
    images = _pngs(tmp_path, 5)
    info, splits = _read_all(f"folder:{tmp_path}")
    assert info.class_names == () and info.image_shape == (6, 6, 3) and [s.name for s in info.splits] == ["train"]
    assert [r[1] for r in splits["train"]] == [-1] * 5
    np.testing.assert_array_equal(np.stack([r[0] for r in splits["train"]]), images)


def test_unlabelled_train_and_test_folders(tmp_path):
    _pngs(tmp_path / "train", 4)
    _pngs(tmp_path / "test", 2, seed=1)
    info, splits = _read_all(f"folder:{tmp_path}")
    assert info.class_names == () and {len(splits["train"]), len(splits["test"])} == {4, 2}
    assert {r[1] for r in splits["train"] + splits["test"]} == {-1}


def test_loose_images_beside_sub_folders_are_ambiguous_and_the_error_names_both_ways_out(tmp_path):
    _pngs(tmp_path, 2)
    _pngs(tmp_path / "batch1", 2)
    with pytest.raises(sources.SourceError, match="holds both images .* sub-folders .* pass --ignore-labels"):
        sources.probe(sources.parse_source(f"folder:{tmp_path}"))


def test_ignore_labels_reads_nested_folders_that_are_not_classes_at_every_depth(tmp_path):
    _pngs(tmp_path / "2019" / "march", 3)
    _pngs(tmp_path / "2020", 2, seed=1)
    _pngs(tmp_path, 1, seed=2)
    # Without the flag the sub-folders would be classes (and the loose image beside them ambiguous).
    with pytest.raises(sources.SourceError, match="--ignore-labels"):
        sources.probe(sources.parse_source(f"folder:{tmp_path}"))
    info = sources.probe(sources.parse_source(f"folder:{tmp_path}", ignore_labels=True))
    records = list(sources.read_split(info, "train"))
    assert info.class_names == () and len(records) == 6 and {r[1] for r in records} == {-1}


def test_class_folders_without_images_of_their_own_point_at_ignore_labels(tmp_path):
    _pngs(tmp_path / "a" / "deeper", 2)
    with pytest.raises(sources.SourceError, match="pass --ignore-labels"):
        sources.probe(sources.parse_source(f"folder:{tmp_path}"))


def test_ignore_labels_drops_the_labels_of_every_kind(tmp_path, idx_dir):
    path, (x_train, _, _, _) = idx_dir
    info = sources.probe(sources.parse_source(f"idx:{path}", ignore_labels=True))
    records = list(sources.read_split(info, "train"))
    assert info.class_names == () and {r[1] for r in records} == {-1}
    np.testing.assert_array_equal(np.stack([r[0][..., 0] for r in records]), x_train)
    np.savez(tmp_path / "labelled.npz", x=random_images(6, (4, 4)), y=np.arange(6) % 3)
    info = sources.probe(sources.parse_source(f"npz:{tmp_path / 'labelled.npz'}", ignore_labels=True))
    assert info.num_classes == 0 and {r[1] for r in sources.read_split(info, "train")} == {-1}
    for cls in ("cat", "dog"):
        _pngs(tmp_path / "pets" / cls, 2)
    info = sources.probe(sources.parse_source(f"folder:{tmp_path / 'pets'}", ignore_labels=True))
    assert info.class_names == () and len(sources.list_folder_split(info, "train")) == 4
