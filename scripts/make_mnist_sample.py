"""Writes data/mnist-sample: the first 2,000 train and 500 test images of real MNIST, as IDX .gz files.

Usage: python scripts/make_mnist_sample.py [MNIST_DIR] [OUT_DIR]
(MNIST_DIR defaults to ../shared/datasets/mnist.)
"""
import gzip
import os
import struct
import sys

import numpy as np

NUM_TRAIN, NUM_TEST = 2000, 500


def _read(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data[4 + 4 * ndim:], np.uint8).reshape(dims)


def _write(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    # mtime=0 keeps the .gz bytes reproducible.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(header + array.tobytes())


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "mnist")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "data", "mnist-sample")
    os.makedirs(out, exist_ok=True)
    for prefix, n in (("train", NUM_TRAIN), ("t10k", NUM_TEST)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            _write(os.path.join(out, name), _read(os.path.join(src, name))[:n])
            print("wrote", os.path.join(out, name))


if __name__ == "__main__":
    main()
