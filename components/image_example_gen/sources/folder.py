"""folder:DIR: one sub-folder per class (PNG, JPEG, BMP, GIF), or the images directly in DIR (unlabelled);
either optionally under DIR/train and DIR/test. Read one file at a time: the executor spreads the files over
Beam's workers."""
import dataclasses
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from components.image_example_gen.sources import (IMAGE_EXTENSIONS, UNLABELED, Record, SourceError, SourceInfo,
                                                   SourceKind, SourceSpec, SourceSplit, register_kind)

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


def probe(spec: SourceSpec) -> SourceInfo:
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


def read_split(info: SourceInfo, split: str) -> Iterator[Record]:
    for path, label in list_folder_split(info, split):
        yield read_image_file(path, info.image_shape), label


register_kind(SourceKind("folder", probe, read_split, list_files=list_folder_split, read_file=read_image_file,
                         example="folder:~/pets"))
