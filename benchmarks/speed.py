"""Training speed: our train step vs the seed notebook's plain code, same network, same batch, one process.

    python benchmarks/speed.py [--images 60000] [--gan-steps 300]

Stacked AE: the notebook's `model.fit(X, X)` on NumPy arrays vs trainers.autoencoders.train (tf.data with
prefetch, 50 steps per graph call, XLA). DCGAN: the notebook's Python loop of two `train_on_batch` calls per batch
vs trainers.gans.GAN's compiled train_step through `fit`. Start-up (first epoch/steps: tracing, compiling) is
reported apart from steady-state samples/s. Results: benchmarks/results/speed.json and a Markdown table.
"""
import argparse

from common import Timer, load_mnist, save_results  # first: sets up sys.path and the environment
import tensorflow as tf
import tf_keras as keras

import notebook_models
from trainers import autoencoders, gans, registry


class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.timer = Timer().__enter__()

    def on_epoch_end(self, epoch, logs=None):
        self.timer.__exit__()
        self.seconds = getattr(self, "seconds", []) + [self.timer.seconds]


def autoencoder_speed(x_train, batch_size=32, epochs=2):
    results = {}
    times = EpochTimes()
    model = notebook_models.stacked_ae()
    model.compile(loss="mse", optimizer="nadam")
    model.fit(x_train, x_train, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[times])
    results["notebook"] = times.seconds
    for label, overrides in (("ours", {}), ("ours, no XLA", {"jit_compile": False}),
                             ("ours, 1 step per call", {"steps_per_execution": 1})):
        times = EpochTimes()
        config = registry.make_config("stacked_ae", {"epochs": epochs, "batch_size": batch_size, **overrides})
        dataset = tf.data.Dataset.from_tensor_slices(x_train).shuffle(10_000, seed=0).batch(batch_size)
        autoencoders.train(config, (28, 28, 1), dataset.prefetch(tf.data.AUTOTUNE), callbacks=[times])
        results[label] = times.seconds
    return {label: {"first_epoch_s": s[0], "steady_samples_per_s": len(x_train) / s[-1]}
            for label, s in results.items()}


def dcgan_speed(x_train, steps, batch_size=32, warmup=20):
    x = x_train[: (steps + warmup) * batch_size] * 2.0 - 1.0
    dataset = tf.data.Dataset.from_tensor_slices(x).shuffle(1000).batch(batch_size, drop_remainder=True).prefetch(1)
    results = {}
    gan = notebook_models.dcgan()
    with Timer() as start:
        notebook_models.train_gan_steps(gan, dataset, batch_size, 100, warmup)
    with Timer() as steady:
        notebook_models.train_gan_steps(gan, dataset.skip(warmup), batch_size, 100, steps)
    results["notebook"] = {"first_epoch_s": start.seconds, "steady_samples_per_s": steps * batch_size / steady.seconds}
    for label, overrides in (("ours", {}), ("ours, XLA", {"jit_compile": True})):
        config = registry.make_config("dcgan", {"batch_size": batch_size, **overrides})
        model = gans.build_gan(config, (28, 28, 1))
        with Timer() as start:
            model.fit(dataset.take(warmup), epochs=1, verbose=0)
        with Timer() as steady:
            model.fit(dataset.skip(warmup).take(steps), epochs=1, verbose=0)
        results[label] = {"first_epoch_s": start.seconds, "steady_samples_per_s": steps * batch_size / steady.seconds}
    return results


def table(title, results):
    base = results["notebook"]["steady_samples_per_s"]
    lines = [f"| {title} | samples/s (steady) | vs notebook | start-up s |", "|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['steady_samples_per_s']:,.0f} | {r['steady_samples_per_s'] / base:.2f}x "
                     f"| {r['first_epoch_s']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60_000, help="training images for the autoencoder epochs")
    parser.add_argument("--gan-steps", type=int, default=300, help="DCGAN steps timed after the warm-up")
    args = parser.parse_args()
    x_train = load_mnist()[0][: args.images]
    results = {"stacked_ae": autoencoder_speed(x_train), "dcgan": dcgan_speed(x_train, args.gan_steps)}
    print(table("stacked AE, batch 32", results["stacked_ae"]))
    print()
    print(table("DCGAN, batch 32", results["dcgan"]))
    print("saved", save_results("speed", results))


if __name__ == "__main__":
    main()
