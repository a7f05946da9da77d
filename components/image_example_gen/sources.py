"""Image sources behind `--source`: parse the URI-like flag, probe a source cheaply, read its records.

    tfds:NAME      a TensorFlow Datasets builder (tfds:mnist, tfds:fashion_mnist, tfds:cifar10, ...)
    idx:DIR        the four IDX files as MNIST / Fashion-MNIST ship them (gzipped or not)
    folder:DIR     one sub-folder per class (PNG/JPEG), or the images directly in DIR (unlabelled); either
                   optionally under DIR/train and DIR/test
    npz:FILE       arrays `x` (N,H,W[,C]) uint8 and optional `y`; or x_train/y_train[/x_test/y_test]

Any source can be read without its labels (`ignore_labels`, the CLI's --ignore-labels): every record's label is
-1 and the source reports no classes; a folder's sub-folders are then not classes and its images are read from
every depth.

This module is plain Python + numpy (no Beam, no TFX): the ExampleGen executor wraps the readers in
Beam, the CLI probes a source before it builds the pipeline, and the tests call both directly.
A record is `(image, label)`: image uint8 (H, W, C), label int (-1 when the source has no labels).
"""
import dataclasses
import glob
import gzip
import os
import socket
import struct
import urllib.parse
import zipfile
import zlib
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

KINDS = ("tfds", "idx", "folder", "npz")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
UNLABELED = -1

Record = Tuple[np.ndarray, int]


class SourceError(ValueError):
    """A data source is missing, corrupt or inconsistent. The message names the file and what to do."""


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """What `--source` (plus the TFDS directories) says to read."""

    kind: str
    location: str  # dataset name for tfds, else a path
    data_dir: Optional[str] = None  # tfds only
    manual_dir: Optional[str] = None  # tfds only
    ignore_labels: bool = False  # read every image as unlabelled (a folder's sub-folders are not classes)

    @property
    def uri(self) -> str:
        return f"{self.kind}:{self.location}"


@dataclasses.dataclass(frozen=True)
class SourceSplit:
    """One split the source itself has: `name` is 'train', 'eval' or 'test'; `pattern` is the glob,
    relative to SourceInfo.input_base, of the files it is read from (TFX fingerprints these files)."""

    name: str
    pattern: str


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What a cheap look at a source tells, before any image is decoded."""

    spec: SourceSpec
    input_base: str
    splits: Tuple[SourceSplit, ...]
    image_shape: Tuple[int, int, int]  # (height, width, channels)
    class_names: Tuple[str, ...]  # empty when the source has no labels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dataset_name(self) -> str:
        """A short name for the data: 'mnist' for tfds:mnist, the folder or file name otherwise."""
        if self.spec.kind == "tfds":
            return self.spec.location.split("/")[0].split(":")[0]
        base = os.path.basename(os.path.normpath(self.spec.location))
        return os.path.splitext(base)[0] if self.spec.kind == "npz" else base


def parse_source(uri: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                 ignore_labels: bool = False) -> SourceSpec:
    """Parses 'KIND:LOCATION'. Paths are made absolute so a pipeline run elsewhere reads the same files."""
    kind, sep, location = uri.partition(":")
    if not sep or kind not in KINDS or not location:
        raise SourceError(
            f"--source {uri!r} is not of the form KIND:LOCATION with KIND one of {', '.join(KINDS)} "
            "(e.g. tfds:fashion_mnist, idx:data/mnist-sample, folder:~/pets, npz:faces.npz)")
    if kind != "tfds":
        location = os.path.abspath(os.path.expanduser(location))
        if data_dir or manual_dir:
            raise SourceError("--data-dir and --manual-dir are TFDS options; they do nothing for "
                              f"{kind}: sources (drop them, or use a tfds: source)")
    expand = lambda p: os.path.abspath(os.path.expanduser(p)) if p else None
    return SourceSpec(kind, location, expand(data_dir), expand(manual_dir), bool(ignore_labels))


def probe(spec: SourceSpec) -> SourceInfo:
    """Checks the source exists and is self-consistent and returns its splits, image shape and classes.

    Cheap: reads headers and label files, never all the images (a tfds source is prepared first,
    which downloads it once). Raises SourceError.
    """
    info = {"tfds": _probe_tfds, "idx": _probe_idx, "folder": _probe_folder, "npz": _probe_npz}[spec.kind](spec)
    return dataclasses.replace(info, class_names=()) if spec.ignore_labels else info


def read_split(info: SourceInfo, split: str) -> Iterator[Record]:
    """Yields every record of one source split ('train', 'eval' or 'test'), fully validated."""
    if info.spec.kind == "folder":
        for path, label in list_folder_split(info, split):
            yield read_image_file(path, info.image_shape), label
        return
    if info.spec.kind == "tfds":
        raise NotImplementedError("tfds sources are read with tfds.beam.ReadFromTFDS in the executor")
    records = _read_idx_split(info, split) if info.spec.kind == "idx" else _read_npz_split(info, split)
    for image, label in records:
        yield image, UNLABELED if info.spec.ignore_labels else label


# --------------------------------------------------------------------------------------------- IDX

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
CHUNK_ROWS = 4096


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


def _probe_idx(spec: SourceSpec) -> SourceInfo:
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


def _read_idx_split(info: SourceInfo, split: str) -> Iterator[Record]:
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


# ------------------------------------------------------------------------------------------ folder

def _class_dirs(directory: str) -> List[str]:
    return sorted(d for d in os.listdir(directory)
                  if os.path.isdir(os.path.join(directory, d)) and not d.startswith("."))


def _image_files(directory: str) -> List[str]:
    return sorted(f for f in os.listdir(directory)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def _all_image_files(directory: str) -> List[str]:
    """Every image under `directory` at any depth (hidden files and folders skipped), in a stable order."""
    found = []
    for parent, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(parent, f) for f in sorted(files)
                     if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    return found


# How a folder's split is laid out: class sub-folders (labelled), or images with no classes (unlabelled): directly
# in the folder, or at any depth with --ignore-labels. The SourceSplit pattern's last part tells them apart.
_CLASS_PATTERN, _FLAT_PATTERN = os.path.join("*", "*"), "*"


def _folder_split_is_flat(split_root: str, ignore_labels: bool) -> bool:
    """True: the split's images are unlabelled (loose in split_root, or anywhere below it with ignore_labels);
    False: split_root holds one sub-folder per class. Both loose images and sub-folders is ambiguous: an error."""
    if ignore_labels:
        return True
    loose, folders = _image_files(split_root), _class_dirs(split_root)
    if loose and folders:
        raise SourceError(
            f"{split_root} holds both images ({loose[0]}, ...) and sub-folders ({', '.join(folders[:3])}): with class "
            "folders every image must be in one (move the loose images into a class folder); to read every image "
            "at any depth as unlabelled, pass --ignore-labels")
    return bool(loose)


def _probe_folder(spec: SourceSpec) -> SourceInfo:
    root = spec.location
    if not os.path.isdir(root):
        raise SourceError(f"folder:{root}: no such directory. Expected ROOT/CLASS/*.png (or .jpg), or the images "
                          "directly in ROOT (unlabelled), optionally as ROOT/train/... and ROOT/test/...")
    top = _class_dirs(root)
    split_dirs = [s for s in ("train", "test") if s in top]
    if split_dirs and "train" not in split_dirs:
        raise SourceError(f"folder:{root} has a test/ folder but no train/ folder")
    layout = [("train", "train"), ("test", "test")] if split_dirs else [("train", "")]
    splits, class_names, flat_layout = [], None, None
    for split, sub in layout:
        split_root = os.path.join(root, sub) if sub else root
        if not os.path.isdir(split_root):
            continue
        flat = _folder_split_is_flat(split_root, spec.ignore_labels)
        if flat_layout is not None and flat != flat_layout:
            raise SourceError(f"{split_root}: {'loose images' if flat else 'class folders'} but the train split has "
                              f"{'loose images' if flat_layout else 'class folders'}; lay both splits out alike (or "
                              "pass --ignore-labels to read both as unlabelled images)")
        flat_layout = flat
        if flat:
            if not _all_image_files(split_root):
                raise SourceError(f"{split_root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it or below it")
            class_names = ()
        else:
            classes = _class_dirs(split_root)
            if not classes:
                raise SourceError(f"{split_root}: no images and no class sub-folders; put the images there "
                                  f"(unlabelled) or each class's images in {split_root}/CLASS_NAME/")
            if class_names is None:
                class_names = tuple(classes)
            elif not set(classes) <= set(class_names):
                extra = sorted(set(classes) - set(class_names))
                raise SourceError(f"{split_root}: classes {extra} are not in the train split's classes "
                                  f"{list(class_names)}; both splits must use the same class folders")
            if not any(_image_files(os.path.join(split_root, c)) for c in classes):
                raise SourceError(f"{split_root}: no images ({', '.join(IMAGE_EXTENSIONS)}) directly in its class "
                                  "folders; if the sub-folders are not classes, pass --ignore-labels to read every "
                                  "image below it as unlabelled")
        pattern = _FLAT_PATTERN if flat else _CLASS_PATTERN
        splits.append(SourceSplit(split, os.path.join(sub, pattern) if sub else pattern))
    info = SourceInfo(spec, root, tuple(splits), (0, 0, 0), class_names)
    first_path = next(iter(list_folder_split(info, "train")))[0]
    shape = _decode_image(first_path).shape
    return dataclasses.replace(info, image_shape=shape)


def list_folder_split(info: SourceInfo, split: str) -> List[Tuple[str, int]]:
    """(path, label) for every image file of a folder split, in a stable order (label -1: unlabelled)."""
    pattern = next(s.pattern for s in info.splits if s.name == split)
    sub = pattern.split(os.sep)[0] if pattern.split(os.sep)[0] in ("train", "test") else ""
    split_root = os.path.join(info.input_base, sub)
    if not info.class_names:
        return [(path, UNLABELED) for path in _all_image_files(split_root)]
    files = []
    for label, name in enumerate(info.class_names):
        class_dir = os.path.join(split_root, name)
        if os.path.isdir(class_dir):
            files.extend((os.path.join(class_dir, f), label) for f in _image_files(class_dir))
    return files


def _decode_image(path: str, channels: Optional[int] = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
    try:
        with Image.open(path) as img:
            img.load()
            # Grey stays grey, everything else becomes RGB (alpha and palettes dropped); a folder that
            # mixes both is converted to the channel count of its first image.
            mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if img.mode in ("1", "L", "I;16", "I", "F") else "RGB")
            array = np.asarray(img.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SourceError(f"{path}: cannot decode this image ({e}). Remove or replace the file.") from e
    return array[:, :, None] if array.ndim == 2 else array


def read_image_file(path: str, expected_shape: Sequence[int]) -> np.ndarray:
    """Decodes one image and checks it has the folder's size (that of its first image)."""
    image = _decode_image(path, channels=expected_shape[2])
    if image.shape[:2] != tuple(expected_shape[:2]):
        raise SourceError(f"{path}: image is {image.shape[0]}x{image.shape[1]} but the folder's images are "
                          f"{expected_shape[0]}x{expected_shape[1]}; resize the images to one size first")
    return image


# --------------------------------------------------------------------------------------------- npz

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


def _probe_npz(spec: SourceSpec) -> SourceInfo:
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


def _read_npz_split(info: SourceInfo, split: str) -> Iterator[Record]:
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


# -------------------------------------------------------------------------------------------- tfds

TFDS_SPLITS = (("train", "train"), ("eval", "validation"), ("test", "test"))


def tfds_builder(spec: SourceSpec):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    try:
        return tfds.builder(spec.location, data_dir=spec.data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise SourceError(f"tfds:{spec.location}: no such TFDS dataset ({str(e).splitlines()[0]}). "
                          "See https://www.tensorflow.org/datasets/catalog") from e


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def ensure_tfds_prepared(spec: SourceSpec, builder=None):
    """Downloads and prepares a TFDS dataset unless it already is, failing in seconds when offline.

    TFDS itself retries an unreachable download for minutes; here a connection check to the
    download hosts comes first, and files already in --manual-dir need no network at all.
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    builder = builder or tfds_builder(spec)
    if builder.is_prepared():
        return builder
    urls = sorted(getattr(builder, "url_infos", None) or {})
    missing = [u for u in urls if not (spec.manual_dir and os.path.exists(
        os.path.join(spec.manual_dir, os.path.basename(urllib.parse.urlparse(u).path))))]
    hosts = sorted({urllib.parse.urlparse(u).hostname for u in missing} - {None}) or (
        [] if urls else ["storage.googleapis.com"])
    offline = [h for h in hosts if not _reachable(h)]
    if offline:
        names = ", ".join(os.path.basename(urllib.parse.urlparse(u).path) for u in missing) or "its files"
        raise SourceError(
            f"tfds:{spec.location} is not prepared in {builder.data_dir} and the download host(s) "
            f"{', '.join(offline)} cannot be reached (offline?). Either put {names} into a folder and pass "
            "--manual-dir FOLDER, or pass --data-dir pointing at an already prepared TFDS data directory"
            + (", or read the IDX files directly with --source idx:FOLDER" if spec.location in (
                "mnist", "fashion_mnist") else "") + ".")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=spec.manual_dir))
    except tfds.download.NonMatchingChecksumError as e:
        raise SourceError(f"tfds:{spec.location}: the downloaded or manual files do not match the checksums "
                          f"TFDS pins for this dataset ({str(e).splitlines()[0]}). Use the original files, or "
                          "read local IDX files with --source idx:FOLDER.") from e
    return builder


def _probe_tfds(spec: SourceSpec) -> SourceInfo:
    """Unlike the other probes this one prepares the dataset (a download, once) when it is not yet."""
    builder = ensure_tfds_prepared(spec)
    features = builder.info.features
    image_key, label_key = tfds_keys(builder)
    if image_key is None or None in features[image_key].shape:
        raise SourceError(f"tfds:{spec.location}: has no fixed-size image feature ({features}); latentforge "
                          "needs images of one size")
    available = set(builder.info.splits.keys())
    root = str(builder.data_dir_root)
    rel = os.path.relpath(str(builder.data_dir), root)
    splits = tuple(SourceSplit(ours, os.path.join(rel, f"{builder.name}-{theirs}.*"))
                   for ours, theirs in TFDS_SPLITS if theirs in available)
    class_names = tuple(features[label_key].names) if label_key else ()
    return SourceInfo(spec, root, splits, tuple(features[image_key].shape), class_names)


def tfds_split_name(split: str) -> str:
    return dict(TFDS_SPLITS)[split]


def tfds_keys(builder) -> Tuple[str, Optional[str]]:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    features = builder.info.features
    image_key = next((k for k, f in features.items() if isinstance(f, tfds.features.Image)), None)
    label_key = next((k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)), None)
    return image_key, label_key
