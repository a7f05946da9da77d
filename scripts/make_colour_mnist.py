"""Writes "coloured MNIST": a 32x32 RGB class-folder tree of PNGs made from MNIST, a colour dataset for the
`folder:` source when no natural colour dataset can be downloaded (the code path is the one CIFAR-10 exported
as folders would take).

Each digit is padded to 32x32, its strokes tinted with one random colour and its background filled with another
(both drawn per image, far enough apart to keep the digit legible), so a model has to learn colour as well as
shape and the colours are independent of the class.

    python scripts/make_colour_mnist.py --source data/mnist-sample --out /tmp/colour-mnist [--train 2000 --test 500]
                                        [--size 64] [--unlabelled]

then `latentforge run --source folder:/tmp/colour-mnist --model stylegan ...`. Layout: OUT/train/<digit>/N.png and
OUT/test/<digit>/N.png, the folders named zero..nine (the class names the source reports); with --unlabelled,
OUT/train/N.png and OUT/test/N.png (an unlabelled source). --size 64 resizes each 32x32 image up (bicubic).
"""
import argparse
import gzip
import os

import numpy as np
from PIL import Image

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise SystemExit(f"{directory}: no {stem}[.gz]; give --source a folder with MNIST's IDX files")


def colour(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) uint8 grey digits -> (N, 32, 32, 3) uint8: ink and background colours drawn per image."""
    ink = rng.uniform(0, 1, (len(digits), 3))
    background = rng.uniform(0, 1, (len(digits), 3))
    # Keep the two colours apart: where they are close, push the background to the ink's complement.
    close = np.linalg.norm(ink - background, axis=1) < 0.6
    background[close] = 1.0 - ink[close]
    alpha = np.pad(digits, ((0, 0), (2, 2), (2, 2))).astype(np.float32)[..., None] / 255.0
    images = alpha * ink[:, None, None, :] + (1 - alpha) * background[:, None, None, :]
    return np.round(images * 255).astype(np.uint8)


def resized(images: np.ndarray, size: int) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, size, size, 3) by PIL's bicubic filter (smooth strokes at 64 pixels, not blocks)."""
    if size == images.shape[1]:
        return images
    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)) for image in images])


def write(out: str, split: str, images: np.ndarray, labels: np.ndarray, unlabelled: bool = False) -> None:
    """OUT/split/<digit>/N.png, or OUT/split/N.png without the class folders (`unlabelled`)."""
    folders = [""] if unlabelled else NAMES
    for name in folders:
        os.makedirs(os.path.join(out, split, name), exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(os.path.join(out, split, "" if unlabelled else NAMES[label], f"{i}.png"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="data/mnist-sample", help="a folder with MNIST's IDX files")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=2000, help="training images (at most the source's)")
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (32, or e.g. 64: resized up)")
    parser.add_argument("--unlabelled", action="store_true",
                        help="write the images directly in OUT/train and OUT/test, without class folders")
    args = parser.parse_args()
    if args.size < 32:
        parser.error(f"--size {args.size}: at least 32 (the padded digit's size)")
    rng = np.random.default_rng(args.seed)
    for split, stem, count in (("train", "train", args.train), ("test", "t10k", args.test)):
        digits = read_idx(find(args.source, f"{stem}-images-idx3-ubyte"))[:count]
        labels = read_idx(find(args.source, f"{stem}-labels-idx1-ubyte"))[:count]
        write(args.out, split, resized(colour(digits, rng), args.size), labels, args.unlabelled)
        print(f"{split}: {len(digits)} images -> {os.path.join(args.out, split)}")


if __name__ == "__main__":
    main()
