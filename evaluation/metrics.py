"""The scores themselves, on plain arrays: reconstruction errors, the negative ELBO, AUROC, accuracy, the Frechet
distance and KID of feature sets, improved precision and recall, mode coverage. No models, no files: the metric
network (evaluation/metric_network.py) turns images into the features these compare, and the scorers
(evaluation/scorers.py) call them on what a SavedModel computes."""
import math
from typing import Any, Dict, Tuple

import numpy as np
import scipy.linalg
import scipy.stats


def to_unit(images: np.ndarray, pixel_range: str) -> np.ndarray:
    images = np.asarray(images, np.float32)
    return (images + 1.0) / 2.0 if pixel_range == "symmetric" else images


def reconstruction_errors(images: np.ndarray, reconstructions: np.ndarray, pixel_range: str) -> Dict[str, np.ndarray]:
    """Per example: mean squared error and binary cross-entropy per pixel, both on [0, 1] pixels."""
    x = to_unit(images, pixel_range).reshape(len(images), -1)
    p = np.clip(to_unit(reconstructions, pixel_range).reshape(len(images), -1), 1e-7, 1 - 1e-7)
    return {"mse": np.mean(np.square(x - p), axis=1),
            "bce": -np.mean(x * np.log(p) + (1 - x) * np.log(1 - p), axis=1)}


def negative_elbo(images: np.ndarray, mean: np.ndarray, log_var: np.ndarray, decoded: np.ndarray,
                  reconstruction: str) -> Dict[str, np.ndarray]:
    """Per example, as the VAE trains (trainers/vae.py): reconstruction (summed Bernoulli NLL in nats, or summed
    squared error) + KL(q(z|x) || N(0, I)), `decoded` being the decoder's output for one sampled coding."""
    x = images.reshape(len(images), -1).astype(np.float64)
    p = np.clip(decoded.reshape(len(images), -1).astype(np.float64), 1e-7, 1 - 1e-7)
    if reconstruction == "bce":
        rebuilt = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=1)
    else:
        rebuilt = np.sum(np.square(x - p), axis=1)
    kl = -0.5 * np.sum(1.0 + log_var - np.square(mean) - np.exp(log_var), axis=1)
    return {"neg_elbo": rebuilt + kl, "reconstruction": rebuilt, "kl": kl}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the boolean `positive` (Mann-Whitney U; ties count half)."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes: {n_pos} positive and {n_neg} negative examples")
    ranks = scipy.stats.rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_scores(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> Dict[str, Any]:
    confusion = np.zeros((num_classes, num_classes), np.int64)  # rows: true class, columns: predicted
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
            "per_class_accuracy": per_class.tolist(), "confusion_matrix": confusion.tolist()}


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two Gaussians (Heusel et al. 2017)."""
    covmean, _ = scipy.linalg.sqrtm(cov_a @ cov_b, disp=False)
    # A near-singular product (fewer samples than feature dimensions: 1,000 images in Inception's 2,048) gives a
    # square root that is not finite or far from real: regularise, as the reference implementations do.
    scale = max(float(np.abs(np.diag(cov_a)).max(initial=0.0)), float(np.abs(np.diag(cov_b)).max(initial=0.0)), 1e-12)
    if not np.isfinite(covmean).all() or np.abs(np.imag(covmean)).max(initial=0.0) > 1e-3 * scale:
        offset = np.eye(len(cov_a)) * 1e-6 * scale
        covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    diff = mean_a - mean_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean.real))


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray, subsets: int = 10,
                              subset_size: int = 1000, seed: int = 0) -> Tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 (Binkowski et al. 2018), averaged over
    random subsets: (mean, standard deviation)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors on each side; got {len(a)} and {len(b)}")
    kernel = lambda x, y: (x @ y.T / x.shape[1] + 1.0) ** 3
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
        values.append((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
                      - 2.0 * k_xy.mean())
    return float(np.mean(values)), float(np.std(values))


def class_histogram(classes: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(classes, np.int64), minlength=num_classes)[:num_classes] / max(len(classes), 1)


def mode_coverage(predicted_classes: np.ndarray, real_histogram: np.ndarray) -> Dict[str, float]:
    """Entropy (nats) of the predicted-class histogram and its KL divergence to the real one."""
    generated = class_histogram(predicted_classes, len(real_histogram))
    nonzero = generated > 0
    entropy = max(0.0, -float(np.sum(generated[nonzero] * np.log(generated[nonzero]))))  # no -0.0
    kl = float(np.sum(generated[nonzero] * np.log(generated[nonzero] / np.maximum(real_histogram[nonzero], 1e-12))))
    return {"mode_entropy": entropy, "mode_kl": kl, "mode_entropy_max": math.log(len(real_histogram)),
            "modes_covered": int(nonzero.sum())}


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(squared, 0.0))


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3, seed: int = 0) -> Dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls around
    its points reaching their k-th nearest neighbour. precision: the share of generated points inside the real
    manifold (fidelity); recall: the share of real points inside the generated one (coverage). Both sets are
    cut to the smaller one's size first (the estimate depends on the counts; the paper uses equal ones)."""
    rng = np.random.default_rng(seed)
    count = min(len(real), len(generated))
    if count <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} feature vectors on each side; got "
                         f"{len(real)} real and {len(generated)} generated")
    real = np.asarray(real, np.float64)[rng.choice(len(real), count, replace=False)]
    generated = np.asarray(generated, np.float64)[rng.choice(len(generated), count, replace=False)]

    def radii(points):  # distance to the k-th nearest other point (column 0 of the sort is the point itself)
        return np.sort(_pairwise_distances(points, points), axis=1)[:, k]

    across = _pairwise_distances(generated, real)  # (generated, real)
    precision = np.mean(np.any(across <= radii(real)[None, :], axis=1))
    recall = np.mean(np.any(across.T <= radii(generated)[None, :], axis=1))
    return {"precision": float(precision), "recall": float(recall)}
