"""idx:DIR: the four IDX files as MNIST and Fashion-MNIST ship them (gzipped or not), read in chunks."""
import glob
import gzip
import os
import struct
import zlib
from typing import Iterator, Optional, Tuple

import numpy as np

from components.image_example_gen.sources import (CHUNK_ROWS, UNLABELED, Record, SourceError, SourceInfo, SourceKind,
                                                   SourceSpec, SourceSplit, register_kind)

# The third byte of an IDX magic number is the element type; 0x08 is unsigned byte (all MNIST files).
_IDX_UBYTE = 0x08
_IDX_SPLIT_PREFIXES = (("train", "train"), ("test", "t10k"), ("test", "test"))


def read_idx(path: str, expected_ndim: int, header_only: bool = False) -> Tuple[Tuple[int, ...], Optional[np.ndarray]]:
    """Reads an IDX file (gzipped when its name ends in .gz). Returns (dims, array or None if header_only)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read(4)
            if len(data) == 4:
                data += f.read(4 * data[3])
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise SourceError(f"{path}: cannot decompress it ({e}): the file is truncated or not a gzip file. "
                          "Download it again.") from e
    except OSError as e:
        raise SourceError(f"{path}: cannot read it ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise SourceError(f"{path}: not an IDX file (magic number {data[:4].hex() or 'missing'}; IDX files "
                          "start with 0x0000). Point idx: at the MNIST-style *-ubyte files.")
    dtype_code, ndim = data[2], data[3]
    what = {1: "labels (N)", 3: "images (N x H x W)"}[expected_ndim]
    if ndim != expected_ndim or dtype_code != _IDX_UBYTE:
        raise SourceError(
            f"{path}: IDX magic 0x{data[:4].hex()} is a {ndim}-D array of type 0x{dtype_code:02x}; expected "
            f"0x0000080{expected_ndim} ({what}, unsigned bytes). Is the file misnamed?")
    if len(data) < 4 + 4 * ndim:
        raise SourceError(f"{path}: the IDX header is truncated. Download the file again.")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    if header_only:
        return dims, None
    # The whole array as one chunk: iter_idx_chunks checks the payload against the header.
    whole = list(iter_idx_chunks(path, expected_ndim, chunk_rows=max(dims[0], 1)))
    return dims, whole[0] if whole else np.zeros(dims, np.uint8)


# Images per read when a split is streamed: a split of any size takes ~3 MB of 28x28 images, not the whole file
# (the MNIST's train images are 47 MB read whole; a 4x set 188 MB, held while Beam wrote every example).
def iter_idx_chunks(path: str, expected_ndim: int, chunk_rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """An IDX file's array in chunks of up to `chunk_rows` rows, its header checked as read_idx checks it; a file
    shorter or longer than its header announces is the same SourceError, raised where the reading finds it."""
    dims, _ = read_idx(path, expected_ndim, header_only=True)
    row_shape = tuple(dims[1:])
    row_bytes = int(np.prod(row_shape, dtype=np.int64))
    opener = gzip.open if path.endswith(".gz") else open
    announced = f"the header announces {'x'.join(map(str, dims))} = {dims[0] * row_bytes} bytes"
    try:
        with opener(path, "rb") as f:
            f.read(4 + 4 * len(dims))
            done = 0
            while done < dims[0]:
                rows = min(chunk_rows, dims[0] - done)
                data = f.read(rows * row_bytes)
                if len(data) != rows * row_bytes:
                    raise SourceError(f"{path}: {announced} but the file holds {done * row_bytes + len(data)}: it is "
                                      "truncated or corrupt. Download it again.")
                yield np.frombuffer(data, np.uint8).reshape((rows, *row_shape))
                done += rows
            if f.read(1):
                raise SourceError(f"{path}: {announced} but the file holds more: it is corrupt. Download it again.")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise SourceError(f"{path}: cannot decompress it ({e}): the file is truncated or not a gzip file. "
                          "Download it again.") from e


def _idx_files(directory: str, prefix: str) -> Tuple[Optional[str], Optional[str]]:
    """Finds PREFIX-images* and PREFIX-labels* (MNIST and Fashion-MNIST naming, with or without .gz)."""
    def find(kind):
        hits = sorted(p for p in glob.glob(os.path.join(directory, f"{prefix}-{kind}*")) if "ubyte" in p)
        # Prefer the uncompressed file when both are there: it reads faster.
        hits.sort(key=lambda p: p.endswith(".gz"))
        return hits[0] if hits else None
    return find("images"), find("labels")


def probe(spec: SourceSpec) -> SourceInfo:
    directory = spec.location
    if not os.path.isdir(directory):
        raise SourceError(f"idx:{directory}: no such directory. It should hold train-images-idx3-ubyte.gz, "
                          "train-labels-idx1-ubyte.gz and optionally t10k-images/t10k-labels.")
    splits, shape, max_label = [], None, -1
    for split, prefix in _IDX_SPLIT_PREFIXES:
        images, labels = _idx_files(directory, prefix)
        if images is None or any(s.name == split for s in splits):
            if labels is not None and images is None:
                raise SourceError(f"{labels}: labels without images: {prefix}-images-idx3-ubyte[.gz] is missing "
                                  f"from {directory}")
            continue
        dims, _ = read_idx(images, 3, header_only=True)
        if labels is not None:
            _, y = read_idx(labels, 1)
            if len(y) != dims[0]:
                raise SourceError(f"{images} has {dims[0]} images but {labels} has {len(y)} labels; "
                                  "they must match one to one (mixed-up downloads?)")
            max_label = max(max_label, int(y.max()) if len(y) else -1)
        if shape is not None and dims[1:] != shape[:2]:
            raise SourceError(f"{images}: images are {dims[1]}x{dims[2]} but the train images are "
                              f"{shape[0]}x{shape[1]}; every split must share one image size")
        shape = shape or (dims[1], dims[2], 1)
        splits.append(SourceSplit(split, f"{prefix}-*"))
    if not splits or splits[0].name != "train":
        raise SourceError(f"idx:{directory}: no train-images-idx3-ubyte[.gz] file there (found: "
                          f"{', '.join(sorted(os.listdir(directory))) or 'nothing'})")
    class_names = tuple(str(i) for i in range(max_label + 1))
    return SourceInfo(spec, directory, tuple(splits), shape, class_names)


def read_split(info: SourceInfo, split: str) -> Iterator[Record]:
    prefix = next(s.pattern for s in info.splits if s.name == split).split("-")[0]
    images_path, labels_path = _idx_files(info.input_base, prefix)
    dims, _ = read_idx(images_path, 3, header_only=True)
    labels = read_idx(labels_path, 1)[1] if labels_path else np.full(dims[0], UNLABELED)  # 1 byte per image
    if len(labels) != dims[0]:
        raise SourceError(f"{images_path} has {dims[0]} images but {labels_path} has {len(labels)} labels")
    start = 0
    for chunk in iter_idx_chunks(images_path, 3):
        for image, label in zip(chunk, labels[start:start + len(chunk)]):
            yield image[:, :, None], int(label)
        start += len(chunk)


register_kind(SourceKind("idx", probe, read_split, example="idx:data/mnist-sample"))
