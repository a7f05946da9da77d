"""Anomaly scores side by side on the same autoencoders: the reconstruction error the SavedModel exports (what the
server's :detect applies) against the Mahalanobis distance of the image's coding under a Gaussian fitted to the
codings of normal training images, and the two combined (each log-scaled and standardised on those training
images, then summed).

    python benchmarks/anomaly_scores.py 0=DIR 1=DIR ... [--fit-images 20000] [--name anomaly_scores] [--note TEXT]

Each K=DIR is a SavedModel of an autoencoder trained without class K (`latentforge run --source idx:... --model
conv_ae --anomaly-class K` keeps it in RUN_DIR/PIPELINE/tfx/Trainer/model/N/Format-Serving). Reported per held-out
class, on the full MNIST test split (class K positive, the rest normal): AUROC, and the recall at a 1 % false-
positive rate with the threshold read off the test split's own normal images: a comparison of the scores, not
the pipeline's calibrated decision (the Evaluator measures that one).
"""
import argparse

from common import load_mnist, save_results  # first: sets up sys.path and the environment
import numpy as np


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a positive scores above a negative (Mann-Whitney U, ties counted half)."""
    from scipy.stats import rankdata  # pylint: disable=import-outside-toplevel
    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_at(scores: np.ndarray, positive: np.ndarray, false_positive_rate: float) -> float:
    normal = np.sort(scores[~positive])
    threshold = normal[int(np.ceil((1 - false_positive_rate) * len(normal))) - 1]
    return float(np.mean(scores[positive] > threshold))


def run_signature(model, signature: str, output: str, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    function = model.signatures[signature]
    return np.concatenate([function(images=tf.constant(images[s:s + 1000]))[output].numpy()
                           for s in range(0, len(images), 1000)])


def score_one(directory: str, held_out: int, fit_images: int, data) -> dict:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    x_train, y_train, x_test, y_test = data
    model = tf.saved_model.load(directory)
    normal_train = x_train[y_train != held_out][:fit_images]
    fit = run_signature(model, "encode", "codings", normal_train).reshape(len(normal_train), -1).astype(np.float64)
    mean = fit.mean(axis=0)
    precision = np.linalg.inv(np.cov(fit, rowvar=False) + 1e-6 * np.eye(fit.shape[1]))

    def mahalanobis(images):
        centred = run_signature(model, "encode", "codings", images).reshape(len(images), -1) - mean
        return np.einsum("ij,jk,ik->i", centred, precision, centred)

    def reconstruction(images):
        return run_signature(model, "anomaly_score", "scores", images).astype(np.float64)

    scores = {name: (f(normal_train), f(x_test)) for name, f in
              (("reconstruction", reconstruction), ("mahalanobis", mahalanobis))}
    standardised = []
    for train_scores, test_scores in scores.values():
        log_train, log_test = np.log(train_scores + 1e-12), np.log(test_scores + 1e-12)
        standardised.append((log_test - log_train.mean()) / log_train.std())
    test_scores = {name: s[1] for name, s in scores.items()}
    test_scores["sum"] = standardised[0] + standardised[1]
    positive = y_test == held_out
    return {name: {"auroc": round(auroc(s, positive), 4), "recall_at_1pct": round(recall_at(s, positive, 0.01), 4)}
            for name, s in test_scores.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="K=DIR", help="an autoencoder trained without class K")
    parser.add_argument("--fit-images", type=int, default=20000,
                        help="normal training images the codings' Gaussian is fitted on (default 20000)")
    parser.add_argument("--name", default="anomaly_scores",
                        help="results file, benchmarks/results/NAME.json (default anomaly_scores)")
    parser.add_argument("--note", default="", help="what the models are, kept in the results file")
    args = parser.parse_args()
    data = load_mnist()
    results = {}
    for text in args.models:
        held_out, _, directory = text.partition("=")
        if not held_out.isdigit() or not directory:
            parser.error(f"{text!r}: give K=DIR, e.g. 7=runs/latentforge/tfx/Trainer/model/12/Format-Serving")
        results[held_out] = score_one(directory, int(held_out), args.fit_images, data)
        print(held_out, results[held_out], flush=True)
    print("held out | " + " | ".join(f"{n} AUROC / recall@1%" for n in next(iter(results.values()))))
    for held_out, by_score in results.items():
        print(f"{held_out} | " + " | ".join(f"{v['auroc']:.3f} / {v['recall_at_1pct']:.3f}" for v in by_score.values()))
    print("saved", save_results(args.name, {"models": args.note, "fit_images": args.fit_images,
                                             "held_out": results}))


if __name__ == "__main__":
    main()
