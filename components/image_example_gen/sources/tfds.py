"""tfds:NAME: a TensorFlow Datasets builder, prepared (downloaded once) when probed; its splits are read by
TFDS's own Beam reader in the executor."""
import os
import socket
import urllib.parse
from typing import Optional, Tuple

from components.image_example_gen.sources import (SourceError, SourceInfo, SourceKind, SourceSpec, SourceSplit,
                                                   register_kind)

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


def probe(spec: SourceSpec) -> SourceInfo:
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


register_kind(SourceKind("tfds", probe, None, example="tfds:fashion_mnist", location_is_path=False,
                          dataset_name=lambda location: location.split("/")[0].split(":")[0]))
