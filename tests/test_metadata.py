"""Where ML Metadata lives (pipelines/metadata.py): a SQLite file in the run's state directory by default, or a
MySQL server several machines share; a MySQL store that does not answer stops a run before any work."""
import subprocess
import sys
import time

import pytest
from ml_metadata.proto import metadata_store_pb2

from pipelines import metadata
from tests.conftest import REPO_ROOT, free_port


def test_a_sqlite_path_is_a_sqlite_store_read_only_for_readers():
    config = metadata.connection_config("/runs/latentforge/metadata.sqlite", readonly=True)
    assert config.sqlite.filename_uri == "/runs/latentforge/metadata.sqlite"
    assert config.sqlite.connection_mode == metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    assert (metadata.connection_config("m.sqlite").sqlite.connection_mode ==
            metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)


def test_a_mysql_uri_names_server_database_and_user(monkeypatch):
    config = metadata.connection_config("mysql://lf%40team:s%3Acret@db.internal:3307/mlmd")
    assert (config.mysql.host, config.mysql.port, config.mysql.database) == ("db.internal", 3307, "mlmd")
    assert (config.mysql.user, config.mysql.password) == ("lf@team", "s:cret")
    # The password can stay out of the URI (and so out of process lists); the port defaults to MySQL's.
    monkeypatch.setenv(metadata.PASSWORD_ENV, "from-env")
    config = metadata.connection_config("mysql://lf@db.internal/mlmd")
    assert (config.mysql.port, config.mysql.password) == (3306, "from-env")


@pytest.mark.parametrize("uri", ["mysql://db.internal/mlmd", "mysql://lf@db.internal", "mysql://lf@/mlmd",
                                 "mysql://lf@db.internal:port/mlmd"])
def test_a_malformed_mysql_uri_says_the_form(uri):
    with pytest.raises(metadata.MetadataError, match=r"mysql://USER\[:PASSWORD\]@HOST\[:PORT\]/DATABASE|port"):
        metadata.connection_config(uri)


def test_a_run_whose_mysql_metadata_does_not_answer_stops_before_any_work(tmp_path):
    uri = f"mysql://lf:hunter2@127.0.0.1:{free_port()}/mlmd"  # nothing listens there
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--run-dir", str(tmp_path),
                             "--metadata-uri", uri], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 5, result.stdout[-2000:] + result.stderr[-2000:]
    assert "ML Metadata at mysql://lf:***@127.0.0.1:" in result.stderr and "hunter2" not in result.stderr
    assert "ImageExampleGen" not in result.stdout and time.monotonic() - started < 120
