"""What training through Ray Train costs: the same TrainingJob in this process vs on Ray workers, one run.

    python benchmarks/ray_overhead.py [--ae-images 60000] [--gan-images 12000] [--epochs 4]

Both paths read the same gzipped tf.Example files (as the Transform writes them) through trainers.job, so the
only difference is Ray: worker start-up, MultiWorkerMirroredStrategy, the per-epoch checkpoint and report.
Start-up (call -> first epoch begins) is reported apart from steady-state samples/s, which is measured over
epochs 2.. (epoch 1 traces and compiles), each from its start to the next epoch's start on both paths, so the
Ray path's epochs include its checkpoint + report.
Target: Ray with 1 worker costs <= 10 % of the in-process steady-state throughput. 1 vs 2 workers is reported
too: on a 2-core machine two workers share the same two cores, so that ratio measures overhead, not scaling.
Results: benchmarks/results/ray_overhead.json and a Markdown table.
"""
import argparse
import os
import statistics
import tempfile
import time

from common import load_mnist, save_results  # first: sets up sys.path and the environment
import numpy as np
import tensorflow as tf
import tf_keras as keras

from backends import ray_cluster
from components.trainer import ray_train
from trainers import job as training

SPEC = {"image": ([28, 28, 1], "float32"), "label": ([], "int64"), "labeled": ([], "int64")}


def write_examples(path, images, labels, pixel_range):
    values = images * 2.0 - 1.0 if pixel_range == "symmetric" else images
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for image, label in zip(values, labels):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel())),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                "labeled": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))})).SerializeToString())
    return path


class EpochStarts(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.starts = []

    def on_epoch_begin(self, epoch, logs=None):
        self.starts.append(time.time())


def timing(called, starts, samples):
    """Both paths are timed alike, from when each epoch began (Ray: on the chief) to when the next began:
    an epoch's time includes what runs between epochs (validation, the Ray path's checkpoint and report)."""
    seconds = [float(s) for s in np.diff(starts[1:])]  # epochs 2..N; epoch 1 traces and compiles
    return {"startup_s": starts[0] - called, "steady_samples_per_s": samples / statistics.median(seconds),
            "epoch_s": seconds}


def in_process(job, samples):
    config = job.make_config()
    called = time.time()
    train_data, eval_data = training.datasets(job, config)
    model = training.build_model(job, config)
    clock = EpochStarts()
    training.train(job, model, config, train_data, eval_data, [clock])
    return timing(called, clock.starts + [time.time()], samples)


def on_ray(job, samples, workers, storage):
    called = time.time()
    outcome = ray_train.train(job, ray_train.RaySettings(workers=workers), storage,
                              ray_train.run_name(storage, f"{job.model}-{workers}"))
    # The last epoch ends when the result reaches this process (after the final checkpoint's upload).
    return timing(called, outcome.epoch_started_at + [outcome.finished_at], samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ae-images", type=int, default=60000)
    parser.add_argument("--gan-images", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    x_train, y_train, x_test, y_test = load_mnist()
    work = tempfile.mkdtemp(prefix="latentforge-ray-bench-")
    ray_cluster.connect()
    results = {}
    for model, images, config, pixel_range in (
            ("stacked_ae", args.ae_images, {"batch_size": 32}, "unit"),
            ("dcgan", args.gan_images, {"batch_size": 32}, "symmetric")):
        train_file = write_examples(os.path.join(work, f"{model}-train.gz"), x_train[:images], y_train[:images],
                                    pixel_range)
        eval_file = write_examples(os.path.join(work, f"{model}-eval.gz"), x_test[:2000], y_test[:2000], pixel_range)
        job = training.TrainingJob(model, {**config, "epochs": args.epochs}, (28, 28, 1), [train_file], [eval_file],
                                   SPEC)
        row = {"in process": in_process(job, images)}
        for workers in (1, 2):
            row[f"Ray, {workers} worker{'s' if workers > 1 else ''}"] = on_ray(job, images, workers,
                                                                              os.path.join(work, "ray"))
        base = row["in process"]["steady_samples_per_s"]
        for entry in row.values():
            entry["vs_in_process"] = entry["steady_samples_per_s"] / base
        results[model] = {"images": images, "epochs": args.epochs, **row}
        print(f"{model}: " + ", ".join(f"{k} {v['steady_samples_per_s']:.0f}/s" for k, v in row.items()), flush=True)
    path = save_results("ray_overhead", results)
    print(f"\nresults: {path}\n")
    print("| model | path | start-up (s) | steady samples/s | vs in process |")
    print("|---|---|---:|---:|---:|")
    for model, row in results.items():
        for path_name, entry in row.items():
            if isinstance(entry, dict):
                print(f"| {model} | {path_name} | {entry['startup_s']:.1f} | {entry['steady_samples_per_s']:,.0f} | "
                      f"{entry['vs_in_process']:.2f}x |")


if __name__ == "__main__":
    main()
