"""Reads ML Metadata after a run: which nodes executed, which came from the TFX cache, what they wrote."""
import dataclasses
from typing import Dict, List

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

STATE_NAMES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


@dataclasses.dataclass(frozen=True)
class NodeRun:
    node: str
    state: str  # COMPLETE (executed), CACHED, FAILED, RUNNING, ...
    outputs: Dict[str, str]  # output key -> artifact URI
    properties: Dict[str, Dict[str, str]]  # output key -> the artifact's custom properties (as text)
    inputs: Dict[str, List[str]] = dataclasses.field(default_factory=dict)  # input key -> the artifacts' URIs
    seconds: float = 0.0  # from the execution's creation to its last update in ML Metadata (its wall time)


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
        all_events = store.get_events_by_execution_ids([execution.id])
        events = [e for e in all_events
                  if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
        keys = {e.artifact_id: e.path.steps[0].key for e in events if e.path.steps}
        artifacts = store.get_artifacts_by_id(list(keys)) if keys else []
        outputs = {keys[a.id]: a.uri for a in artifacts}
        properties = {keys[a.id]: {k: str(getattr(v, v.WhichOneof("value"))) for k, v in a.custom_properties.items()
                                   if v.WhichOneof("value")} for a in artifacts}
        input_events = [e for e in all_events if e.type == metadata_store_pb2.Event.INPUT and e.path.steps]
        input_uris = {a.id: a.uri for a in store.get_artifacts_by_id([e.artifact_id for e in input_events])}
        inputs: Dict[str, List[str]] = {}
        for event in input_events:
            inputs.setdefault(event.path.steps[0].key, []).append(input_uris[event.artifact_id])
        result.append(NodeRun(node, STATE_NAMES.get(execution.last_known_state, "UNKNOWN"), outputs, properties,
                              inputs, (execution.last_update_time_since_epoch
                                       - execution.create_time_since_epoch) / 1000.0))
    return result
