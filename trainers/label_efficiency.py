"""The label-efficiency curve: test accuracy of the few-label classifier against the labels it had, per method.

For each K (labels per class), on the same K real labelled examples per class:
    scratch           the classifier's architecture from random weights (trainers.classifier.train_from_scratch)
    reused_frozen     the pretrained encoder frozen, the head trained (phase 1 of the chapter's recipe)
    reused            then everything fine-tuned at a lower rate (phase 2): the chapter's recipe
    generated         from scratch on the real examples plus images a conditional generator drew for each class
    reused_generated  the chapter's recipe on real plus generated examples
and, when asked for (it trains a model per K), a line named by a semi-supervised family (trainers/ssgan.py: the
semi-supervised GAN classifier) trained on the K labels per class with every other training image unlabelled.
The generated-data methods are measured only where a generator trained with those K labels per class drew them.
Every phase sees at least `examples_per_phase` examples, so a point with ten labels still gets a few hundred
steps. Plain arrays in, numbers out (no TFX, no MLflow): components/label_efficiency reads them from a pipeline.
"""
import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainers import classifier

METHODS = ("scratch", "reused_frozen", "reused", "generated", "reused_generated")  # then the semi-supervised line


def phase_epochs(config: classifier.ClassifierConfig, examples: int, examples_per_phase: int) -> int:
    return max(config.epochs, math.ceil(examples_per_phase / max(examples, 1)))


def _batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    return (tf.data.Dataset.from_tensor_slices((images, labels))
            .shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size))


def _accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    predicted = np.argmax(model.predict(images, batch_size=500, verbose=0), axis=1)
    return float(np.mean(predicted == labels))


def curve_point(config: classifier.ClassifierConfig, encoder, train: Tuple[np.ndarray, np.ndarray],
                test: Tuple[np.ndarray, np.ndarray], examples_per_phase: int,
                synthetic: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """({method: test accuracy}, how it trained) for one K: `train` holds its real labelled examples, `synthetic`
    the generated ones (None: no generated-data methods)."""
    accuracy, details = {}, {"labels": int(len(train[0]))}
    sets = {"": train}
    if synthetic is not None:
        sets["generated"] = (np.concatenate([train[0], synthetic[0]]), np.concatenate([train[1], synthetic[1]]))
        details["synthetic"] = int(len(synthetic[0]))
    for name, (images, labels) in sets.items():
        epochs = phase_epochs(config, len(images), examples_per_phase)
        phase = dataclasses.replace(config, epochs=epochs, unfrozen_epochs=epochs if config.unfrozen_epochs else 0)
        details[f"epochs_per_phase{'_' + name if name else ''}"] = epochs
        data = _batches(images, labels, config.batch_size, config.seed)
        scratch, _ = classifier.train_from_scratch(phase, encoder, data)
        accuracy[name or "scratch"] = _accuracy(scratch, *test)
        keras.utils.set_random_seed(config.seed)
        model = classifier.build_classifier(phase, classifier.copy_encoder(encoder))
        classifier.train_frozen(phase, model, data)
        if not name:
            accuracy["reused_frozen"] = _accuracy(model, *test)
        if phase.unfrozen_epochs:
            classifier.train_unfrozen(phase, model, data)
        accuracy["reused" if not name else "reused_generated"] = _accuracy(model, *test)
    return accuracy, details


def semi_supervised_batches(images: np.ndarray, labels: np.ndarray, labelled: np.ndarray, batch_size: int,
                            labeled_share: float, seed: int) -> tf.data.Dataset:
    """(images, labels) batches for a semi-supervised family: `labeled_share` of each batch from the labelled
    examples (repeated), the rest from the others with label -1; an epoch uses up the others once (as
    trainers/job.py mixes a pipeline's TFRecords)."""
    others = int(np.sum(~labelled))
    if others == 0:  # every example is labelled: nothing to mix, an epoch is each example once
        return (tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int64))).shuffle(len(images), seed=seed)
                .batch(batch_size))
    steps = max(1, math.ceil(others / (1.0 - labeled_share) / batch_size))
    real = (tf.data.Dataset.from_tensor_slices((images[labelled], labels[labelled].astype(np.int64)))
            .shuffle(max(int(labelled.sum()), 1), seed=seed).repeat())
    unlabelled = (tf.data.Dataset.from_tensor_slices((images[~labelled], np.full(others, -1, np.int64)))
                  .shuffle(others, seed=seed).repeat())
    return (tf.data.Dataset.sample_from_datasets([unlabelled, real], [1.0 - labeled_share, labeled_share], seed=seed)
            .batch(batch_size).take(steps).prefetch(tf.data.AUTOTUNE))


def semi_supervised_point(model, config, train: Tuple[np.ndarray, np.ndarray], labelled: np.ndarray,
                          test: Tuple[np.ndarray, np.ndarray]) -> Tuple[float, Dict[str, Any]]:
    """(test accuracy, how it trained) of a semi-supervised model (a registry.ModelEntry: build, fit) trained on
    `train`'s images, with the labels of the `labelled` ones only; images in the model's pixel range."""
    keras.utils.set_random_seed(config.seed)
    network = model.build(config, train[0].shape[1:])
    data = semi_supervised_batches(train[0], train[1], labelled, config.batch_size, config.labeled_share, config.seed)
    model.fit(network, config, data)
    return _accuracy(network, *test), {"semi_supervised_epochs": int(config.epochs),
                                       "unlabelled": int(np.sum(~labelled))}
