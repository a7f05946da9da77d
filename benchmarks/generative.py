"""Generative quality on the real MNIST: domain FID, KID and mode coverage of VAE, DCGAN, WGAN-GP and DDPM.

    python benchmarks/generative.py [--epochs vae=10,dcgan=3,wgan_gp=3,ddpm=3] [--samples 1000]
                                    [--full-samples 200] [--only vae,dcgan,...]

The metric network (evaluation.scoring, as the pipeline's MetricNetworkTrainer trains it) learns the 60,000
labelled training digits; its features of the training split are the reference. Each model trains on the
60,000 training digits for the stated epochs, is exported as the pipeline exports it, and is scored from its
SavedModel exactly as the ModelEvaluator scores it. DDPM is sampled twice: DDIM with 50 steps and DDPM's full
ancestral sampling (all T steps), each timed; the full sampler is scored on `--full-samples` images (its cost),
and DDIM on the same number too, so the two compare like for like.
Results: benchmarks/results/generative.json, pictures in benchmarks/results/generative-*.png, a Markdown table.
"""
import argparse
import os
import tempfile

from common import RESULTS_DIR, Timer, load_mnist, load_results, save_results  # first: sys.path, environment
import numpy as np
import tensorflow as tf

from serving import export
from evaluation import figures, scoring
from trainers import registry

MODELS = ("vae", "dcgan", "wgan_gp", "ddpm")
DEFAULT_EPOCHS = {"vae": 10, "dcgan": 3, "wgan_gp": 3, "ddpm": 3}


def parse_epochs(text: str):
    epochs = dict(DEFAULT_EPOCHS)
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        epochs[name] = int(value)
    return epochs


def train_and_export(name, epochs, x_train, directory):
    entry = registry.get_model(name)
    config = registry.make_config(name, {"epochs": epochs})
    pixels = x_train * 2.0 - 1.0 if entry.pixel_range == "symmetric" else x_train
    data = tf.data.Dataset.from_tensor_slices(pixels).shuffle(10_000, seed=0).batch(config.batch_size).prefetch(2)
    with Timer() as timer:
        model, _ = entry.train(config, (28, 28, 1), data)
    export.export_model(entry.family, model, (28, 28, 1), directory, entry.pixel_range)
    return entry, config, model, timer.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", default="", help="per model, e.g. vae=10,dcgan=3 (defaults: %s)" % DEFAULT_EPOCHS)
    parser.add_argument("--samples", type=int, default=1000, help="generated images scored per model")
    parser.add_argument("--full-samples", type=int, default=200, help="DDPM images by full ancestral sampling")
    parser.add_argument("--metric-epochs", type=int, default=3)
    parser.add_argument("--only", default=",".join(MODELS))
    parser.add_argument("--train-subset", type=int, help="train the models on the first N digits (a quick check)")
    args = parser.parse_args()
    epochs = parse_epochs(args.epochs)
    x_train, y_train, x_test, y_test = load_mnist()
    model_train = x_train[:args.train_subset] if args.train_subset else x_train
    results = load_results("generative") if not args.train_subset else {}
    work = tempfile.mkdtemp(prefix="generative-")

    config = scoring.MetricNetworkConfig(epochs=args.metric_epochs)
    with Timer() as timer:
        network_model = scoring.build_metric_network((28, 28, 1), 10, config)
        network_model.fit(x_train, y_train, batch_size=config.batch_size, epochs=config.epochs, verbose=2)
    scoring.export_metric_network(network_model, os.path.join(work, "metric"))
    network = scoring.MetricNetwork(os.path.join(work, "metric"))
    train_features, _ = network(x_train)
    reference = scoring.FeatureReference.from_features(train_features, y_train, 10)
    test_scores = scoring.generative_scores(x_test[:args.samples], network, reference)
    _, predicted = network(x_test)
    results["metric_network"] = {"epochs": config.epochs, "seconds": timer.seconds,
                                 "test_accuracy": float(np.mean(predicted == y_test)),
                                 f"test_{args.samples}_vs_train": test_scores}
    print("metric network", results["metric_network"], flush=True)

    for name in args.only.split(","):
        directory = os.path.join(work, name)
        entry, model_config, model, seconds = train_and_export(name, epochs[name], model_train, directory)
        signatures = tf.saved_model.load(directory).signatures
        row = {"epochs": epochs[name], "train_images": len(model_train), "train_s": seconds,
               "batch_size": model_config.batch_size}
        steps = getattr(model_config, "sample_steps", None)
        with Timer() as timer:
            samples = scoring.generate(signatures[entry.family.generate_signature], args.samples, 0, 250,
                                       {"steps": steps} if steps else None)
        row.update(sample_s=timer.seconds, **scoring.generative_scores(samples, network,
                                                                                                 reference))
        pictures = RESULTS_DIR if not args.train_subset else work
        figures.save_png(os.path.join(pictures, f"generative-{name}.png"), figures.image_grid(samples[:64], 8))
        if name.startswith("ddpm"):
            count = args.full_samples
            with Timer() as ddim_timer:
                ddim = scoring.generate(signatures["generate"], count, 1, count, {"steps": steps})
            with Timer() as full_timer:
                full = (model.ancestral_sample(count, seed=1).numpy() + 1.0) / 2.0
            row["ddim_vs_full"] = {
                "samples": count, "timesteps": model_config.timesteps,
                f"ddim_{steps}": {"sample_s": ddim_timer.seconds, **scoring.generative_scores(ddim, network,
                                                                                                 reference)},
                "full_ancestral": {"sample_s": full_timer.seconds, **scoring.generative_scores(full, network,
                                                                                                   reference)}}
            figures.save_png(os.path.join(pictures, f"generative-{name}-full.png"), figures.image_grid(full[:64], 8))
        results[name] = row
        print(name, {k: v for k, v in row.items() if k != "ddim_vs_full"}, row.get("ddim_vs_full", ""), flush=True)
        if not args.train_subset:
            save_results("generative", results)

    print("\n| model | epochs (60k) | train s | FID | KID x1e3 | mode entropy (max 2.303) | mode KL | sampling s |")
    print("|---|---|---|---|---|---|---|---|")
    floor = results["metric_network"][f"test_{args.samples}_vs_train"]
    print(f"| real test digits (floor) | - | - | {floor['fid']:.2f} | {floor['kid_x1e3']:.2f} | "
          f"{floor['mode_entropy']:.3f} | {floor['mode_kl']:.4f} | - |")
    for name in MODELS:
        if name in results:
            r = results[name]
            print(f"| {name} | {r['epochs']} | {r['train_s']:.0f} | {r['fid']:.2f} | {r['kid_x1e3']:.2f} | "
                  f"{r['mode_entropy']:.3f} | {r['mode_kl']:.4f} | {r['sample_s']:.1f} ({r['samples']}) |")
    if not args.train_subset:
        print("saved", save_results("generative", results))


if __name__ == "__main__":
    main()
