"""Executor of ImageSchemaCurator."""
import os
from typing import Any, Dict, List

from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2
from tfx import types
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

SCHEMA_FILE = "schema.pbtxt"
FIXED_FEATURES = ("height", "width", "channels")
REQUIRED_FEATURES = ("image", "label") + FIXED_FEATURES


def _int_range(stats: statistics_pb2.DatasetFeatureStatistics, name: str):
    for feature in stats.features:
        if feature.path.step == [name] or feature.name == name:
            return int(feature.num_stats.min), int(feature.num_stats.max)
    raise ValueError(f"the train statistics have no feature {name!r}: these are not latentforge image examples")


def curate_schema(schema: schema_pb2.Schema, train_stats: statistics_pb2.DatasetFeatureStatistics) -> schema_pb2.Schema:
    """Returns a copy of `schema` with image dimensions fixed to the train split's and a label domain."""
    curated = schema_pb2.Schema()
    curated.CopyFrom(schema)
    features = {f.name: f for f in curated.feature}
    missing = [n for n in REQUIRED_FEATURES if n not in features]
    if missing:
        raise ValueError(f"the inferred schema lacks features {missing}: these are not latentforge image examples")
    for name in FIXED_FEATURES:
        low, high = _int_range(train_stats, name)
        if low != high:
            raise ValueError(f"train images have {name} from {low} to {high}; all images must share one size")
        features[name].int_domain.min = low
        features[name].int_domain.max = high
    # Labels stay inside what training saw; -1 (no label) is allowed only if training had it too.
    low, high = _int_range(train_stats, "label")
    features["label"].int_domain.min = min(low, 0) if low >= 0 else -1
    features["label"].int_domain.max = max(high, 0)
    for name in REQUIRED_FEATURES:
        # min_count 1 turns an empty split into a named anomaly instead of silent zero-example training.
        features[name].presence.min_fraction = 1.0
        features[name].presence.min_count = 1
    return curated


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        schema = io_utils.SchemaReader().read(
            io_utils.get_only_uri_in_dir(artifact_utils.get_single_uri(input_dict["schema"])))
        stats_artifact = artifact_utils.get_single_instance(input_dict["statistics"])
        train_stats = stats_artifact_utils.load_statistics(stats_artifact, "train").proto().datasets[0]
        curated = curate_schema(schema, train_stats)
        io_utils.write_pbtxt_file(
            os.path.join(artifact_utils.get_single_uri(output_dict["curated_schema"]), SCHEMA_FILE), curated)
