"""Does the label-free feature space rank generative models as the labelled one does? On the real MNIST: the
labelled metric network (a classifier, as the pipeline's MetricNetworkTrainer trains it on a labelled source) and
the self-supervised encoder (evaluation/self_supervised.py, as it trains on an unlabelled source) both learn the
60,000 training digits; models of clearly different quality (a DCGAN's checkpoints along one run, VAEs, a WGAN-GP,
a short DDPM) are scored in both spaces on the same samples; Spearman's rank correlation of their FIDs (and KIDs)
says whether the two spaces agree.

    python benchmarks/feature_spaces.py [--samples 2000] [--ssl-epochs 10] [--quick]

Results: benchmarks/results/feature_spaces.json, benchmarks/results/feature-spaces.png (the two FIDs of each model,
log-log), benchmarks/results/feature-spaces-samples.png (a row of samples per model, in FID order), a Markdown
table. Run it from a copy of the tree (AutoGraph reads source files while tracing).
"""
import argparse
import os
import tempfile
import time

from common import RESULTS_DIR, Timer, load_mnist, save_results  # first: sys.path, environment
import numpy as np
import scipy.stats
import tensorflow as tf

from evaluation import figures, scoring, self_supervised
from generative import WallClockBudget, score
from trainers import registry

# (name, model, training budget): the DCGAN's rows are checkpoints of one run, trained on from the previous one.
MODELS = (("dcgan@150", "dcgan", {"steps": 150}), ("dcgan@500", "dcgan", {"steps": 500}),
          ("dcgan@1500", "dcgan", {"steps": 1500}), ("dcgan@5000", "dcgan", {"steps": 5000}),
          ("vae@300", "vae", {"steps": 300}), ("conv_vae@3000", "conv_vae", {"steps": 3000}),
          ("wgan_gp@1500", "wgan_gp", {"steps": 1500}), ("ddpm@4min", "ddpm", {"minutes": 4}))


def feature_network(kind, x_train, y_train, epochs, directory):
    config = scoring.MetricNetworkConfig(epochs=epochs, method=kind)
    with Timer() as timer:
        if kind == "classifier":
            model = scoring.build_metric_network((28, 28, 1), 10, config)
            model.fit(x_train, y_train, batch_size=config.batch_size, epochs=epochs, verbose=2)
        else:
            model = self_supervised.feature_model(self_supervised.train_contrastive(x_train, config, epochs).encoder)
    scoring.export_metric_network(model, directory)
    network = scoring.MetricNetwork(directory)
    train_features, _ = network(x_train)
    reference = scoring.FeatureReference.from_features(train_features, y_train, 10 if kind == "classifier" else 0)
    return network, reference, train_features, timer.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="generated images scored per model")
    parser.add_argument("--classifier-epochs", type=int, default=3)
    parser.add_argument("--ssl-epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a tenth of every budget (a check, not a result)")
    args = parser.parse_args()
    x_train, y_train, x_test, y_test = load_mnist()
    work = tempfile.mkdtemp(prefix="feature-spaces-")
    spaces, results = {}, {"samples": args.samples, "models": {}}
    for kind, epochs in (("classifier", args.classifier_epochs), ("self_supervised", args.ssl_epochs)):
        network, reference, train_features, seconds = feature_network(
            kind, x_train, y_train, max(1, epochs // (10 if args.quick else 1)), os.path.join(work, kind))
        test_features, _ = network(x_test)
        spaces[kind] = (network, reference)
        results[kind] = {"epochs": epochs, "train_s": seconds,
                         "test_nearest_neighbour_accuracy": self_supervised.nearest_neighbour_accuracy(
                             train_features, y_train, test_features, y_test),
                         "floor": scoring.generative_scores(x_test[:args.samples], network, reference)}
        print(kind, results[kind], flush=True)

    rows, trained = {}, {}
    for name, model_name, budget in MODELS:
        entry = registry.get_model(model_name)
        if model_name not in trained:
            config = registry.make_config(model_name, {"epochs": 10_000})
            pixels = x_train * 2.0 - 1.0 if entry.pixel_range == "symmetric" else x_train
            data = tf.data.Dataset.from_tensor_slices(pixels).shuffle(10_000, seed=0).batch(
                config.batch_size).prefetch(2)
            trained[model_name] = {"model": entry.build(config, (28, 28, 1)), "config": config, "data": data,
                                   "steps": 0, "seconds": 0.0}
        state = trained[model_name]
        steps = budget.get("steps", 0) - state["steps"]
        seconds = 60 * budget.get("minutes", 0)
        scale = 10 if args.quick else 1
        callback = WallClockBudget(seconds / scale, max(1, steps // scale) if steps else 0)
        started = time.perf_counter()
        entry.family.fit(state["model"], state["config"], state["data"], None, [callback], 0)
        state["steps"] += callback.steps
        state["seconds"] += time.perf_counter() - started
        row = {"model": model_name, "steps": state["steps"], "train_s": state["seconds"]}
        steps_input = getattr(state["config"], "sample_steps", None)
        samples = None
        for kind, (network, reference) in spaces.items():
            samples, row[kind] = score(entry, state["model"], os.path.join(work, name), args.samples, network,
                                       reference, {"steps": steps_input} if steps_input else {},
                                       export_first=samples is None)
        rows[name] = samples[:10]
        results["models"][name] = row
        print(name, row, flush=True)
        save_results("feature_spaces", results)

    names = list(results["models"])
    for metric in ("fid", "kid_x1e3"):
        labelled = [results["models"][n]["classifier"][metric] for n in names]
        free = [results["models"][n]["self_supervised"][metric] for n in names]
        results[f"spearman_{metric}"] = float(scipy.stats.spearmanr(labelled, free).statistic)
    for metric in ("precision", "recall"):
        labelled = [results["models"][n]["classifier"][metric] for n in names]
        free = [results["models"][n]["self_supervised"][metric] for n in names]
        results[f"spearman_{metric}"] = float(scipy.stats.spearmanr(labelled, free).statistic)
    print("saved", save_results("feature_spaces", results))
    plot(results, rows)
    print_table(results)


def plot(results, rows):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    models = results["models"]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, row in models.items():
        x, y = row["classifier"]["fid"], row["self_supervised"]["fid"]
        ax.scatter(x, y, color="tab:blue")
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FID, labelled metric network")
    ax.set_ylabel("FID, self-supervised encoder")
    ax.set_title(f"MNIST, {results['samples']} samples each: Spearman {results['spearman_fid']:.2f}")
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS_DIR, "feature-spaces.png"), dpi=120)
    order = sorted(models, key=lambda n: models[n]["classifier"]["fid"])
    figures.save_png(os.path.join(RESULTS_DIR, "feature-spaces-samples.png"),
                     figures.image_grid(np.concatenate([rows[n] for n in order]), 10))


def print_table(results):
    print("\n| model | steps | FID (labelled) | FID (self-supervised) | KID x1e3 (labelled) | KID x1e3 (self-sup.) | "
          "precision / recall (labelled) | precision / recall (self-sup.) |\n|---|---|---|---|---|---|---|---|")
    rows = [("real test digits", "-", results["classifier"]["floor"], results["self_supervised"]["floor"])]
    rows += [(n, f"{r['steps']:,}", r["classifier"], r["self_supervised"]) for n, r in results["models"].items()]
    for name, steps, a, b in rows:
        print(f"| {name} | {steps} | {a['fid']:.2f} | {b['fid']:.3f} | {a['kid_x1e3']:.1f} | {b['kid_x1e3']:.2f} | "
              f"{a['precision']:.2f} / {a['recall']:.2f} | {b['precision']:.2f} / {b['recall']:.2f} |")
    print(f"\nSpearman: FID {results['spearman_fid']:.3f}, KID {results['spearman_kid_x1e3']:.3f}, precision "
          f"{results['spearman_precision']:.3f}, recall {results['spearman_recall']:.3f}")


if __name__ == "__main__":
    main()
