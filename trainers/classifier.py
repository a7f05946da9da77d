"""Classifiers on a reused encoder: the chapter's unsupervised pretraining recipe for few labels.

Take the encoder of a trained autoencoder or VAE (x -> codings), add a dense head, train the head with the
encoder frozen, then unfreeze everything and continue with a lower learning rate. `train_from_scratch` trains
the same architecture from random weights for the same number of epochs: the baseline pretraining must beat.
The encoder is copied: the pretrained model is never changed.
"""
import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import tensorflow as tf
import tf_keras as keras

from evaluation import scoring
from trainers import signatures
from trainers.common import TrainingConfig, fit_epochs, make_optimizer, precision_policy, require, use_xla
from trainers.family import Family, register

NAME = "classifier"  # what --model says; its pixel range is that of the pretrained model


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(TrainingConfig):
    """epochs: the frozen phase at learning_rate; unfrozen_epochs: the fine-tuning phase at learning_rate *
    unfrozen_lr_factor, the rate the from-scratch baseline also uses (it trains every layer, like phase 2)."""

    num_classes: int = 10
    head_units: Tuple[int, ...] = ()  # hidden layers of the head; () is a linear (softmax) probe
    dropout: float = 0.0
    unfrozen_epochs: int = 10
    unfrozen_lr_factor: float = 0.1
    # A head on a hundred labels gets a few hundred steps: it needs a high rate (1e-3 left it near chance).
    learning_rate: float = 1e-2
    epochs: int = 10

    def __post_init__(self):
        super().__post_init__()
        require(self.num_classes >= 2, f"num_classes={self.num_classes}: must be at least 2")
        require(all(int(u) >= 1 for u in self.head_units), f"head_units={self.head_units}: each must be >= 1")
        require(0 <= self.dropout < 1, f"dropout={self.dropout}: must be in [0, 1)")
        require(self.unfrozen_epochs >= 0, f"unfrozen_epochs={self.unfrozen_epochs}: must be >= 0")
        require(0 < self.unfrozen_lr_factor <= 1,
                f"unfrozen_lr_factor={self.unfrozen_lr_factor}: must be in (0, 1] (fine-tuning uses a lower rate)")


def reusable_encoder(model: keras.Model) -> keras.Model:
    """The x -> codings encoder of a trained autoencoder or VAE."""
    encoder = getattr(model, "feature_encoder", None)
    if encoder is None:
        raise ValueError(f"{model.name} has no reusable encoder: pretrain an autoencoder or a VAE "
                         "(GANs and DDPMs map noise to images, not images to codings)")
    return encoder


def copy_encoder(encoder: keras.Model, keep_weights: bool = True) -> keras.Model:
    """A new encoder of the same architecture, with the same weights or (keep_weights=False) fresh ones."""
    copy = keras.models.clone_model(encoder)
    copy.build(encoder.input_shape)
    if keep_weights:
        copy.set_weights(encoder.get_weights())
    return copy


def build_classifier(config: ClassifierConfig, encoder: keras.Model) -> keras.Sequential:
    """encoder + head: images (B, H, W, C) -> class probabilities (B, num_classes). layers[0] is the encoder."""
    # Codings are unnormalised (ReLU codes of an autoencoder run ~7 +- 5): standardising them lets a head trained
    # on a hundred labels converge in a few hundred steps.
    with precision_policy(config):
        head = [keras.layers.Flatten(), keras.layers.BatchNormalization(momentum=0.9)]
        for units in config.head_units:
            head += [keras.layers.Dense(units, activation="relu"), keras.layers.Dropout(config.dropout)]
        # The softmax in float32 whatever the precision (Keras' mixed-precision rule for the last layer).
        head.append(keras.layers.Dense(config.num_classes, activation="softmax", dtype="float32"))
        model = keras.Sequential([encoder, *head], name="classifier")
        model.build(encoder.input_shape)
    return model


def _fit(config, model, learning_rate, train_data, eval_data, callbacks, initial_epoch, epochs):
    model.compile(optimizer=make_optimizer(config, learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=config.steps_per_execution, jit_compile=use_xla(config))
    return fit_epochs(model, config, train_data, eval_data, callbacks, initial_epoch, epochs)


def train_frozen(config: ClassifierConfig, model: keras.Model, train_data: tf.data.Dataset,
                 eval_data: Optional[tf.data.Dataset] = None, callbacks=None,
                 initial_epoch: int = 0) -> Dict[str, List[float]]:
    """Phase 1, epochs [0, config.epochs): only the head learns (a frozen encoder also keeps its BatchNorm
    statistics)."""
    model.layers[0].trainable = False
    return _fit(config, model, config.learning_rate, train_data, eval_data, callbacks, initial_epoch, config.epochs)


def train_unfrozen(config: ClassifierConfig, model: keras.Model, train_data: tf.data.Dataset,
                   eval_data: Optional[tf.data.Dataset] = None, callbacks=None,
                   initial_epoch: Optional[int] = None) -> Dict[str, List[float]]:
    """Phase 2, epochs [config.epochs, config.epochs + unfrozen_epochs): everything learns, at a lower rate so
    the pretrained features are adjusted, not overwritten."""
    model.layers[0].trainable = True
    rate = config.learning_rate * config.unfrozen_lr_factor
    start = config.epochs if initial_epoch is None else max(initial_epoch, config.epochs)
    return _fit(config, model, rate, train_data, eval_data, callbacks, start, config.epochs + config.unfrozen_epochs)


def fit(model: keras.Model, config: ClassifierConfig, train_data: tf.data.Dataset,
        eval_data: Optional[tf.data.Dataset] = None, callbacks=None, initial_epoch: int = 0) -> Dict[str, List[float]]:
    """Both phases of a built classifier from `initial_epoch` (counted across the phases: a resumed run skips
    what it had done). Returns the history of the epochs run; `frozen_epochs` says where phase 2 starts."""
    history: Dict[str, List[float]] = {}
    if initial_epoch < config.epochs:
        history = train_frozen(config, model, train_data, eval_data, callbacks, initial_epoch)
    if config.unfrozen_epochs and initial_epoch < config.epochs + config.unfrozen_epochs:
        history = _concatenate(history, train_unfrozen(config, model, train_data, eval_data, callbacks,
                                                       initial_epoch))
    history["frozen_epochs"] = [float(config.epochs)]
    return history


def _concatenate(first: Dict[str, List[float]], second: Dict[str, List[float]]) -> Dict[str, List[float]]:
    return {k: first.get(k, []) + second.get(k, []) for k in {*first, *second}}


def train(config: ClassifierConfig, encoder: keras.Model, train_data: tf.data.Dataset,
          eval_data: Optional[tf.data.Dataset] = None, callbacks=None) -> Tuple[keras.Model, Dict[str, List[float]]]:
    """Fine-tunes a classifier on a copy of `encoder` with (images, labels) batches: frozen, then unfrozen.

    Returns the classifier and its history over both phases (`frozen_epochs` says where phase 2 starts).
    """
    keras.utils.set_random_seed(config.seed)
    model = build_classifier(config, copy_encoder(encoder))
    return model, fit(model, config, train_data, eval_data, callbacks)


def train_from_scratch(config: ClassifierConfig, encoder: keras.Model, train_data: tf.data.Dataset,
                       eval_data: Optional[tf.data.Dataset] = None,
                       callbacks=None) -> Tuple[keras.Model, Dict[str, List[float]]]:
    """The baseline: the same architecture from random weights, every layer trained for both phases' epochs at
    the unfrozen phase's rate (the head-only rate is too high for a whole network: 0.55 vs 0.75 test accuracy
    at 100 MNIST labels)."""
    keras.utils.set_random_seed(config.seed)
    model = build_classifier(config, copy_encoder(encoder, keep_weights=False))
    history = _fit(config, model, config.learning_rate * config.unfrozen_lr_factor, train_data, eval_data,
                   callbacks, 0, config.epochs + config.unfrozen_epochs)
    return model, history


def serving_signatures(model, image_shape, pixel_range) -> Dict[str, Callable]:
    """The SavedModel's signatures (trainers/export.py writes them; see its docstring for the contract)."""
    @tf.function(input_signature=[signatures.image_spec(image_shape)])
    def classify(x):
        probabilities = model(signatures.checked_images(x, pixel_range), training=False)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

    return {"serving_default": classify, "classify": classify}


# The family's description, registered on import (trainers/registry.py imports every family module).
def _build_on_base(config, input_shape, base_model=None):
    del input_shape  # the encoder's
    if base_model is None:
        raise ValueError("the classifier fine-tunes a pretrained encoder: build it with the pretrained model")
    return build_classifier(config, copy_encoder(reusable_encoder(base_model)))


register(Family(
    NAME, ClassifierConfig, _build_on_base, fit, serving_signatures,
    signatures.output_of("classify", "probabilities"), key_metric=("test_accuracy", True),
    scorers=(scoring.score_classification,), supervised=True, needs_base_model=True,
    total_epochs=lambda config: config.epochs + config.unfrozen_epochs,
    # Where fine-tuning (phase 2) starts in the history, whichever way (in process, Ray) it trained.
    training_details=lambda config: {"frozen_epochs": config.epochs},
    description="fine-tunes the encoder of --pretrain MODEL (an autoencoder or VAE)",
    search_space={"learning_rate": {"loguniform": [1e-4, 1e-2]}, "unfrozen_lr_factor": {"loguniform": [0.01, 1.0]}},
    epoch_metric=("val_accuracy", True)),
    {NAME: {}})
