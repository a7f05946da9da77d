"""components.artifacts: the files and properties components hand each other round-trip through their typed
helpers, and a config that does not match its type is refused naming the field."""
import json

import numpy as np
import pytest

from components import artifacts


class FakeArtifact:
    """The custom-property methods of a TFX artifact, over dicts."""

    def __init__(self, uri=""):
        self.uri, self.properties = uri, {}

    def set_json_value_custom_property(self, key, value):
        self.properties[key] = json.loads(json.dumps(value))

    def get_json_value_custom_property(self, key):
        return self.properties[key]

    set_string_custom_property = set_int_custom_property = set_json_value_custom_property


def test_trainer_metrics_keep_their_details_at_the_top_level_of_the_file(tmp_path):
    metrics = artifacts.TrainerMetrics(model="classifier", family="classifier", config={"epochs": 2},
                                       full_config={"epochs": 2, "seed": 42}, pixel_range="unit", holdout_class=None,
                                       history={"loss": [2.0, 1.0]}, details={"frozen_epochs": 1, "workers": [{}]})
    metrics.write(str(tmp_path))
    with open(tmp_path / artifacts.METRICS_FILE) as f:
        on_disk = json.load(f)
    assert on_disk["frozen_epochs"] == 1 and on_disk["history"] == {"loss": [2.0, 1.0]}  # what people and MLflow read
    assert artifacts.TrainerMetrics.read(str(tmp_path)) == metrics


def test_evaluation_writes_its_file_and_both_input_examples(tmp_path):
    evaluation = artifacts.Evaluation("gan", {"fid": 12.5, "samples": 100, "split": "test"},
                                      {"blessed": True, "reason": "no champion yet"})
    evaluation.write(str(tmp_path), np.ones((2, 100), np.float32), np.zeros((2, 28, 28, 1), np.float32))
    back = artifacts.Evaluation.read(str(tmp_path))
    assert back == evaluation and back.scalars == {"fid": 12.5}
    assert artifacts.input_example(str(tmp_path)).shape == (2, 100)
    assert artifacts.metric_input_example(str(tmp_path)).shape == (2, 28, 28, 1)


def test_examples_properties_and_the_registration_round_trip(tmp_path):
    examples = FakeArtifact()
    artifacts.set_image_properties(examples, (28, 28, 1), ["zero", "one"])
    assert artifacts.image_shape(examples) == (28, 28, 1) and artifacts.class_names(examples) == ["zero", "one"]
    registration = FakeArtifact(str(tmp_path))
    artifacts.set_registration(registration, "mnist-vae", "3", True, {"name": "mnist-vae", "version": "3"})
    assert registration.properties == {"name": "mnist-vae", "version": "3", "champion": 1}
    assert artifacts.read_json(str(tmp_path), artifacts.REGISTRATION_FILE)["version"] == "3"


def test_configs_round_trip_and_a_stray_field_is_named(tmp_path):
    config = artifacts.RegistrarConfig(tracking={"uri": "sqlite:///x.db", "experiment": "e"}, registered_model="m",
                                       metric_network_model="mn", pipeline="p", dataset="d", source="idx:/d")
    assert artifacts.load_config(artifacts.RegistrarConfig, artifacts.dump_config(config)) == config
    with pytest.raises(TypeError, match="colour"):
        artifacts.load_config(artifacts.RegistrarConfig, json.dumps({"colour": 1}))
    with pytest.raises(FileNotFoundError, match="no evaluation.json"):
        artifacts.Evaluation.read(str(tmp_path))


def test_nan_and_infinities_are_refused_at_the_artifact_boundary(tmp_path):
    """ML Metadata's SQLite store read a NaN property as a column name and the run died after training: a metric
    that cannot be computed must be left out, and writing one that is NaN is an error naming it."""
    evaluation = artifacts.Evaluation("gan", {"fid": float("nan"), "per_class_fid": [1.0, float("inf")]},
                                      {"blessed": True, "candidate": None})
    with pytest.raises(ValueError, match=r"non-finite values at metrics\.fid, metrics\.per_class_fid\[1\]"):
        evaluation.write(str(tmp_path), np.zeros(2), np.zeros(2))
    assert not (tmp_path / artifacts.EVALUATION_FILE).exists()
    artifact = FakeArtifact()
    artifact.set_float_custom_property = artifact.set_json_value_custom_property
    with pytest.raises(ValueError, match="key metric fid: non-finite"):
        artifacts.set_key_metric(artifact, "fid", float("nan"))
    artifacts.set_key_metric(artifact, "fid", None)  # not measured: the name only, no value
    assert artifact.properties == {artifacts.KEY_METRIC_PROPERTY: "fid"}
    artifacts.set_key_metric(artifact, "fid", 12.5)
    assert artifact.properties[artifacts.KEY_METRIC_VALUE_PROPERTY] == 12.5
    with pytest.raises(ValueError, match="fid_floor"):
        artifacts.MetricNetworkEvaluation(None, "test", 10, 10, float("inf"), 1.0, {}).write(str(tmp_path))
