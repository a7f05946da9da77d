"""deploy/kubernetes/: the KubeRay and MLflow manifests parse, run this project's image at the lock's Ray version,
give the pipeline a command the CLI accepts on a bucket run directory, and set only settings the code reads."""
import os
import re
import shlex

import pytest
import yaml

from backends import storage
from pipelines import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFESTS = os.path.join(ROOT, "deploy", "kubernetes")
MLFLOW_ENV = {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"}  # MLflow's own names


def _documents():
    found = {}
    for name in sorted(os.listdir(MANIFESTS)):
        with open(os.path.join(MANIFESTS, name)) as f:
            for document in yaml.safe_load_all(f):
                if document:
                    found[(document["kind"], document["metadata"]["name"])] = document
    return found


def _pod_templates(document):
    spec = document["spec"]
    cluster = spec.get("rayClusterSpec", spec)
    if document["kind"] in ("RayJob", "RayCluster"):
        return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    return [spec["template"]]


def _lock_pin(package: str) -> str:
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        return re.search(rf"^{package}==(\S+)", f.read(), re.M).group(1)


def _image_tag() -> str:
    with open(os.path.join(ROOT, "setup.py")) as f:
        return "latentforge:" + re.search(r'version="([^"]+)"', f.read()).group(1)


@pytest.fixture(scope="module")
def documents():
    return _documents()


def test_every_pod_runs_this_project_s_image_and_ray_clusters_the_lock_s_ray(documents):
    with open(os.path.join(ROOT, "deploy", "Dockerfile")) as f:
        assert f"-t {_image_tag()} ." in f.read()  # the tag the Dockerfile's build line gives
    workloads = [d for d in documents.values() if d["kind"] in ("RayJob", "RayCluster", "Deployment")]
    assert {d["kind"] for d in workloads} == {"RayJob", "RayCluster", "Deployment"}
    for document in workloads:
        for template in _pod_templates(document):
            assert {c["image"] for c in template["spec"]["containers"]} == {_image_tag()}, document["metadata"]
        if document["kind"] != "Deployment":
            cluster = document["spec"].get("rayClusterSpec", document["spec"])
            assert cluster["rayVersion"] == _lock_pin("ray")


def test_the_ray_job_runs_a_command_the_cli_accepts_on_a_bucket_run_directory(documents):
    job = documents[("RayJob", "latentforge-dcgan")]
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[0] == "latentforge"
    args = cli.build_parser().parse_args(words[1:])
    assert args.command == "run" and args.workers == 2
    storage.check_scheme(args.run_dir)
    assert storage.scheme(args.run_dir) == "s3"
    # The registry is the MLflow Service, whose artifacts go to the same bucket.
    service = documents[("Service", "mlflow")]
    assert args.mlflow_uri == f"http://mlflow:{service['spec']['ports'][0]['port']}"
    command = documents[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]["command"]
    destination = command[command.index("--artifacts-destination") + 1]
    assert destination.split("/")[2] == args.run_dir.split("/")[2]


def test_pods_get_the_storage_settings_and_only_names_the_code_reads(documents):
    config = documents[("ConfigMap", "latentforge-storage")]
    secret = documents[("Secret", "latentforge-storage-credentials")]
    named = set(config["data"]) | set(secret["stringData"])
    assert {"AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= named
    for document in documents.values():
        if document["kind"] not in ("RayJob", "RayCluster", "Deployment"):
            continue
        for template in _pod_templates(document):
            for container in template["spec"]["containers"]:
                sources = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]}
                assert sources == {"latentforge-storage", "latentforge-storage-credentials"}
                named |= {variable["name"] for variable in container.get("env", [])}
    assert named <= set(storage.SETTINGS) | MLFLOW_ENV, named - set(storage.SETTINGS) - MLFLOW_ENV
    # The head keeps ML Metadata where its volume is.
    head = documents[("RayJob", "latentforge-dcgan")]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    state = {v["name"]: v["value"] for v in head["containers"][0]["env"]}[storage.STATE_DIR_ENV]
    assert state in {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
