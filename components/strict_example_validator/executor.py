"""Executor of StrictExampleValidator: the standard validation, then a clear failure on anomalies."""
import os
from typing import Any, Dict, List

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import types
from tfx.components.example_validator import executor as example_validator_executor
from tfx.types import artifact_utils, standard_component_specs

from backends import storage


class DataValidationError(RuntimeError):
    """The data broke the schema. The message lists every anomaly as split / feature / what is wrong."""


def describe_anomalies(split: str, anomalies: anomalies_pb2.Anomalies) -> List[str]:
    if anomalies.data_missing:
        # TFDV reports an empty split only through this flag, with no anomaly_info at all.
        return [f"split '{split}': the split has no examples (empty data); check the source's {split} files"]
    lines = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        lines.append(f"split '{split}', feature '{feature}': {info.short_description}: {info.description}")
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        lines.append(f"split '{split}': {info.short_description}: {info.description}")
    return lines


class Executor(example_validator_executor.Executor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]):
        result = super().Do(input_dict, output_dict, exec_properties)
        anomalies_artifact = output_dict[standard_component_specs.ANOMALIES_KEY]
        problems = []
        for split in artifact_utils.decode_split_names(
                artifact_utils.get_single_instance(anomalies_artifact).split_names):
            for path in storage.glob(os.path.join(artifact_utils.get_split_uri(anomalies_artifact, split), "*.pb")):
                with storage.open_file(path, "rb") as f:
                    problems += describe_anomalies(split, anomalies_pb2.Anomalies.FromString(f.read()))
        if problems:
            raise DataValidationError(
                "data validation failed; the pipeline stops before training on it:\n  - " + "\n  - ".join(problems)
                + "\nFix the data, or if the change is intended pass a schema that allows it (--schema FILE).")
        return result
