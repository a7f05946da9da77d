"""The pipeline for an orchestrator that exists: TFX's KubeflowV2DagRunner writes the Kubeflow Pipelines v2 spec
(also what Vertex AI Pipelines runs). The only module that touches it.

Every step runs TFX's Kubeflow V2 launcher in `image`, which must hold this project installed with its lock
(`pip install --ignore-requires-python -r requirements.txt -c constraints.txt && pip install -e .`): the custom
components' executors and the Trainer's Ray glue are imported from it by name.
"""
import json
import os

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner


def compile_v2(tfx_pipeline, image: str, out: str) -> str:
    """Writes the pipeline's KFP v2 spec (JSON: displayName, labels, pipelineSpec, runtimeConfig) to `out`."""
    directory, filename = os.path.split(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=directory, output_filename=filename)
    runner.run(tfx_pipeline, write_out=True)
    with open(os.path.join(directory, filename)) as f:
        json.load(f)  # written whole
    return os.path.join(directory, filename)
