"""`latentforge compile --target kubeflow-v2`: the same pipeline through TFX's KubeflowV2DagRunner. The written JSON
parses as a KFP v2 PipelineSpec proto; every component is a task with its upstream tasks, its executor runs in the
given image, and every execution parameter the component has in the local pipeline is a task parameter with the
same value."""
import json

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components.image_example_gen import sources
from backends import tracking
from pipelines import cli, kubeflow, pipeline
from tests.conftest import SAMPLE_DIR

ROOT = "gs://bucket/latentforge"


def _spec(path) -> pipeline_spec_pb2.PipelineSpec:
    with open(path) as f:
        document = json.load(f)
    assert set(document) >= {"displayName", "pipelineSpec", "runtimeConfig"}
    assert document["runtimeConfig"]["gcsOutputDirectory"] == ROOT
    return json_format.ParseDict(document["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())


def _parameter(task, name):
    value = task.inputs.parameters[name].runtime_value.constant_value  # TFX writes the v1 `Value` form
    return getattr(value, value.WhichOneof("value"))


def test_every_component_and_its_parameters_are_in_the_spec(tmp_path):
    info = sources.probe(sources.parse_source(f"idx:{SAMPLE_DIR}"))
    settings = pipeline.EvaluationSettings(tracking=tracking.TrackingConfig("http://mlflow:5000", "latentforge"))
    tfx_pipeline = pipeline.training_pipeline(
        pipeline.PipelineTarget("latentforge", ROOT, None, ROOT + "/serving"), info, "dcgan", {"epochs": 2},
        evaluation_settings=settings,
        ray=pipeline.RayTraining({"address": "ray://head:10001", "workers": 2}, ROOT + "/ray"))
    spec = _spec(kubeflow.compile_v2(tfx_pipeline, "registry.example/latentforge:1", str(tmp_path / "p.json")))
    tasks = spec.root.dag.tasks
    components = {c.id: c for c in tfx_pipeline.components}
    assert set(tasks) == set(components)
    for node_id, component in components.items():
        task = tasks[node_id]
        assert set(task.dependent_tasks) == {u.id for u in component.upstream_nodes}, node_id
        executor = spec.deployment_spec.fields["executors"].struct_value.fields[f"{node_id}_executor"]
        assert executor.struct_value.fields["container"].struct_value.fields["image"].string_value == \
            "registry.example/latentforge:1"
        for name, value in component.exec_properties.items():
            if value is None:
                continue
            assert name in task.inputs.parameters, (node_id, name)
            got = _parameter(task, name)
            if isinstance(value, str):
                assert got == value, (node_id, name)
            elif isinstance(value, (int, float)):
                assert float(got) == float(value), (node_id, name)
            else:  # protos (input/output configs, push destination) are written as JSON
                assert json.loads(got) == json.loads(json_format.MessageToJson(value)), (node_id, name)
    trainer_config = json.loads(_parameter(tasks["Trainer"], "custom_config"))
    assert trainer_config["model"] == "dcgan" and trainer_config["config"]["epochs"] == 2
    assert trainer_config["ray"]["settings"] == {**trainer_config["ray"]["settings"], "address": "ray://head:10001",
                                                 "workers": 2}


def test_the_cli_writes_the_spec_from_run_flags(tmp_path, capsys):
    out = tmp_path / "pipeline.json"
    assert cli.main(["compile", "--source", f"idx:{SAMPLE_DIR}", "--model", "classifier", "--pretrain", "conv_ae",
                     "--pretrain-epochs", "2", "--labels-per-class", "10", "--pipeline-root", ROOT, "--mlflow-uri",
                     "http://mlflow:5000", "--trainer", "in-process", "--image", "lf:2", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    tasks = _spec(out).root.dag.tasks
    assert {"PretrainingTrainer", "Trainer", "ModelEvaluator", "MlflowRegistrar", "Pusher"} <= set(tasks)
    assert "PretrainingTrainer" in tasks["Trainer"].dependent_tasks  # its Model artifact is the base model
    assert json.loads(_parameter(tasks["Transform"], "custom_config"))["labels_per_class"] == 10
    assert "http://mlflow:5000" in _parameter(tasks["MlflowRegistrar"], "config")
    assert json.loads(_parameter(tasks["Pusher"], "push_destination"))["filesystem"]["base_directory"] == \
        ROOT + "/serving/classifier"


@pytest.mark.parametrize("flags,message", [
    (["--trainer", "in-process"], "compile needs --mlflow-uri"),
    (["--mlflow-uri", "http://m:5000"], "needs --ray-address"),
    (["--mlflow-uri", "http://m:5000", "--trainer", "in-process", "--model", "nope"], "--model 'nope' is unknown"),
])
def test_the_cli_refuses_what_cannot_run_on_a_cluster(tmp_path, capsys, flags, message):
    code = cli.main(["compile", "--source", f"idx:{SAMPLE_DIR}", "--pipeline-root", ROOT,
                     "--out", str(tmp_path / "p.json"), *flags])
    assert code == cli.EXIT_BAD_INPUT and message in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
