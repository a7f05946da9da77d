"""npz:FILE: arrays `x` (N,H,W[,C]) uint8 and optional `y`, or x_train/y_train[/x_test/y_test]; read in chunks."""
import dataclasses
import os
import zipfile
import zlib
from typing import Iterator, Optional, Tuple

import numpy as np

from components.image_example_gen.sources import (CHUNK_ROWS, UNLABELED, Record, SourceError, SourceInfo, SourceKind,
                                                   SourceSpec, SourceSplit, register_kind)

_NPZ_LAYOUTS = ((("train", "x", "y"),), (("train", "x_train", "y_train"), ("test", "x_test", "y_test")))


def _load_npz(path: str):
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise SourceError(f"npz:{path}: no such file") from e
    except (ValueError, OSError, zlib.error, EOFError, zipfile.BadZipFile) as e:
        raise SourceError(f"npz:{path}: not a readable .npz archive ({e})") from e


def _npy_header(f) -> Optional[Tuple[Tuple[int, ...], np.dtype]]:
    """(shape, dtype) from an .npy stream's header, leaving the stream at the first byte of data; None when the
    array cannot be cut into rows from the stream (Fortran order, objects, a 0-d array or a header version numpy
    offers no public reader for)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    version = np.lib.format.read_magic(f)
    if version not in readers:
        return None
    shape, fortran_order, dtype = readers[version](f)
    if fortran_order or dtype.hasobject or not shape:
        return None
    return tuple(int(d) for d in shape), dtype


_NPZ_READ_ERRORS = (ValueError, OSError, zlib.error, EOFError, KeyError, zipfile.BadZipFile)


def _npz_array_chunks(path: str, key: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """One array of the archive in chunks of up to `chunk_rows` rows, read from the member's stream (compressed
    or not) so that an array of any size takes a chunk's memory; one _npy_header cannot cut is read whole."""
    with _load_npz(path) as archive:
        try:
            with archive.zip.open(f"{key}.npy") as f:
                header = _npy_header(f)
                if header is None:
                    whole = archive[key]
                    for start in range(0, len(whole), chunk_rows):
                        yield whole[start:start + chunk_rows]
                    return
                shape, dtype = header
                row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
                for start in range(0, shape[0], chunk_rows):
                    rows = min(chunk_rows, shape[0] - start)
                    data = f.read(rows * row_bytes)
                    if len(data) != rows * row_bytes:
                        raise EOFError(f"{key!r} ends after {start + len(data) // max(row_bytes, 1)} of its "
                                       f"{shape[0]} rows")
                    yield np.frombuffer(data, dtype).reshape((rows, *shape[1:]))
        except _NPZ_READ_ERRORS as e:
            if isinstance(e, SourceError):
                raise
            raise SourceError(f"npz:{path}: array {key!r} cannot be read ({e}); the file is corrupt") from e


def _npz_array_header(archive, path: str, key: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """An array's shape and dtype from its .npy header, without reading the array (unless _npy_header cannot)."""
    try:
        with archive.zip.open(f"{key}.npy") as f:
            header = _npy_header(f)
        if header is None:
            array = archive[key]
            header = tuple(array.shape), array.dtype
    except _NPZ_READ_ERRORS as e:
        raise SourceError(f"npz:{path}: array {key!r} cannot be read ({e}); the file is corrupt") from e
    return header


def _check_pixel_range(path: str, key: str, chunk: np.ndarray) -> None:
    """Integer pixels other than uint8 must lie in 0..255 (a cast to uint8 would wrap 300 to 44 silently)."""
    if chunk.dtype != np.uint8 and chunk.size and (chunk.min() < 0 or chunk.max() > 255):
        raise SourceError(f"npz:{path}: {key!r} is {chunk.dtype} with values outside 0..255; save the images as "
                          "uint8 pixels (0..255)")


@dataclasses.dataclass(frozen=True)
class _NpzSplit:
    x_key: str
    image_shape: Tuple[int, ...]  # (H, W, C)
    labels: np.ndarray  # int64 (N,), all -1 without a y array: 8 bytes per image, read whole


def _npz_split(path: str, split: str, check_values: bool = True) -> Optional[_NpzSplit]:
    """One npz split, validated from the arrays' headers and the labels (the images are read by _read_npz_split
    in chunks): x uint8 (N,H,W[,C]) or integers in 0..255 (`check_values` reads them through to check that), y
    integers (N,) or absent. None: no such split."""
    with _load_npz(path) as archive:
        keys = set(archive.files)
        layout = next((l for l in _NPZ_LAYOUTS if l[0][1] in keys), None)
        if layout is None:
            raise SourceError(f"npz:{path}: has arrays {sorted(keys)}; expected 'x' (and optional 'y'), or "
                              "'x_train'/'y_train' with optional 'x_test'/'y_test'")
        entry = next((e for e in layout if e[0] == split), None)
        if entry is None or entry[1] not in keys:
            return None
        _, x_key, y_key = entry
        shape, dtype = _npz_array_header(archive, path, x_key)
        try:
            y = archive[y_key] if y_key in keys else None
        except _NPZ_READ_ERRORS as e:
            raise SourceError(f"npz:{path}: array {y_key!r} cannot be read ({e}); the file is corrupt") from e
    if len(shape) not in (3, 4):
        raise SourceError(f"npz:{path}: {x_key!r} has shape {shape}; expected (N, H, W) or (N, H, W, C)")
    if dtype != np.uint8 and check_values:
        if not np.issubdtype(dtype, np.integer):
            raise SourceError(f"npz:{path}: {x_key!r} is {dtype}, not integers; save the images as uint8 pixels "
                              "(0..255)")
        for chunk in _npz_array_chunks(path, x_key):
            _check_pixel_range(path, x_key, chunk)
    count = shape[0]
    if y is None:
        y = np.full(count, UNLABELED, np.int64)
    elif y.ndim != 1 or len(y) != count or not np.issubdtype(y.dtype, np.integer):
        raise SourceError(f"npz:{path}: {y_key!r} has shape {y.shape} and dtype {y.dtype} but {x_key!r} holds "
                          f"{count} images; labels must be integers, one per image")
    image_shape = tuple(shape[1:]) + ((1,) if len(shape) == 3 else ())
    return _NpzSplit(x_key, image_shape, y.astype(np.int64))


def probe(spec: SourceSpec) -> SourceInfo:
    path = spec.location
    train = _npz_split(path, "train")
    test = _npz_split(path, "test")
    if test is not None and test.image_shape != train.image_shape:
        raise SourceError(f"npz:{path}: test images are {test.image_shape} but train images are "
                          f"{train.image_shape}; both must share one shape")
    labels = np.concatenate([train.labels] + ([test.labels] if test is not None else []))
    if labels.size and labels.min() < UNLABELED:
        raise SourceError(f"npz:{path}: labels must be >= 0 (or -1 for unknown); found {labels.min()}")
    name = os.path.basename(path)
    splits = [SourceSplit("train", name)] + ([SourceSplit("test", name)] if test is not None else [])
    num_classes = int(train.labels.max()) + 1 if train.labels.size else 0
    return SourceInfo(spec, os.path.dirname(path), tuple(splits), train.image_shape,
                      tuple(str(i) for i in range(num_classes)))


def read_split(info: SourceInfo, split: str) -> Iterator[Record]:
    path = info.spec.location
    # The values are checked here, chunk by chunk, rather than by a second pass over the file (the probe made one
    # before the pipeline ran; the file may have changed since, and a cast would wrap 300 to 44 silently).
    npz_split = _npz_split(path, split, check_values=False)
    start = 0
    for chunk in _npz_array_chunks(path, npz_split.x_key):
        _check_pixel_range(path, npz_split.x_key, chunk)
        chunk = chunk.reshape((len(chunk), *npz_split.image_shape)).astype(np.uint8, copy=False)
        for image, label in zip(chunk, npz_split.labels[start:start + len(chunk)]):
            yield image, int(label)
        start += len(chunk)


register_kind(SourceKind("npz", probe, read_split, example="npz:faces.npz",
                          dataset_name=lambda location: os.path.splitext(os.path.basename(location))[0]))
