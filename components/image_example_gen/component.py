"""ImageExampleGen: a FileBasedExampleGen for image sources (tfds:, idx:, folder:, npz:).

TFX's own extension point: the component is a FileBasedExampleGen with a Beam executor of our own, so the
standard FileBasedDriver fingerprints the source files (a changed source is re-ingested, an unchanged one
is served from the TFX cache) and the output is the standard Examples artifact.
"""
from google.protobuf import any_pb2, struct_pb2
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from components.image_example_gen import executor
from components.image_example_gen.sources import SourceInfo

DEFAULT_EVAL_PERCENT = 10


def source_input_config(info: SourceInfo) -> example_gen_pb2.Input:
    """One input split per output split. Without an eval split of its own, 'eval' reads the train files
    too and the executor carves it from train by a content hash."""
    splits = [example_gen_pb2.Input.Split(name=s.name, pattern=s.pattern) for s in info.splits]
    if not any(s.name == "eval" for s in info.splits):
        splits.insert(1, example_gen_pb2.Input.Split(name="eval", pattern=info.splits[0].pattern))
    return example_gen_pb2.Input(splits=splits)


class ImageExampleGen(FileBasedExampleGen):
    """Ingests an image source into tf.Examples: image (raw uint8 bytes), height, width, channels, label.

    Splits: train and eval (eval from the source's validation split, else carved from train by a
    deterministic hash of each example) and test when the source has one.
    """

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, source_info: SourceInfo, eval_percent: int = DEFAULT_EVAL_PERCENT, code_version: str = ""):
        """Args:
          source_info: a probed source (sources.probe), which fixes image shape and classes.
          eval_percent: share of train carved into eval when the source has no eval split (1..50).
          code_version: a digest of the reading code; a new one invalidates the TFX cache.
        """
        if not 1 <= eval_percent <= 50:
            raise ValueError(f"eval_percent={eval_percent}: must be between 1 and 50")
        config = struct_pb2.Struct()
        config.update({
            "source": source_info.spec.uri,
            "data_dir": source_info.spec.data_dir or "",
            "manual_dir": source_info.spec.manual_dir or "",
            "ignore_labels": source_info.spec.ignore_labels,
            "eval_percent": eval_percent,
            "image_shape": list(source_info.image_shape),
            "class_names": list(source_info.class_names),
            "code_version": code_version,
        })
        packed = any_pb2.Any()
        packed.Pack(config)
        super().__init__(
            input_base=source_info.input_base,
            input_config=source_input_config(source_info),
            # Splits are given by the input config, so no hash-based output split config.
            output_config=example_gen_pb2.Output(),
            custom_config=example_gen_pb2.CustomConfig(custom_config=packed),
        )
