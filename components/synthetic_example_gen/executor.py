"""Executor of SyntheticExampleGen (component.py says what it writes)."""
import json
import os
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components import artifacts
from evaluation import figures, scoring

TRAIN_FILE = "synthetic.tfrecord.gz"


def model_version(model: types.Artifact, registration: List[types.Artifact]) -> str:
    """models:/NAME/VERSION of the registered generator, or its Model artifact's URI when it was not registered."""
    if registration:
        registered = registration[0]
        return (f"models:/{registered.get_string_custom_property('name')}/"
                f"{registered.get_string_custom_property('version')}")
    return model.uri


def draw(saved_model_dir: str, per_class: int, seed: int, batch_size: int = 250):
    """(images in [0, 1], labels, class names): `per_class` images of each class from a conditional SavedModel,
    at its exported defaults (guidance, DDIM steps)."""
    loaded = tf.saved_model.load(saved_model_dir)
    metadata = json.loads(loaded.metadata.numpy().decode()) if hasattr(loaded, "metadata") else {}
    class_names = metadata.get("class_names")
    if not class_names or "labels" not in metadata.get("generate_defaults", {}):
        raise ValueError(f"{saved_model_dir} is not a class-conditional generator (its metadata lists no classes): "
                         "generated training data needs one of the conditional models (see `latentforge models`)")
    signature = loaded.signatures[metadata["generate_signature"]]
    takes = set(signature.structured_input_signature[1])
    defaults = {k: v for k, v in metadata["generate_defaults"].items() if k in takes and k != "labels"}
    images, labels = [], []
    for label in range(len(class_names)):
        images.append(scoring.generate(signature, per_class, seed * 1_000 + label, batch_size,
                                       {**defaults, "labels": [label]}))
        labels.append(np.full(per_class, label, np.int64))
    return np.concatenate(images), np.concatenate(labels), list(class_names)


def _example(image: np.ndarray, label: int, version: bytes) -> bytes:
    int64 = lambda value: tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel().tolist())),
        "label": int64(int(label)), "labeled": int64(1), "label_rank": int64(0), "synthetic": int64(1),
        "model_version": tf.train.Feature(bytes_list=tf.train.BytesList(value=[version]))})).SerializeToString()


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        config = artifacts.load_config(artifacts.SyntheticExamplesConfig, exec_properties["config"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        version = model_version(model, input_dict.get("registration") or [])
        logging.info("drawing %d images per class from %s", config.per_class, version)
        images, labels, class_names = draw(path_utils.serving_model_path(model.uri), config.per_class, config.seed)
        if config.pixel_range == "symmetric":
            images = images * 2.0 - 1.0

        examples = artifact_utils.get_single_instance(output_dict["examples"])
        examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
        train_dir = artifact_utils.get_split_uri([examples], "train")
        tf.io.gfile.makedirs(train_dir)  # a local directory or object storage
        tf.io.gfile.makedirs(artifact_utils.get_split_uri([examples], "eval"))
        with tf.io.TFRecordWriter(os.path.join(train_dir, TRAIN_FILE), options="GZIP") as writer:
            for image, label in zip(images, labels):
                writer.write(_example(image, label, version.encode()))
        artifacts.set_image_properties(examples, images.shape[1:], class_names)
        artifacts.set_synthetic_properties(examples, config.per_class, config.labels_per_class, version)
        # What a person checks first: do the rows look like their classes?
        shown = np.concatenate([images[labels == k][:10] for k in range(len(class_names))])
        figures.save_png(os.path.join(examples.uri, "synthetic.png"),
                         figures.image_grid(scoring.to_unit(shown, config.pixel_range), 10))
        logging.info("wrote %d synthetic examples (%s)", len(images), train_dir)
