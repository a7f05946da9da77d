"""Image sources behind `--source`: parse the URI-like flag, probe a source cheaply, read its records.

    tfds:NAME      a TensorFlow Datasets builder (tfds:mnist, tfds:fashion_mnist, tfds:cifar10, ...)
    idx:DIR        the four IDX files as MNIST / Fashion-MNIST ship them (gzipped or not)
    folder:DIR     one sub-folder per class (PNG/JPEG), or the images directly in DIR (unlabelled); either
                   optionally under DIR/train and DIR/test
    npz:FILE       arrays `x` (N,H,W[,C]) uint8 and optional `y`; or x_train/y_train[/x_test/y_test]

Any source can be read without its labels (`ignore_labels`, the CLI's --ignore-labels): every record's label is
-1 and the source reports no classes; a folder's sub-folders are then not classes and its images are read from
every depth.

Each kind is a module of this package (idx, folder, npz, tfds) that registers a `SourceKind`: how to probe it
and read a split. The rest asks this module (parse_source, probe, read_split), which asks the kind. Plain Python
+ numpy (no Beam, no TFX): the ExampleGen executor wraps the readers in Beam, the CLI probes a source before it
builds the pipeline, and the tests call both directly.
A record is `(image, label)`: image uint8 (H, W, C), label int (-1 when the source has no labels).
"""
import dataclasses
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
UNLABELED = -1
CHUNK_ROWS = 4096  # images per chunk where a kind reads its arrays in chunks (IDX, .npz): memory stays flat

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
        """A short name for the data: 'mnist' for tfds:mnist, the folder or file name (without extension)."""
        return KINDS[self.spec.kind].dataset_name(self.spec.location)


def _folder_name(location: str) -> str:
    return os.path.basename(os.path.normpath(location))


@dataclasses.dataclass(frozen=True)
class SourceKind:
    """One kind of source, as its module registers it."""

    name: str  # what comes before the colon in --source
    probe: Callable[[SourceSpec], SourceInfo]  # cheap: headers and label files, never every image
    # Every record of one split, validated; None: the kind is read by its own Beam reader (TFDS) in the executor
    read_split: Optional[Callable[[SourceInfo, str], Iterator[Record]]]
    example: str  # for messages: e.g. idx:data/mnist-sample
    # A kind of one file per image: (info, split) -> [(path, label)], which the executor hands one at a time to
    # read_file(path, image_shape) -> the image, so decoding spreads over Beam's workers
    list_files: Optional[Callable[[SourceInfo, str], List[Tuple[str, int]]]] = None
    read_file: Optional[Callable[[str, Sequence[int]], np.ndarray]] = None
    location_is_path: bool = True  # made absolute by parse_source (a TFDS location is a dataset name)
    dataset_name: Callable[[str], str] = _folder_name  # the short name of the data at a location

    def __post_init__(self):
        if (self.list_files is None) != (self.read_file is None):
            raise ValueError(f"source kind {self.name}: list_files and read_file go together (one file per image)")


KINDS: Dict[str, SourceKind] = {}


def register_kind(kind: SourceKind) -> None:
    KINDS[kind.name] = kind


def kind_of(spec: SourceSpec) -> SourceKind:
    return KINDS[spec.kind]


def parse_source(uri: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                 ignore_labels: bool = False) -> SourceSpec:
    """Parses 'KIND:LOCATION'. Paths are made absolute so a pipeline run elsewhere reads the same files."""
    kind, sep, location = uri.partition(":")
    if not sep or kind not in KINDS or not location:
        raise SourceError(
            f"--source {uri!r} is not of the form KIND:LOCATION with KIND one of {', '.join(KINDS)} "
            f"(e.g. {', '.join(k.example for k in KINDS.values())})")
    if KINDS[kind].location_is_path:
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
    info = kind_of(spec).probe(spec)
    return dataclasses.replace(info, class_names=()) if spec.ignore_labels else info


def read_split(info: SourceInfo, split: str) -> Iterator[Record]:
    """Yields every record of one source split ('train', 'eval' or 'test'), fully validated."""
    kind = kind_of(info.spec)
    if kind.read_split is None:
        raise NotImplementedError(f"{kind.name} sources are read by their own Beam reader in the executor")
    for image, label in kind.read_split(info, split):
        yield image, UNLABELED if info.spec.ignore_labels else label


# The kinds register themselves on import, in the order --source lists them; then what the executor, the CLI and
# the tests use of them. pylint: disable=wrong-import-position,cyclic-import
from components.image_example_gen.sources import tfds, idx, folder, npz  # noqa: E402,F401
from components.image_example_gen.sources.folder import list_folder_split  # noqa: E402,F401
from components.image_example_gen.sources.idx import iter_idx_chunks, read_idx  # noqa: E402,F401
from components.image_example_gen.sources.tfds import (ensure_tfds_prepared, tfds_keys,  # noqa: E402,F401
                                                       tfds_split_name)
