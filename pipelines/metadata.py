"""Reads ML Metadata after a run: which nodes executed, which came from the TFX cache, what they wrote."""
import dataclasses
from typing import List

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

STATE_NAMES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


@dataclasses.dataclass(frozen=True)
class NodeRun:
    node: str
    state: str  # COMPLETE (executed), CACHED, FAILED, RUNNING, ...
    outputs: List[str]  # output artifact URIs


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def latest_run(metadata_path: str, pipeline_name: str) -> List[NodeRun]:
    """The nodes of the newest run of `pipeline_name`, in execution order."""
    store = open_store(metadata_path)
    runs = [c for c in store.get_contexts_by_type("pipeline_run")
            if any(p.name == pipeline_name for p in store.get_parent_contexts_by_context(c.id))]
    if not runs:
        return []
    newest = max(runs, key=lambda c: c.create_time_since_epoch)
    executions = sorted(store.get_executions_by_context(newest.id), key=lambda e: e.id)
    result = []
    for execution in executions:
        node = next((c.name.split(".")[-1] for c in store.get_contexts_by_execution(execution.id)
                     if c.type == "node"), execution.type)
        events = store.get_events_by_execution_ids([execution.id])
        output_ids = [e.artifact_id for e in events if e.type in (metadata_store_pb2.Event.OUTPUT,)]
        uris = [a.uri for a in store.get_artifacts_by_id(output_ids)] if output_ids else []
        result.append(NodeRun(node, STATE_NAMES.get(execution.last_known_state, "UNKNOWN"), uris))
    return result
