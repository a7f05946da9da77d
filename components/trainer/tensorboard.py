"""TensorBoard event files of a training run, written by the process that trains (in process, or the Ray chief):
per-epoch scalars of every loss and metric (Keras' TensorBoard callback: `train/` and `validation/` runs), and
per-epoch images of what the model makes (`images/` run: the family's first picture, e.g. reconstructions of
eval images or a grid of samples from fixed noise, so the epochs compare).

As TFX's own examples do, the in-process Trainer writes into its model_run directory; the Ray chief writes
beside its checkpoints (a worker on another machine cannot reach the driver's disk) and the Trainer copies the
event files into model_run when training ends (components/trainer/executor.py).

    tensorboard --logdir RUN_DIR/PIPELINE/tfx/Trainer/model_run      (one TensorBoard run per Trainer execution)
"""
import os
import tempfile
from typing import List

import numpy as np
import tensorflow as tf
import tf_keras as keras

from evaluation import figures, scoring


class EpochImages(keras.callbacks.Callback):
    """After each epoch, the family's first figure (evaluation/figures.py) as an image summary."""

    def __init__(self, family, log_dir: str, shown: np.ndarray, pixel_range: str, seed: int):
        super().__init__()
        self.figure = family.figures[0]
        self.shown, self.seed = shown, seed
        self.to_unit = lambda images: scoring.to_unit(images, pixel_range)
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "images"))

    def on_epoch_end(self, epoch, logs=None):
        with tempfile.TemporaryDirectory() as scratch:
            for path in self.figure(self.model, self.shown, self.to_unit, scratch, self.seed):
                picture = tf.io.decode_png(tf.io.read_file(path))
                with self.writer.as_default():
                    tf.summary.image(os.path.splitext(os.path.basename(path))[0], picture[None], step=epoch + 1)
        self.writer.flush()


def write_history(log_dir: str, history) -> None:
    """Per-epoch scalars from a finished run's history, as Keras' TensorBoard callback names them (`epoch_loss` in
    `train/`, `epoch_loss` from `val_loss` in `validation/`): for a multi-worker Ray run, whose chief cannot run the
    callbacks alone (ray_train._train_loop)."""
    writers = {run: tf.summary.create_file_writer(os.path.join(log_dir, run)) for run in ("train", "validation")}
    for key, values in history.items():
        if not isinstance(values, list):
            continue
        run, name = ("validation", key[len("val_"):]) if key.startswith("val_") else ("train", key)
        with writers[run].as_default():
            for epoch, value in enumerate(values):
                tf.summary.scalar(f"epoch_{name}", float(value), step=epoch)
    for writer in writers.values():
        writer.flush()


def callbacks(family, log_dir: str, eval_data, pixel_range: str, seed: int) -> List[keras.callbacks.Callback]:
    """The TensorBoard callbacks for a run writing into `log_dir` (the images from the first eval batch)."""
    result = [keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False, profile_batch=0, update_freq="epoch")]
    if family.figures and eval_data is not None:
        batch = next(iter(eval_data))
        shown = (batch[0] if isinstance(batch, tuple) else batch).numpy()
        result.append(EpochImages(family, log_dir, shown, pixel_range, seed))
    return result
