"""Model quality on the real MNIST at fixed budgets: ours side by side with the seed notebook's code.

    python benchmarks/quality.py [--epochs 3] [--only autoencoders,vae,classifier] [--variants stacked_ae,...]

- Autoencoders: test reconstruction MSE (10,000 test digits) of each variant, our registry preset vs the
  notebook's architecture trained by the notebook's code, same epochs and batch size.
- VAE: test -ELBO (nats per image, Bernoulli likelihood) and reconstruction MSE, dense and conv.
- Few labels: a conv autoencoder pretrained on all 60,000 training images (labels unused), then a classifier on
  its encoder with 10 and 100 labels per class, frozen -> unfrozen, vs the same network from scratch.
Results: benchmarks/results/quality.json (a rerun of some parts or variants updates just those) and Markdown.
"""
import argparse

from common import Timer, load_mnist, load_results, save_results  # first: sets up sys.path and the environment
import numpy as np
import tensorflow as tf

import notebook_models
from trainers import autoencoders, classifier, registry, vae

AE_VARIANTS = ("stacked_ae", "tied_ae", "conv_ae", "recurrent_ae", "denoising_ae", "sparse_l1_ae", "sparse_kl_ae")


def batches(x, batch_size, shuffle=True):
    dataset = tf.data.Dataset.from_tensor_slices(x)
    if shuffle:
        dataset = dataset.shuffle(10_000, seed=0)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def test_mse(model, x_test):
    reconstructions = model.predict(x_test, batch_size=500, verbose=0)
    return float(np.mean(np.square(reconstructions - x_test)))


def autoencoder_quality(x_train, x_test, epochs, variants=AE_VARIANTS):
    rows = {}
    for name in variants:
        config = registry.make_config(name, {"epochs": epochs})
        with Timer() as ours_time:
            ours, _ = autoencoders.train(config, (28, 28, 1), batches(x_train, config.batch_size))
        with Timer() as seed_time:
            seed = notebook_models.train_autoencoder(name, x_train, epochs)
        rows[name] = {"ours_mse": test_mse(ours, x_test), "notebook_mse": test_mse(seed, x_test),
                      "ours_s": ours_time.seconds, "notebook_s": seed_time.seconds}
        print(name, rows[name], flush=True)
    return rows


def vae_quality(x_train, x_test, epochs):
    rows = {}
    for name in ("vae", "conv_vae"):
        config = registry.make_config(name, {"epochs": epochs})
        with Timer() as elapsed:
            model, _ = vae.train(config, (28, 28, 1), batches(x_train, config.batch_size))
        tf.random.set_seed(0)
        logs = model.evaluate(batches(x_test, 500, shuffle=False), verbose=0, return_dict=True)
        rows[name] = {"test_neg_elbo": logs["neg_elbo"], "test_kl": logs["kl_loss"],
                      "test_mse": test_mse(model, x_test), "seconds": elapsed.seconds}
        print(name, rows[name], flush=True)
    return rows


def few_label_quality(x_train, y_train, x_test, y_test, pretrain_epochs, labels_per_class_options=(10, 100)):
    config = registry.make_config("conv_ae", {"epochs": pretrain_epochs})
    pretrained, _ = autoencoders.train(config, (28, 28, 1), batches(x_train, config.batch_size))
    encoder = classifier.reusable_encoder(pretrained)
    rng = np.random.default_rng(0)
    rows = {}
    for per_class in labels_per_class_options:
        chosen = np.concatenate([rng.choice(np.flatnonzero(y_train == k), per_class, replace=False)
                                 for k in range(10)])
        labelled = tf.data.Dataset.from_tensor_slices((x_train[chosen], y_train[chosen]))
        labelled = labelled.shuffle(len(chosen), seed=0).batch(32)
        # A few hundred steps in every case: the epochs scale with the number of labels.
        epochs = max(10, 3000 // len(chosen))
        clf_config = classifier.ClassifierConfig(epochs=epochs, unfrozen_epochs=epochs)
        accuracy = lambda model: float(np.mean(np.argmax(model.predict(x_test, batch_size=500, verbose=0), 1)
                                               == y_test))
        model = classifier.build_classifier(clf_config, classifier.copy_encoder(encoder))
        classifier.train_frozen(clf_config, model, labelled)
        frozen_accuracy = accuracy(model)
        classifier.train_unfrozen(clf_config, model, labelled)
        unfrozen_accuracy = accuracy(model)
        scratch, _ = classifier.train_from_scratch(clf_config, encoder, labelled)
        rows[f"{per_class}_per_class"] = {"labels": len(chosen), "epochs_per_phase": epochs,
                                          "frozen": frozen_accuracy, "frozen_then_unfrozen": unfrozen_accuracy,
                                          "scratch": accuracy(scratch)}
        print(per_class, rows[f"{per_class}_per_class"], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every autoencoder and VAE")
    parser.add_argument("--only", default="autoencoders,vae,classifier")
    parser.add_argument("--variants", default=",".join(AE_VARIANTS), help="autoencoder variants to compare")
    args = parser.parse_args()
    x_train, y_train, x_test, y_test = load_mnist()
    parts = args.only.split(",")
    results = load_results("quality")
    if results.get("epochs") != args.epochs:
        results = {"epochs": args.epochs}
    if "autoencoders" in parts:
        results.setdefault("autoencoders", {}).update(
            autoencoder_quality(x_train, x_test, args.epochs, args.variants.split(",")))
    if "vae" in parts:
        results["vae"] = vae_quality(x_train, x_test, args.epochs)
    if "classifier" in parts:
        results["few_labels"] = few_label_quality(x_train, y_train, x_test, y_test, args.epochs)
    print("saved", save_results("quality", results))
    if "autoencoders" in results:
        print(f"\n| variant ({args.epochs} epochs, batch 32) | ours test MSE | notebook test MSE |\n|---|---|---|")
        for name, r in results["autoencoders"].items():
            print(f"| {name} | {r['ours_mse']:.4f} | {r['notebook_mse']:.4f} |")
    if "vae" in results:
        print("\n| VAE | test -ELBO (nats) | test KL | test MSE |\n|---|---|---|---|")
        for name, r in results["vae"].items():
            print(f"| {name} | {r['test_neg_elbo']:.1f} | {r['test_kl']:.1f} | {r['test_mse']:.4f} |")
    if "few_labels" in results:
        print("\n| labels | frozen | frozen -> unfrozen | from scratch |\n|---|---|---|---|")
        for r in results["few_labels"].values():
            print(f"| {r['labels']} | {r['frozen']:.3f} | {r['frozen_then_unfrozen']:.3f} | {r['scratch']:.3f} |")


if __name__ == "__main__":
    main()
