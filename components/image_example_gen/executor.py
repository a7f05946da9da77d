"""Beam executor of ImageExampleGen: reads each source split once and writes tf.Examples.

Memory stays flat as the data grows: every source is read as a stream (IDX and npz in chunks, folders a file at a
time, TFDS through its Beam reader) and each split is written as it is read. TFX's own WriteSplit shuffles a split
with a Reshuffle (a GroupByKey) first, which Beam's in-memory DirectRunner holds whole; here the order is mixed
where it is read instead (a bounded shuffle window over IDX and npz records, a folder's file list shuffled), and
the Trainer shuffles again every epoch.
"""
import hashlib
import os
import zlib
from typing import Any, Dict, Iterator, List, Optional

import apache_beam as beam
import numpy as np
import tensorflow as tf
from google.protobuf import json_format, struct_pb2
from tfx import types
from tfx.components.example_gen import utils as example_gen_utils, write_split
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components import artifacts
from components.image_example_gen import sources

# Custom properties set on the output Examples artifact, read by later components.


def image_example(image: np.ndarray, label: int) -> tf.train.Example:
    """The tf.Example every source becomes: raw uint8 pixels plus their shape and the label (-1: none)."""
    height, width, channels = image.shape
    ints = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
    return tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(image).tobytes()])),
        "height": ints(height), "width": ints(width), "channels": ints(channels), "label": ints(label),
    }))


def eval_bucket(example: tf.train.Example, num_partitions: int, eval_percent: int) -> int:
    """1 (eval) or 0 (train), fixed by the example's content: the same image always lands in the same split."""
    del num_partitions
    feature = example.features.feature
    key = feature["image"].bytes_list.value[0] + str(feature["label"].int64_list.value[0]).encode()
    bucket = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % 100
    return int(bucket < eval_percent)


def read_custom_config(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    custom_config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY], custom_config)
    struct = struct_pb2.Struct()
    custom_config.custom_config.Unpack(struct)
    return json_format.MessageToDict(struct)


def _tfds_records(element: Dict[str, Any], image_key: str, label_key: Optional[str]):
    image = element[image_key]
    return image if image.ndim == 3 else image[:, :, None], int(element[label_key]) if label_key else -1


# How much reading a split may hold to mix its order (a window of this many bytes of images): the split is
# written as it is read, without TFX's whole-split shuffle.
SHUFFLE_WINDOW_BYTES = 64 * 2 ** 20


def _split_rng(split: str) -> np.random.Generator:
    """The same order for the same data on every run: a rerun writes the same files."""
    return np.random.default_rng(zlib.crc32(split.encode()))


def shuffled(items: List, split: str) -> List:
    """`items` (a folder's file list: names, not images) in a random order fixed by the split's name."""
    return [items[i] for i in _split_rng(split).permutation(len(items))]


def shuffle_window(records: Iterator[sources.Record], image_shape, split: str,
                   window_bytes: int = SHUFFLE_WINDOW_BYTES) -> Iterator[sources.Record]:
    """tf.data's shuffle buffer over a split's records: they leave in random order from a window of
    `window_bytes` of images (at least 1,024 of them), so input sorted by class comes out mixed while memory
    stays one window."""
    window = max(1024, window_bytes // int(np.prod(image_shape)))
    rng = _split_rng(split)
    buffer: List[sources.Record] = []
    for image, label in records:
        record = (image.copy(), label)  # its own pixels: a view would keep its whole read chunk alive
        if len(buffer) < window:
            buffer.append(record)
            continue
        index = int(rng.integers(window))
        yield buffer[index]
        buffer[index] = record
    for index in rng.permutation(len(buffer)):
        yield buffer[index]


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ReadSourceSplit(pipeline: beam.Pipeline, info: sources.SourceInfo, split: str) -> beam.PCollection:  # pylint: disable=invalid-name
    """All examples of one split of the source."""
    kind = sources.kind_of(info.spec)
    if kind.list_files is not None:
        # One element per file, so decoding spreads over the runner's workers.
        records = (pipeline
                   | "ListFiles" >> beam.Create(shuffled(kind.list_files(info, split), split))
                   | "Decode" >> beam.Map(lambda item: (kind.read_file(item[0], info.image_shape), item[1])))
    elif kind.read_split is None:  # TFDS: its own Beam reader
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        builder = sources.ensure_tfds_prepared(info.spec)
        image_key, label_key = sources.tfds_keys(builder)
        label_key = None if info.spec.ignore_labels else label_key
        records = (pipeline
                   | "ReadFromTFDS" >> tfds.beam.ReadFromTFDS(builder, split=sources.tfds_split_name(split))
                   | "ToRecord" >> beam.Map(_tfds_records, image_key, label_key))
    else:
        records = (pipeline
                   | "Split" >> beam.Create([split])
                   | "Read" >> beam.FlatMap(lambda s: shuffle_window(sources.read_split(info, s), info.image_shape, s)))
    return records | "ToExample" >> beam.MapTuple(image_example)


@beam.ptransform_fn
@beam.typehints.with_input_types(tf.train.Example)
def _WriteSplit(examples: beam.PCollection, output_split_path: str) -> beam.pvalue.PDone:  # pylint: disable=invalid-name
    """TFX's WriteSplit (the same files: data_tfrecord-*.gz) without its Reshuffle, so a split streams to disk."""
    return (examples
            | "Serialize" >> beam.Map(lambda example: example.SerializeToString())
            | "Write" >> beam.io.WriteToTFRecord(os.path.join(output_split_path, write_split.DEFAULT_FILE_NAME),
                                                 file_name_suffix=".gz"))


class Executor(BaseExampleGenExecutor):
    """Reads an image source (custom_config['source']) into the splits the input config names."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _ReadSourceSplit

    def _source_info(self, config: Dict[str, Any]) -> sources.SourceInfo:
        spec = sources.parse_source(config["source"], config["data_dir"] or None, config["manual_dir"] or None,
                                    bool(config.get("ignore_labels", False)))
        info = sources.probe(spec)
        expected = tuple(int(d) for d in config["image_shape"])
        if info.image_shape != expected:
            raise sources.SourceError(
                f"{spec.uri}: images are now {info.image_shape} but the pipeline was built for {expected}; "
                "the source changed while the run started. Run the pipeline again.")
        return info

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: Dict[str, Any]) -> Dict[str, beam.PCollection]:
        """Reads each source split once. Without an eval split of its own, a content hash partitions
        what is read from train into train and eval."""
        config = read_custom_config(exec_properties)
        info = self._source_info(config)
        eval_percent = int(config["eval_percent"])
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        carve_eval = not any(s.name == "eval" for s in info.splits)
        result = {}
        for split in info.splits:
            examples = pipeline | f"Read[{split.name}]" >> _ReadSourceSplit(info, split.name)  # pylint: disable=no-value-for-parameter
            if split.name == "train" and carve_eval:
                result["train"], result["eval"] = examples | "CarveEval" >> beam.Partition(
                    eval_bucket, 2, eval_percent)
            else:
                result[split.name] = examples
        expected = [s.name for s in input_config.splits]
        if sorted(result) != sorted(expected):
            raise ValueError(f"the source now has splits {sorted(result)} but the pipeline expects {expected}; "
                             "run the pipeline again")
        return result

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        # BaseExampleGenExecutor.Do, with _WriteSplit for TFX's WriteSplit.
        self._log_startup(input_dict, output_dict, exec_properties)
        input_config, output_config = example_gen_pb2.Input(), example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
        outputs = output_dict[standard_component_specs.EXAMPLES_KEY]
        artifact_utils.get_single_instance(outputs).split_names = artifact_utils.encode_split_names(
            example_gen_utils.generate_output_split_names(input_config, output_config))
        with self._make_beam_pipeline() as pipeline:
            for split_name, examples in self.GenerateExamplesByBeam(pipeline, exec_properties).items():
                _ = examples | f"WriteSplit[{split_name}]" >> _WriteSplit(  # pylint: disable=no-value-for-parameter
                    artifact_utils.get_split_uri(outputs, split_name))
        for output in outputs:
            examples_utils.set_payload_format(output, exec_properties.get(
                standard_component_specs.OUTPUT_DATA_FORMAT_KEY) or example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
            examples_utils.set_file_format(output, write_split.to_file_format_str(
                example_gen_pb2.FILE_FORMAT_UNSPECIFIED))
        config = read_custom_config(exec_properties)
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        artifacts.set_image_properties(examples, config["image_shape"], config["class_names"])
