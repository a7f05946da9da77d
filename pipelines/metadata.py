"""ML Metadata: where it is (a SQLite file, or a MySQL server shared by several machines) and what a run left in
it: which nodes executed, which came from the TFX cache, what they wrote."""
import dataclasses
import os
import urllib.parse
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


METADATA_URI_ENV = "LATENTFORGE_METADATA_URI"
PASSWORD_ENV = "LATENTFORGE_METADATA_PASSWORD"


class MetadataError(ValueError):
    """A malformed ML Metadata address (exit 2)."""


class MetadataUnavailable(RuntimeError):
    """ML Metadata's server does not answer or refuses the user (exit 5, as for Ray and MLflow)."""


def is_mysql(target: str) -> bool:
    return target.startswith("mysql://")


def connection_config(target: str, readonly: bool = False) -> metadata_store_pb2.ConnectionConfig:
    """MLMD's connection for `target`: a SQLite file path, or mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (the
    password may instead be in LATENTFORGE_METADATA_PASSWORD, so it stays out of shell histories and process
    lists). TFX's own sqlite/mysql_metadata_connection_config, plus read-only SQLite for readers."""
    config = metadata_store_pb2.ConnectionConfig()
    if not is_mysql(target):
        config.sqlite.filename_uri = target
        config.sqlite.connection_mode = (metadata_store_pb2.SqliteMetadataSourceConfig.READONLY if readonly else
                                         metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
        return config
    parsed = urllib.parse.urlparse(target)
    database = parsed.path.lstrip("/")
    try:
        port = parsed.port or 3306
    except ValueError as e:
        raise MetadataError(f"{_redacted(target)}: the port is not a number") from e
    if not parsed.hostname or not database or "/" in database or not parsed.username:
        raise MetadataError(f"{_redacted(target)}: give mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    config.mysql.host, config.mysql.port, config.mysql.database = parsed.hostname, port, database
    config.mysql.user = urllib.parse.unquote(parsed.username)
    config.mysql.password = urllib.parse.unquote(parsed.password or os.environ.get(PASSWORD_ENV, ""))
    config.retry_options.max_num_retries = 1  # an unreachable server fails the run in seconds, not minutes
    return config


def _redacted(target: str) -> str:
    """The URI without its password, for messages."""
    parsed = urllib.parse.urlparse(target)
    if parsed.password is None:
        return target
    return target.replace(f":{parsed.password}@", ":***@", 1)


def check(target: str) -> None:
    """Connects once (a MySQL store; a SQLite file is created on first use): MetadataError naming the server
    when it does not answer or refuses the user, before any work."""
    if not is_mysql(target):
        return
    try:
        metadata_store.MetadataStore(connection_config(target))
    except RuntimeError as e:
        raise MetadataUnavailable(f"ML Metadata at {_redacted(target)} does not answer or refuses the user "
                            f"({str(e).splitlines()[0][:200]}); start the MySQL server or fix --metadata-uri") from e


def open_store(target: str) -> metadata_store.MetadataStore:
    return metadata_store.MetadataStore(connection_config(target, readonly=True))


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
