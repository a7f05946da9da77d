"""Runs a pipeline with TFX's LocalDagRunner: one process, SQLite ML Metadata, outputs under a run directory.

Layout of a run directory (--run-dir, default ./runs), per pipeline name:
    RUN_DIR/PIPELINE/tfx/         pipeline_root: every component's artifacts
    RUN_DIR/PIPELINE/metadata.sqlite   ML Metadata (executions, artifacts, cache)
    RUN_DIR/PIPELINE/serving/MODEL/VERSION/   SavedModels the Pusher wrote
    RUN_DIR/PIPELINE/ray/RUN/          Ray Train runs: checkpoints, Ray's own state
"""
import dataclasses
import os

from tfx.orchestration import pipeline as tfx_pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner


@dataclasses.dataclass(frozen=True)
class RunPaths:
    root: str

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.root, "tfx")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.root, "metadata.sqlite")

    @property
    def ray_storage(self) -> str:
        return os.path.join(self.root, "ray")

    @property
    def serving_dir(self) -> str:
        return os.path.join(self.root, "serving")


def run_paths(run_dir: str, pipeline_name: str) -> RunPaths:
    paths = RunPaths(os.path.abspath(os.path.join(run_dir, pipeline_name)))
    os.makedirs(paths.root, exist_ok=True)
    return paths


def run(pipeline: tfx_pipeline.Pipeline) -> None:
    LocalDagRunner().run(pipeline)
