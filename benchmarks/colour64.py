"""Unlabelled 64x64 colour images: DCGAN and DDPM with the networks their families' size rule picks for 64 pixels
(trainers/registry.py: one more stride-2 stage / U-Net level than the 28-32 pixel presets), scored in a
self-supervised feature space trained on the same images (no labels anywhere).

    python benchmarks/colour64.py [--train 20000] [--steps dcgan=3000,ddpm=1500] [--samples 1000]

The data is scripts/make_colour_mnist.py's at --size 64 (MNIST digits tinted with a random ink and background
colour, resized up bicubically), made in memory from the real MNIST. Budgets are in training steps (the same work
whatever else runs on the machine); each model's seconds are reported beside them. Each model is scored from its
exported SavedModel as the Evaluator scores it, at its best epoch by the sample-quality proxy and at its last.
Results: benchmarks/results/colour64.json, pictures benchmarks/results/colour64-MODEL.png, a Markdown table.
"""
import argparse
import importlib.util
import os
import tempfile
import time

from common import REPO_ROOT, RESULTS_DIR, MNIST_DIR, Timer, save_results  # first: sys.path, environment
import numpy as np
import tensorflow as tf

from evaluation import figures, scoring, self_supervised
from generative import WallClockBudget, score
from trainers import best_epoch, registry

SHAPE = (64, 64, 3)


def colour_digits(count: int, split: str, seed: int) -> np.ndarray:
    """(count, 64, 64, 3) float32 in [0, 1] from scripts/make_colour_mnist.py's recipe."""
    spec = importlib.util.spec_from_file_location("make_colour_mnist",
                                                  os.path.join(REPO_ROOT, "scripts", "make_colour_mnist.py"))
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    stem = "train" if split == "train" else "t10k"
    digits = maker.read_idx(maker.find(MNIST_DIR, f"{stem}-images-idx3-ubyte"))[:count]
    return maker.resized(maker.colour(digits, np.random.default_rng(seed)), SHAPE[0]).astype(np.float32) / 255.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--steps", default="dcgan=3000,ddpm=1500")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--ssl-epochs", type=int, default=10)
    parser.add_argument("--epoch-images", type=int, default=4000,
                        help="images per 'epoch' between two proxy measurements (the best epoch's granularity)")
    args = parser.parse_args()
    x_train, x_test = colour_digits(args.train, "train", 0), colour_digits(2000, "test", 1)
    work = tempfile.mkdtemp(prefix="colour64-")
    results = {"train_images": len(x_train), "image_shape": list(SHAPE), "samples": args.samples, "models": {}}

    config = scoring.MetricNetworkConfig(method="self_supervised", seed=0)
    with Timer() as timer:
        encoder = self_supervised.train_contrastive(x_train, config, args.ssl_epochs).encoder
    scoring.export_metric_network(self_supervised.feature_model(encoder), os.path.join(work, "features", "saved_model"))
    network = scoring.MetricNetwork(os.path.join(work, "features", "saved_model"))
    reference = scoring.FeatureReference.from_features(network(x_train)[0], None, 0)
    reference.save(os.path.join(work, "features"))
    results["feature_network"] = {"epochs": args.ssl_epochs, "train_s": timer.seconds,
                                  "floor": scoring.generative_scores(x_test[:args.samples], network, reference)}
    print("feature network", results["feature_network"], flush=True)
    figures.save_png(os.path.join(RESULTS_DIR, "colour64-data.png"), figures.image_grid(x_test[:32], 8))

    for item in args.steps.split(","):
        name, steps = item.split("=")
        entry = registry.get_model(name)
        sized = registry.sized_for(name, SHAPE, {})
        model_config = registry.make_config(name, {"epochs": 10_000, **sized})
        pixels = x_train * 2.0 - 1.0 if entry.pixel_range == "symmetric" else x_train
        steps_per_epoch = max(1, args.epoch_images // model_config.batch_size)
        data = (tf.data.Dataset.from_tensor_slices(pixels).shuffle(10_000, seed=0).repeat()
                .batch(model_config.batch_size).take(steps_per_epoch).prefetch(2))
        model = entry.build(model_config, SHAPE)
        proxy = best_epoch.SampleQualityProxy(entry.family, SHAPE, entry.pixel_range, os.path.join(
            work, "features", "saved_model"), os.path.join(work, "features"), seed=model_config.seed)
        budget = WallClockBudget(0, int(steps))
        started = time.perf_counter()
        history = entry.family.fit(model, model_config, data, None, [proxy, budget], 0)
        train_s = time.perf_counter() - started
        row = {"sized": {k: list(v) for k, v in sized.items()}, "steps": budget.steps, "train_s": train_s,
               "batch_size": model_config.batch_size, "epochs": len(history.get(best_epoch.PROXY_METRIC, [])),
               "proxy": history.get(best_epoch.PROXY_METRIC), "proxy_s": sum(history.get(best_epoch.PROXY_SECONDS, []))}
        inputs = {"steps": model_config.sample_steps} if hasattr(model_config, "sample_steps") else {}
        samples, row["last"] = score(entry, model, os.path.join(work, name + "-last"), args.samples, network,
                                     reference, inputs, shape=SHAPE)
        figures.save_png(os.path.join(RESULTS_DIR, f"colour64-{name}-last.png"), figures.image_grid(samples[:64], 8))
        row["kept_epoch"] = proxy.restore_best(model)
        samples, row["best"] = score(entry, model, os.path.join(work, name + "-best"), args.samples, network,
                                     reference, inputs, shape=SHAPE)
        figures.save_png(os.path.join(RESULTS_DIR, f"colour64-{name}.png"), figures.image_grid(samples[:64], 8))
        results["models"][name] = row
        print(name, row, flush=True)
        save_results("colour64", results)
    print_table(results)


def print_table(results):
    floor = results["feature_network"]["floor"]
    print(f"\n| model | sized for 64x64 | steps (batch) | train min | proxy share | FID best epoch (kept) | FID last | "
          f"KID x1e3 best | precision / recall best |\n|---|---|---|---|---|---|---|---|---|")
    print(f"| real test images | - | - | - | - | {floor['fid']:.3f} | - | {floor['kid_x1e3']:.1f} | "
          f"{floor['precision']:.2f} / {floor['recall']:.2f} |")
    for name, r in results["models"].items():
        b, last = r["best"], r["last"]
        sized = ", ".join(f"{k}={v}" for k, v in r["sized"].items())
        print(f"| {name} | {sized} | {r['steps']:,} ({r['batch_size']}) | {r['train_s'] / 60:.1f} | "
              f"{r['proxy_s'] / r['train_s']:.1%} | {b['fid']:.3f} ({r['kept_epoch']}/{r['epochs']}) | "
              f"{last['fid']:.3f} | {b['kid_x1e3']:.1f} | {b['precision']:.2f} / {b['recall']:.2f} |")


if __name__ == "__main__":
    main()
