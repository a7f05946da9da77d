"""One training job as every worker runs it: what to train on which files, the model, its saved state.

A TrainingJob is plain data (picklable: it travels to Ray workers). The functions here are the per-worker
training code shared by the in-process Trainer and the Ray workers; nothing here knows TFX, Ray or MLflow.
Under a tf.distribute strategy, call `build_model` and `train` inside `strategy.scope()`.

Saved state (`save_state` / `load_state`), a directory:
    weights.*      TF-format checkpoint of the model (the optimizer's slots included: a resumed run continues
                   with the same moments)
    state.json     {"epoch": epochs done, "history": per-epoch metrics so far, "model": name, "config": {the
                    overrides}, "full_config": {every field as it trained}, "image_shape": [h, w, c],
                    "weight_average_digest": a digest of the EMA weights, when the model keeps averages}: enough
                   to rebuild the model anywhere, whatever the presets' defaults have become since
"""
import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from trainers import data, registry

WEIGHTS = "weights"
STATE_FILE = "state.json"


@dataclasses.dataclass(frozen=True)
class TrainingJob:
    model: str  # a registry name (a family that needs a base model fine-tunes `encoder_from`'s)
    config: Dict[str, Any]  # overrides of the model's preset (registry.make_config)
    image_shape: Tuple[int, int, int]
    train_files: Sequence[str]  # glob patterns of gzipped transformed tf.Examples
    eval_files: Sequence[str]
    feature_spec: Dict[str, Tuple[List[int], str]]  # the transformed features: name -> (shape, dtype name)
    encoder_from: Optional[str] = None  # a family that needs a base model: save_state's directory of it
    holdout_class: Optional[int] = None  # autoencoders: a class kept out of training (the anomaly to detect)
    # Autoencoders: the share of normal eval images the exported anomaly threshold calls anomalous.
    anomaly_fpr: float = 0.01
    class_names: Sequence[str] = ()  # conditional generators: the source's classes, in id order (the export's)
    # Only the examples whose label rank (the Transform's, made with at least this K) is below K keep their label:
    # a generator that feeds a K-labels-per-class classifier sees those K labels per class and no other.
    labels_per_class: Optional[int] = None
    # The pixel range the examples are in when it is not the family's (a generator reading a classifier's data).
    data_pixel_range: Optional[str] = None
    # Where the Ray chief writes TensorBoard event files (the in-process Trainer writes into its model_run).
    tensorboard_dir: Optional[str] = None
    # A generative model's best epoch (trainers/best_epoch.py): the feature network's SavedModel and the directory
    # of its train-split reference. None: the last epoch is kept.
    feature_network: Optional[str] = None
    feature_reference: Optional[str] = None

    def __post_init__(self):
        if self.family.needs_base_model and not self.encoder_from:
            raise ValueError(f"{self.model} fine-tunes a pretrained encoder: give encoder_from, the saved state "
                             "of an autoencoder or VAE trained first")

    @property
    def family(self) -> registry.Family:
        return registry.get_model(self.model).family

    def make_config(self):
        return registry.make_config(self.model, self.config)


def plain_feature_spec(feature_spec: Dict[str, tf.io.FixedLenFeature]) -> Dict[str, Tuple[List[int], str]]:
    """tf.io.FixedLenFeature specs as plain data: a job that travels to Ray does not import TensorFlow where it
    is only passed along (Ray's controller)."""
    return {name: ([int(d) for d in spec.shape], spec.dtype.name) for name, spec in feature_spec.items()}


def _tf_feature_spec(plain: Dict[str, Tuple[List[int], str]]) -> Dict[str, tf.io.FixedLenFeature]:
    return {name: tf.io.FixedLenFeature(list(shape), tf.as_dtype(dtype)) for name, (shape, dtype) in plain.items()}


def datasets(job: TrainingJob, config, options: Optional[tf.data.Options] = None
             ) -> Tuple[tf.data.Dataset, Optional[tf.data.Dataset]]:
    """(train, eval) batches of `config.batch_size` (the global batch): images, or (images, labels) for a
    supervised family (a classifier), which trains on the examples whose few-label flag is set and is scored on
    every labelled one, or for a conditional generator or a semi-supervised family (images, labels) of every
    example, the label -1 (none) where the few-label flag is unset: with K labels per class it sees only those K
    labels."""
    # The data's order is the seed's alone: a shuffle made now takes TensorFlow's global seed as it stands, which
    # whatever trained earlier in this process sets (in process, a component that a cached rerun skips).
    keras.utils.set_random_seed(config.seed)
    spec = _tf_feature_spec(job.feature_spec)
    labeled = _labeled(job)
    image = _rescaled(job.data_pixel_range, job.family.pixel_range)
    if job.family.conditional or job.family.semi_supervised:
        train_pairs = lambda batch: (image(batch["image"]), tf.where(labeled(batch), batch["label"], -1))
        if config.labeled_share > 0:
            train = _mixed(job, spec, config, labeled).map(train_pairs)
        else:
            train = data.image_dataset(job.train_files, spec, config.batch_size, seed=config.seed).map(train_pairs)
        # A semi-supervised classifier is scored on the labelled held-out examples only.
        labelled_only = (lambda ex: ex["label"] >= 0) if job.family.semi_supervised else None
        evaluation = data.image_dataset(job.eval_files, spec, config.batch_size, shuffle=False,
                                        keep=labelled_only).map(lambda batch: (image(batch["image"]), batch["label"]))
    elif job.family.supervised:
        pairs = lambda batch: (image(batch["image"]), batch["label"])
        train = data.image_dataset(job.train_files, spec, config.batch_size, seed=config.seed, keep=labeled)
        evaluation = data.image_dataset(job.eval_files, spec, config.batch_size, shuffle=False,
                                        keep=lambda ex: ex["label"] >= 0)
        train, evaluation = train.map(pairs), evaluation.map(pairs)
    else:
        images = lambda batch: image(batch["image"])
        # An autoencoder's held-out class (the anomaly its Evaluator detects) never reaches its training.
        kept = None if job.holdout_class is None else (lambda ex: ex["label"] != job.holdout_class)
        train = data.image_dataset(job.train_files, spec, config.batch_size, seed=config.seed, keep=kept).map(images)
        evaluation = data.image_dataset(job.eval_files, spec, config.batch_size, shuffle=False,
                                        keep=kept).map(images)
    if options is not None:
        train, evaluation = train.with_options(options), evaluation.with_options(options)
    return train, evaluation


def _mixed(job: TrainingJob, spec, config, labeled) -> tf.data.Dataset:
    """Batches with `config.labeled_share` of labelled examples (repeated) among the others; an epoch is as many
    batches as use up the unlabelled ones."""
    read = lambda keep: data.image_dataset(job.train_files, spec, config.batch_size, seed=config.seed,
                                           keep=keep).unbatch()
    labelled = read(labeled).repeat()
    others = read(lambda ex: tf.logical_not(labeled(ex)))
    share = float(config.labeled_share)
    # Keras needs an epoch's length (the repeated labelled examples make the mix look endless): about the batches
    # that use up the unlabelled examples.
    unlabelled = int(others.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
    if unlabelled == 0:  # every example is labelled: nothing to mix, an epoch is each example once
        return data.image_dataset(job.train_files, spec, config.batch_size, seed=config.seed)
    steps = max(1, math.ceil(unlabelled / (1.0 - share) / config.batch_size))
    return (tf.data.Dataset.sample_from_datasets([others.repeat(), labelled], [1.0 - share, share], seed=config.seed)
            .batch(config.batch_size).take(steps).prefetch(tf.data.AUTOTUNE))


def _labeled(job: TrainingJob):
    """example (or batch) -> whether it trains with its label: the few-label flag, or with `labels_per_class` the
    Transform's label rank below it."""
    if job.labels_per_class is None:
        return lambda ex: ex["labeled"] > 0
    if "label_rank" not in job.feature_spec:
        raise ValueError(f"labels_per_class={job.labels_per_class} needs the Transform's label_rank feature: run "
                         "the Transform with labels_per_class set (at least as large)")
    return lambda ex: ex["label_rank"] < job.labels_per_class


def _rescaled(data_range: Optional[str], model_range: Optional[str]):
    """images in `data_range` -> images in `model_range` ([0, 1] "unit" or [-1, 1] "symmetric")."""
    if data_range is None or model_range is None or data_range == model_range:
        return lambda images: images
    return (lambda images: images * 2.0 - 1.0) if model_range == "symmetric" else (lambda images: (images + 1.0) / 2.0)


def pixel_range(job: TrainingJob) -> str:
    """The family's pixel range, or (a family with a base model) the base model's."""
    if job.family.pixel_range is None:
        return registry.get_model(read_state(job.encoder_from)["model"]).pixel_range
    return job.family.pixel_range


def build_model(job: TrainingJob, config):
    """The untrained model (a family that needs a base model gets the pretrained one, restored)."""
    base_model = restore(job.encoder_from)[0] if job.family.needs_base_model else None
    return job.family.build(config, job.image_shape, base_model)


def sample_quality_proxy(job: TrainingJob, config):
    """The callback that scores every epoch's samples and keeps the best (trainers/best_epoch.py), or None: not a
    generative family, or no feature network given (the last epoch is kept)."""
    if not job.feature_network or not job.family.generative:
        return None
    from trainers import best_epoch  # pylint: disable=import-outside-toplevel
    return best_epoch.SampleQualityProxy(job.family, job.image_shape, pixel_range(job), job.feature_network,
                                         job.feature_reference, seed=config.seed)


def train(job: TrainingJob, model, config, train_data, eval_data, callbacks=None,
          initial_epoch: int = 0) -> Dict[str, List[float]]:
    """Trains a built model from `initial_epoch` to the end of its budget; the history of those epochs."""
    return job.family.fit(model, config, train_data, eval_data, callbacks, initial_epoch)


def total_epochs(job: TrainingJob, config) -> int:
    """Epochs `train` counts through (what `initial_epoch` and the saved state's epoch refer to)."""
    return job.family.total_epochs(config)


def save_state(model, directory: str, job: TrainingJob, epoch: int, history: Dict[str, List[float]],
               **details: Any) -> None:
    """Under a multi-worker strategy every worker must call this (saving is a collective operation); only the
    chief's directory is the real one. `details` (JSON values) are kept in state.json too."""
    tf.io.gfile.makedirs(directory)  # tf.io.gfile: a local directory or object storage alike
    model.save_weights(os.path.join(directory, WEIGHTS))
    state = {"epoch": epoch, "history": history, "model": job.model, "config": job.config,
             "full_config": dataclasses.asdict(job.make_config()), "image_shape": list(job.image_shape),
             "encoder_from": job.encoder_from, "weight_average_digest": weight_average_digest(model), **details}
    # Written whole or not at all: a reader (a resuming worker, Ray copying the checkpoint) never sees half.
    partial = os.path.join(directory, STATE_FILE + ".partial")
    with tf.io.gfile.GFile(partial, "w") as f:
        f.write(json.dumps(state))
    tf.io.gfile.rename(partial, os.path.join(directory, STATE_FILE), overwrite=True)


def weight_average_digest(model) -> Optional[str]:
    """SHA-256 of the model's weight averages (trainers/ema.py), bit for bit; None for a model without any. What
    a resumed worker's averages are compared with: the same digest as the checkpoint's means the average went on
    from the saved one (a reset average would equal the raw weights instead)."""
    averages = model.weight_averages() if hasattr(model, "weight_averages") else []
    if not averages:
        return None
    digest = hashlib.sha256()
    for average, _ in averages:
        for weights in average.network.get_weights():
            digest.update(weights.tobytes())
    return digest.hexdigest()


def read_state(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, STATE_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{directory} holds no saved training state ({STATE_FILE} is missing)")
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def load_weights(model, directory: str) -> None:
    """Loads save_state's weights into `model`; a ValueError when some of `model`'s weights are not in them (a
    model built unlike the one that was saved), rather than a model half random."""
    try:
        # expect_partial: a model rebuilt for export has no optimizer, whose slots the checkpoint also holds.
        model.load_weights(os.path.join(directory, WEIGHTS)).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:  # a weight missing, or one of another shape
        raise ValueError(f"{directory}: the saved weights do not fit the {model.name} model built for them "
                         f"({str(e).splitlines()[0][:300]}). The state was probably saved by a version whose "
                         "preset had other defaults: retrain, or restore with that version") from e


def restore(directory: str):
    """(model, state) rebuilt from a directory save_state wrote: the same architecture, the trained weights."""
    state = read_state(directory)
    # Every field as it trained (states saved before full_config existed: the overrides of today's preset).
    job = TrainingJob(state["model"], state.get("full_config", state["config"]), tuple(state["image_shape"]), (),
                      (), {}, state.get("encoder_from"))
    model = build_model(job, job.make_config())
    load_weights(model, directory)
    return model, state
