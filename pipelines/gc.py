"""Retention: `latentforge gc --keep N` frees the disk of old pipeline runs that nothing needs any more.

A pipeline run (an ML Metadata `pipeline_run` context) is kept when it is one of the newest N, or when it is
behind a registered MLflow model version (a version's tags name the TFX pipeline run and artifact it came from:
see the MlflowRegistrar). Any other run is collected:
- the artifacts its executions produced are deleted from disk and marked DELETED in ML Metadata (TFX's cache
  never reuses an execution whose outputs are not LIVE, so a later run recomputes instead of reading a hole),
  except artifacts a kept run also used (a kept run's cached execution may point at an old run's outputs) and
  artifacts a registered version names;
- the Ray Train runs its Trainers wrote (checkpoints), unless a kept Trainer's outputs name them;
- its MLflow runs (parent and children) are deleted (MLflow's soft delete: `mlflow gc` purges them).
Registered model versions, their artifacts in MLflow's store, the Pusher's serving/ folder and runs.jsonl are
never touched. The caller holds the pipeline root's lock (pipelines/run_lock.py).
"""
import dataclasses
import json
import os
import shutil
from typing import List, Optional, Set

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from backends import tracking
from pipelines import metadata


@dataclasses.dataclass
class Collection:
    kept_runs: List[str]
    collected_runs: List[str]
    deleted_paths: List[str]
    deleted_artifacts: int
    deleted_mlflow_runs: int
    freed_bytes: int
    protected_by_registry: List[str]  # runs kept only because a registered version came from them


def _store(metadata_path: str) -> metadata_store.MetadataStore:
    return metadata_store.MetadataStore(metadata.connection_config(metadata_path))


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
               if not os.path.islink(os.path.join(d, f)))


def _registered_references(config: Optional[tracking.TrackingConfig]):
    """(pipeline run ids, artifact URIs) that registered model versions came from."""
    if config is None:
        return set(), set()
    runs, uris = set(), set()
    for version in tracking.all_model_versions(config):
        runs.add(version.tags.get("tfx.pipeline_run_id"))
        uris.update(version.tags.get(k) for k in ("tfx.model_uri", "tfx.artifact_uri"))
    return runs - {None}, uris - {None}


def _ray_run(model_run_uri: str) -> Optional[str]:
    try:
        with open(os.path.join(model_run_uri, "metrics.json")) as f:
            return json.load(f).get("ray_run")
    except (OSError, ValueError):
        return None


def collect(metadata_path: str, pipeline_name: str, keep: int, tracking_config: Optional[tracking.TrackingConfig],
            dry_run: bool = False) -> Collection:
    if keep < 1:
        raise ValueError(f"keep={keep}: keep at least the newest run")
    store = _store(metadata_path)
    runs = sorted((c for c in store.get_contexts_by_type("pipeline_run")
                   if any(p.name == pipeline_name for p in store.get_parent_contexts_by_context(c.id))),
                  key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)
    registered_runs, registered_uris = _registered_references(tracking_config)
    kept = runs[:keep]
    protected = [r for r in runs[keep:] if r.name in registered_runs]
    collected = [r for r in runs[keep:] if r.name not in registered_runs]

    def artifacts_of(run, event_types) -> Set[int]:
        executions = [e.id for e in store.get_executions_by_context(run.id)]
        events = store.get_events_by_execution_ids(executions) if executions else []
        return {e.artifact_id for e in events if e.type in event_types}

    used = metadata_store_pb2.Event
    keep_ids: Set[int] = set()
    for run in kept + protected:
        keep_ids |= artifacts_of(run, (used.INPUT, used.OUTPUT, used.DECLARED_OUTPUT, used.DECLARED_INPUT))
    drop_ids: Set[int] = set()
    for run in collected:
        drop_ids |= artifacts_of(run, (used.OUTPUT, used.DECLARED_OUTPUT))
    drop_ids -= keep_ids
    kept_artifacts = store.get_artifacts_by_id(sorted(keep_ids)) if keep_ids else []
    kept_ray_runs = {_ray_run(a.uri) for a in kept_artifacts}
    dropped = [a for a in (store.get_artifacts_by_id(sorted(drop_ids)) if drop_ids else [])
               if a.uri not in registered_uris and a.state != metadata_store_pb2.Artifact.DELETED]

    paths: List[str] = []
    for artifact in dropped:
        ray_run = _ray_run(artifact.uri)
        if ray_run and ray_run not in kept_ray_runs and os.path.isdir(ray_run):
            paths.append(ray_run)
        if os.path.exists(artifact.uri):
            paths.append(artifact.uri)
    freed = sum(_size(p) for p in paths)
    mlflow_runs = 0
    if not dry_run:
        for artifact in dropped:
            artifact.state = metadata_store_pb2.Artifact.DELETED
        if dropped:
            store.put_artifacts(dropped)  # first: a crash after it leaves files no run will use, never a hole
        for path in paths:
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        if tracking_config is not None and collected:
            mlflow_runs = tracking.delete_pipeline_runs(tracking_config, [r.name for r in collected])
    return Collection([r.name for r in kept], [r.name for r in collected], paths, len(dropped), mlflow_runs, freed,
                      [r.name for r in protected])


def describe(result: Collection, dry_run: bool) -> str:
    verb = "would delete" if dry_run else "deleted"
    lines = [f"kept {len(result.kept_runs)} newest run(s)" + (
        f" and {len(result.protected_by_registry)} older one(s) behind registered model versions"
        if result.protected_by_registry else ""),
        f"{verb} {len(result.collected_runs)} run(s): {result.deleted_artifacts} artifact(s), "
        f"{len(result.deleted_paths)} path(s), {result.freed_bytes / 1024 ** 2:.1f} MiB"
        + ("" if dry_run else f", {result.deleted_mlflow_runs} MLflow run(s)")]
    lines += [f"  {path}" for path in result.deleted_paths[:50]]
    if len(result.deleted_paths) > 50:
        lines.append(f"  ... and {len(result.deleted_paths) - 50} more")
    return "\n".join(lines)

