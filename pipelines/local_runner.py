"""Runs a pipeline with TFX's LocalDagRunner: one process, SQLite ML Metadata, outputs under a run directory.

Layout of a run directory (--run-dir, default ./runs; a local directory or s3://BUCKET/PREFIX, gs://BUCKET/PREFIX),
per pipeline name:
    RUN_DIR/PIPELINE/tfx/         pipeline_root: every component's artifacts
    RUN_DIR/PIPELINE/serving/MODEL/VERSION/   SavedModels the Pusher wrote
    RUN_DIR/PIPELINE/ray/RUN/          Ray Train runs: checkpoints, Ray's own state
    RUN_DIR/PIPELINE/mlartifacts/      the embedded MLflow store's artifacts
and, in the pipeline's state directory (RUN_DIR/PIPELINE itself when local; for a URI, a local directory named after
it under LATENTFORGE_STATE_DIR, default ~/.cache/latentforge/state):
    metadata.sqlite   ML Metadata (executions, artifacts, cache)
    mlflow.db         the embedded MLflow store's runs and registry
    runs.jsonl, the run lock
SQLite cannot live on object storage; a team sharing one pipeline's metadata points TFX at a MySQL ML Metadata
instead (docs/object-storage.md).
"""
import dataclasses
import os
from typing import Optional

from tfx.orchestration import pipeline as tfx_pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from backends import storage
from pipelines import metadata

@dataclasses.dataclass(frozen=True)
class RunPaths:
    root: str  # a directory or a URI
    local_state: Optional[str] = None  # where ML Metadata, the lock and runs.jsonl live when `root` is a URI
    metadata_uri: Optional[str] = None  # a shared ML Metadata (mysql://...) instead of the state's SQLite file

    @property
    def state(self) -> str:
        return self.local_state or self.root

    @property
    def pipeline_root(self) -> str:
        return storage.join(self.root, "tfx")

    @property
    def metadata_path(self) -> str:
        """ML Metadata's SQLite file, or the mysql:// URI of a shared one (pipelines/metadata.connection_config)."""
        return self.metadata_uri or os.path.join(self.state, "metadata.sqlite")

    @property
    def ray_storage(self) -> str:
        return storage.join(self.root, "ray")

    @property
    def serving_dir(self) -> str:
        return storage.join(self.root, "serving")

    @property
    def remote(self) -> bool:
        return storage.is_uri(self.root)


def paths_for(run_dir: str, pipeline_name: str, metadata_uri: Optional[str] = None) -> RunPaths:
    """Where a pipeline's files are (nothing is created or checked); ML Metadata in `metadata_uri`, else
    LATENTFORGE_METADATA_URI, else a SQLite file in the state directory."""
    metadata_uri = metadata_uri or os.environ.get(metadata.METADATA_URI_ENV) or None
    if storage.is_uri(run_dir):
        root = storage.join(storage.absolute(run_dir), pipeline_name)
        return RunPaths(root, storage.local_state_dir(root), metadata_uri)
    return RunPaths(os.path.abspath(os.path.join(run_dir, pipeline_name)), metadata_uri=metadata_uri)


def run_paths(run_dir: str, pipeline_name: str, metadata_uri: Optional[str] = None) -> RunPaths:
    """paths_for, checked and ready: a URI's store answers and its bucket exists (backends/storage.check: one line
    naming the URI and what to set, before any work), a MySQL ML Metadata answers, TensorFlow serves the run
    directory's scheme in this process, and the local state directory exists."""
    paths = paths_for(run_dir, pipeline_name, metadata_uri)
    metadata.check(paths.metadata_path)
    if paths.remote:
        storage.check(paths.root)
        storage.enable_tensorflow(paths.root)
    os.makedirs(paths.state, exist_ok=True)
    return paths


def run(pipeline: tfx_pipeline.Pipeline) -> None:
    LocalDagRunner().run(pipeline)
