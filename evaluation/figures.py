"""Pictures of a trained model a person looks at instead of reading numbers: PNGs beside its metrics.

    reconstructions.png  inputs (top row) over their reconstructions (autoencoders, VAEs)
    samples.png          an 8x8 grid of generated images (VAEs, GANs, DDPM by DDIM)
    interpolation.png    decoded codings along the line between two inputs (VAEs)
    classes.png          one row per class (conditional generators)
    guidance.png         one row per guidance scale, one column per class, the same noise (conditional DDPM)
    loss.png             the per-epoch training curves
and the Evaluator's:
    codings.png          the test codings projected on their first two principal components, coloured by label
    samples.png          generated images the scores were computed on
    modes.png            the metric network's class histogram of generated vs real images
    confusion.png        a classifier's confusion matrix on the test split
and the LabelEfficiencyCurve's:
    curve.png            test accuracy against labels per class, one line per method
"""
import os
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or a Ray worker
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W, C) floats in [0, 1] -> one uint8 image (rows*H + gaps, columns*W + gaps, C), 1-pixel gaps."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    count, height, width, channels = images.shape
    rows = -(-count // columns)
    grid = np.ones((rows * (height + 1) + 1, columns * (width + 1) + 1, channels), np.float32)
    for i, image in enumerate(images):
        top, left = 1 + (i // columns) * (height + 1), 1 + (i % columns) * (width + 1)
        grid[top:top + height, left:left + width] = image
    return np.round(grid * 255).astype(np.uint8)


def save_png(path: str, grid: np.ndarray, zoom: int = 2) -> str:
    """Writes a uint8 (H, W, C) image as PNG, each pixel a zoom x zoom block (28-pixel digits are small)."""
    tf.io.write_file(path, tf.io.encode_png(np.repeat(np.repeat(grid, zoom, axis=0), zoom, axis=1)))
    return path


def _save_figure(figure, path: str) -> str:
    """matplotlib writes into a file object: tf.io.gfile's, so `path` may be on object storage."""
    figure.tight_layout()
    with tf.io.gfile.GFile(path, "wb") as f:
        figure.savefig(f, dpi=80, format="png")
    plt.close(figure)
    return path


def save_loss_curves(path: str, history: Dict[str, List[float]]) -> str:
    """One panel per quantity, train and validation together."""
    names = sorted({k[len("val_"):] if k.startswith("val_") else k for k in history
                    if history[k] and k != "frozen_epochs"})
    figure, axes = plt.subplots(1, max(len(names), 1), figsize=(4 * max(len(names), 1), 3), squeeze=False)
    for axis, name in zip(axes[0], names):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in history:
                axis.plot(range(1, len(history[key]) + 1), history[key], marker="o", label=label)
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.legend()
    return _save_figure(figure, path)


def save_model_figures(family, model, inputs: np.ndarray, pixel_range: str, history: Dict[str, List[float]],
                       out_dir: str, seed: int = 0) -> Sequence[str]:
    """Writes the loss curves and the pictures of `family` (its description's `figures`, trainers/registry.py) for
    `inputs` (a batch in the model's pixel range) under out_dir."""
    tf.io.gfile.makedirs(out_dir)
    to_unit = (lambda x: (np.asarray(x) + 1.0) / 2.0) if pixel_range == "symmetric" else np.asarray
    paths = [save_loss_curves(os.path.join(out_dir, "loss.png"), history)]
    for figure in family.figures:
        paths += figure(model, inputs, to_unit, out_dir, seed)
    return paths


# Figures a family's description lists: each (model, inputs, to_unit, out_dir, seed) -> the paths it wrote.

def reconstructions(model, inputs, to_unit, out_dir: str, seed: int) -> List[str]:
    """reconstructions.png: up to 10 inputs (top row) over what the model makes of them."""
    del seed
    shown = inputs[:10]
    rebuilt = model(shown, training=False)
    return [save_png(os.path.join(out_dir, "reconstructions.png"),
                     image_grid(np.concatenate([to_unit(shown), to_unit(rebuilt)]), len(shown)))]


def samples(count: int, method: str = "generate"):
    """samples.png: `count` images from `model.<method>(count, seed=seed)`, 8 to a row."""
    def figure(model, inputs, to_unit, out_dir: str, seed: int) -> List[str]:
        del inputs
        return [save_png(os.path.join(out_dir, "samples.png"),
                         image_grid(to_unit(getattr(model, method)(count, seed=seed)), 8))]
    return figure


def class_rows(columns: int, method: str = "generate"):
    """classes.png: `columns` images of each class, one row per class (`model.<method>(n, seed, labels=...)`)."""
    def figure(model, inputs, to_unit, out_dir: str, seed: int) -> List[str]:
        del inputs
        labels = np.repeat(np.arange(model.num_classes), columns)
        images = getattr(model, method)(len(labels), seed=seed, labels=labels)
        return [save_png(os.path.join(out_dir, "classes.png"), image_grid(to_unit(images), columns))]
    return figure


def guidance_strip(scales: Sequence[float]):
    """guidance.png: a row per guidance scale (0: unconditional, 1: conditional, more: guided), a column per
    class, every row from the same noise, so the rows show what guidance changes."""
    def figure(model, inputs, to_unit, out_dir: str, seed: int) -> List[str]:
        del inputs
        labels = np.arange(model.num_classes)
        rows = [to_unit(model.generate(len(labels), seed=seed, labels=labels, guidance=scale)) for scale in scales]
        return [save_png(os.path.join(out_dir, "guidance.png"), image_grid(np.concatenate(rows), len(labels)))]
    return figure


def growth_rows(columns: int):
    """growth.png, for a progressive GAN: a row per resolution it reached (coarsest first, the current level last,
    mid-fade if training stopped there), the same codings in every row; nothing for other models."""
    def figure(model, inputs, to_unit, out_dir: str, seed: int) -> List[str]:
        del inputs
        if getattr(model, "growth", None) is None:
            return []
        rows = [to_unit(model.generate(columns, seed=seed, level_of_detail=level))
                for level in progressive_levels(model.growth)]
        return [save_png(os.path.join(out_dir, "growth.png"), image_grid(np.concatenate(rows), columns))]
    return figure


def progressive_levels(growth) -> List[float]:
    """The whole levels of detail from the coarsest to the current one (the current one last, even mid-fade)."""
    current = float(growth.level_of_detail())
    return [float(level) for level in range(growth.doublings, -1, -1) if level > current] + [current]


def style_mixing(sources: int = 5):
    """style_mixing.png, StyleGAN's figure: the top row `sources` images of seeds B, the left column of seeds A, and
    cell (i, j) the image with A_i's coarse styles (the first half of the layers) and B_j's fine ones
    (`model.mix_styles`)."""
    def figure(model, inputs, to_unit, out_dir: str, seed: int) -> List[str]:
        del inputs
        seeds_a, seeds_b = [seed + i for i in range(sources)], [seed + 100 + j for j in range(sources)]
        crossover = model.style_layers // 2
        pure = lambda s: to_unit(model.generate(1, seed=s))[0]
        blank = np.ones_like(pure(seeds_b[0]))
        cells = [blank] + [pure(b) for b in seeds_b]
        for a in seeds_a:
            cells += [pure(a)] + [to_unit(model.mix_styles(a, b, crossover))[0] for b in seeds_b]
        return [save_png(os.path.join(out_dir, "style_mixing.png"), image_grid(np.stack(cells), sources + 1))]
    return figure


def truncation_strip(psis: Sequence[float] = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0), columns: int = 8):
    """truncation.png: a row per truncation psi (1: none; 0: every image the average w's), the same seeds in every
    row, so the rows show variety traded for typicality."""
    def figure(model, inputs, to_unit, out_dir: str, seed: int) -> List[str]:
        del inputs
        rows = [to_unit(model.generate(columns, seed=seed, truncation=psi)) for psi in psis]
        return [save_png(os.path.join(out_dir, "truncation.png"), image_grid(np.concatenate(rows), columns))]
    return figure


def interpolation(model, inputs, to_unit, out_dir: str, seed: int) -> List[str]:
    """interpolation.png: `model.interpolate` (decoded codings) between the first two inputs, 10 steps."""
    del seed
    if len(inputs) < 2:
        return []
    strip = model.interpolate(inputs[0], inputs[1], steps=10)
    return [save_png(os.path.join(out_dir, "interpolation.png"), image_grid(to_unit(strip), 10))]


def _class_label(class_names: Sequence[str], k: int) -> str:
    return str(class_names[k]) if k < len(class_names) else str(k)


def save_codings_map(path: str, codings: np.ndarray, labels: np.ndarray, class_names: Sequence[str] = ()) -> str:
    """Codings (N, D) projected on their first two principal components (D = 2: as they are), a colour per class
    named in the legend (the source's class names; ids when it has none), unlabelled points grey."""
    codings = np.asarray(codings, np.float64).reshape(len(codings), -1)
    centred = codings - codings.mean(axis=0)
    if codings.shape[1] > 2:
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        centred = centred @ components[:2].T
    labels = np.asarray(labels)
    figure, axis = plt.subplots(figsize=(6, 4.5))
    if np.any(labels < 0):
        axis.scatter(centred[labels < 0, 0], centred[labels < 0, 1], s=4, color="lightgrey", label="(no label)")
    classes = sorted(int(k) for k in np.unique(labels[labels >= 0]))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for k in classes:
        axis.scatter(centred[labels == k, 0], centred[labels == k, 1], s=4, color=colours(k % colours.N),
                     label=_class_label(class_names, k))
    if classes:
        axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, fontsize=7,
                    ncol=1 if len(classes) <= 20 else 2, frameon=False)
    axis.set_title("test codings (first two principal components)")
    return _save_figure(figure, path)


def _class_ticks(axis, count: int, class_names: Sequence[str], which: str = "x") -> None:
    names = [_class_label(class_names, k) for k in range(count)]
    rotation = 45 if max((len(n) for n in names), default=0) > 2 else 0
    if which == "x":
        axis.set_xticks(range(count), names, rotation=rotation, ha="right" if rotation else "center")
    else:
        axis.set_yticks(range(count), names)


def save_class_histograms(path: str, generated: np.ndarray, real: np.ndarray, class_names: Sequence[str] = ()) -> str:
    figure, axis = plt.subplots(figsize=(5, 3))
    classes = np.arange(len(real))
    axis.bar(classes - 0.2, real, width=0.4, label="real (train)")
    axis.bar(classes + 0.2, generated, width=0.4, label="generated")
    _class_ticks(axis, len(real), class_names)
    axis.set_xlabel("class predicted by the metric network")
    axis.set_ylabel("share")
    axis.legend()
    return _save_figure(figure, path)


def save_confusion_matrix(path: str, matrix: np.ndarray, class_names: Sequence[str] = ()) -> str:
    figure, axis = plt.subplots(figsize=(5.5, 5))
    image = axis.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center", fontsize=7,
                  color="white" if count > matrix.max() / 2 else "black")
    _class_ticks(axis, len(matrix), class_names, "x")
    _class_ticks(axis, len(matrix), class_names, "y")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    figure.colorbar(image, ax=axis)
    return _save_figure(figure, path)


def save_label_efficiency_curve(path: str, labels_per_class: Sequence[int], accuracy: Dict[str, List[float]]) -> str:
    """Test accuracy against labels per class (log scale), one line per method."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for method, values in accuracy.items():
        axis.plot(labels_per_class, values, marker="o", label=method)
    axis.set_xscale("log")
    axis.minorticks_off()
    axis.set_xticks(list(labels_per_class))
    axis.set_xticklabels([str(k) for k in labels_per_class])
    axis.set_xlabel("labels per class")
    axis.set_ylabel("test accuracy")
    axis.grid(alpha=0.3)
    axis.legend()
    return _save_figure(figure, path)


def save_search(path: str, trials: Sequence[Dict], metric: str, mode: str, space_fields: Sequence[str],
                best_trial: Optional[str] = None) -> str:
    """A hyperparameter search at a glance: every trial's metric after each epoch (the best trial bold; a trial
    ASHA stopped ends early), and beside it one panel per searched field: each trial's value against its best
    metric (log scale where the field was searched on one). `trials`: {"trial_id", "config", "curve", "best",
    "status"} dicts, as components/tuner writes them; `best_trial`: the winner's id when something other than the
    curves picked it (a finalists' full evaluation), else the best curve's."""
    fields = list(space_fields)
    figure, axes = plt.subplots(1, 1 + len(fields), figsize=(5 + 3 * len(fields), 3.6), squeeze=False)
    axes = axes[0]
    finite = [t for t in trials if np.isfinite(t["best"])]
    best = (min if mode == "min" else max)(finite, key=lambda t: t["best"]) if finite else None
    if best_trial is not None:
        best = next((t for t in finite if t["trial_id"] == best_trial), best)
    for trial in trials:
        curve = [v if np.isfinite(v) else np.nan for v in trial["curve"]]
        if not curve:
            continue
        is_best = best is not None and trial["trial_id"] == best["trial_id"]
        axes[0].plot(range(1, len(curve) + 1), curve, marker="o", markersize=3,
                     linewidth=2.5 if is_best else 1, alpha=1 if is_best else 0.6,
                     label=f"{trial['trial_id']} (best)" if is_best else None)
    values = [v for t in finite for v in t["curve"] if v is not None and np.isfinite(v)]
    # A few bad trials (a GAN's KID at 9,000 against the good ones' 800) would flatten the rest on a linear axis.
    log_metric = bool(values) and min(values) > 0 and max(values) / min(values) > 20
    axes[0].set(xlabel="epoch", ylabel=metric, title=f"{len(trials)} trials")
    axes[0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if best is not None:
        axes[0].legend(fontsize=7)
    for axis, field in zip(axes[1:], fields):
        points = [(t["config"].get(field), t["best"]) for t in finite if field in t["config"]]
        values = [p[0] for p in points]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        xs = values if numeric else [str(v) for v in values]
        axis.scatter(xs, [p[1] for p in points], s=18)
        if best is not None and field in best["config"]:
            axis.scatter([best["config"][field] if numeric else str(best["config"][field])], [best["best"]],
                         s=60, facecolors="none", edgecolors="red")
        if numeric and values and min(values) > 0 and max(values) / min(values) > 20:
            axis.set_xscale("log")
        axis.set(xlabel=field, ylabel=f"best {metric}")
    for axis in axes if log_metric else ():
        axis.set_yscale("log")
    figure.tight_layout()
    return _save_figure(figure, path)
