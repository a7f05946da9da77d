"""How a worker best reads the Transform's TFRecords from object storage: tf.data over TensorFlow's S3 filesystem
(what trainers/data.py does) against Ray Data's read_tfrecords, one run, same files, same server.

    python benchmarks/remote_input.py [--images 60000] [--shards 4] [--epochs 3] [--batch-size 128]

The full MNIST's training images are written as the Transform writes them (gzipped tf.Examples: 28x28x1 float32
image, label, labeled) in --shards files, uploaded to an S3-compatible server on 127.0.0.1 (moto's, the tests'
double: a real store's latency and bandwidth differ, and every path pays the same server) and read back, batch
after batch into TensorFlow tensors, by:
  local        tf.data from a local copy (the floor: no storage in the way)
  tf.data s3   tf.data.TFRecordDataset over s3:// (tensorflow-io's filesystem), parsed by tf.io.parse_example
  ray data s3  ray.data.read_tfrecords over s3:// (pyarrow's S3FileSystem), iter_tf_batches
Each path reads --epochs full passes; images/s per pass. Results: benchmarks/results/remote_input.json.
"""
import argparse
import os
import tempfile
import time

from common import load_mnist, save_results, start_s3  # first: sets up sys.path and the environment
from common import S3_BUCKET as BUCKET
import numpy as np

from ray_overhead import write_examples

def passes(make_batches, epochs, images):
    """(seconds per pass, images/s per pass) of reading every batch `make_batches()` yields."""
    seconds = []
    for _ in range(epochs):
        start, count = time.perf_counter(), 0
        for batch in make_batches():
            count += int(batch["image"].shape[0])
        seconds.append(time.perf_counter() - start)
        assert count == images, (count, images)
    return {"seconds": seconds, "images_per_s": [images / s for s in seconds]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    x_train, y_train, _, _ = load_mnist()
    x_train, y_train = x_train[:args.images], y_train[:args.images]
    local = tempfile.mkdtemp(prefix="remote-input-")
    server, client = start_s3()
    try:
        files = []
        for shard in range(args.shards):
            name = f"train-{shard:05d}-of-{args.shards:05d}.gz"
            path = write_examples(os.path.join(local, name), x_train[shard::args.shards], y_train[shard::args.shards],
                                  "unit")
            client.upload_file(path, BUCKET, f"transformed/{name}")
            files.append(name)
        megabytes = sum(os.path.getsize(os.path.join(local, f)) for f in files) / 2**20
        print(f"{args.images} images in {args.shards} files, {megabytes:.1f} MiB gzipped", flush=True)

        from backends import storage  # pylint: disable=import-outside-toplevel
        storage.enable_tensorflow(f"s3://{BUCKET}/transformed")
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        from trainers import data  # pylint: disable=import-outside-toplevel
        spec = {"image": tf.io.FixedLenFeature([28, 28, 1], tf.float32),
                "label": tf.io.FixedLenFeature([1], tf.int64), "labeled": tf.io.FixedLenFeature([1], tf.int64)}

        def tf_data(prefix):
            pattern = f"{prefix}/train-*.gz"
            return lambda: data.image_dataset(pattern, spec, args.batch_size, shuffle=False)

        import ray  # pylint: disable=import-outside-toplevel
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        filesystem, _ = storage.pyarrow_filesystem(f"s3://{BUCKET}/transformed")

        def ray_data():
            dataset = ray.data.read_tfrecords([f"{BUCKET}/transformed/{f}" for f in files], filesystem=filesystem,
                                              arrow_open_stream_args={"compression": "gzip"})
            return dataset.iter_tf_batches(batch_size=args.batch_size)

        results = {"images": args.images, "shards": args.shards, "batch_size": args.batch_size,
                   "gzipped_mib": round(megabytes, 1), "epochs": args.epochs, "paths": {}}
        for name, make in (("local", tf_data(local)), ("tf.data s3", tf_data(f"s3://{BUCKET}/transformed")),
                           ("ray data s3", ray_data)):
            results["paths"][name] = passes(make, args.epochs, args.images)
            print(name, [round(v) for v in results["paths"][name]["images_per_s"]], "images/s per pass", flush=True)
        print(f"results: {save_results('remote_input', results)}")
        print("| path | first pass, images/s | later passes (median), images/s |\n|---|---:|---:|")
        for name, measured in results["paths"].items():
            rates = measured["images_per_s"]
            print(f"| {name} | {rates[0]:,.0f} | {float(np.median(rates[1:] or rates)):,.0f} |")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
