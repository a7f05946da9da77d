"""Where a run's files live: a local directory (the embedded default) or object storage, `s3://BUCKET/PREFIX`
(AWS S3 or an S3-compatible store: MinIO, Ceph, moto) or `gs://BUCKET/PREFIX`. The one module that knows the
object-storage settings; everything else hands URIs to the libraries' own filesystems: pyarrow for Ray Train's
storage, tf.io.gfile for TensorFlow (gs:// built in, s3:// through tensorflow-io's plugin), Beam's and MLflow's
(boto3) for theirs.

Settings are the AWS SDKs' own variables, so one set serves boto3, pyarrow, tensorflow-io and the aws CLI:
    AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL)   an S3-compatible endpoint, e.g. http://127.0.0.1:9000
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY     credentials (else ~/.aws or the machine's role)
    AWS_REGION (or AWS_DEFAULT_REGION)           us-east-1 when unset
gs:// uses Google's application-default credentials (GOOGLE_APPLICATION_CREDENTIALS).
"""
import atexit
import os
import posixpath
import sys
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import urlparse

SCHEMES = ("s3", "gs")
DEFAULT_REGION = "us-east-1"
STATE_DIR_ENV = "LATENTFORGE_STATE_DIR"
# The storage settings, read here or by the libraries URIs are handed to (deploy/kubernetes/ sets them;
# tests/test_deploy.py checks the manifests name no others).
SETTINGS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
            "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS", STATE_DIR_ENV)
CHECK_TIMEOUT_S = 5.0  # connect and read timeouts of the up-front check: a wrong endpoint fails in seconds


class StorageError(ValueError):
    """A storage URI that cannot be used, with what to set."""


def is_uri(path: str) -> bool:
    """Whether `path` names object storage (any `scheme://`), rather than a local path."""
    return "://" in str(path)


def scheme(path: str) -> Optional[str]:
    return urlparse(str(path)).scheme if is_uri(path) else None


def check_scheme(path: str) -> None:
    """Refuses a URI whose scheme nothing here serves, naming the ones that are."""
    found = scheme(path)
    if found is not None and found not in SCHEMES:
        raise StorageError(f"{path}: nothing here serves {found}://; give a local directory, s3://BUCKET/PREFIX or "
                           "gs://BUCKET/PREFIX")
    if found is not None and not urlparse(str(path)).netloc:
        raise StorageError(f"{path}: no bucket; give {found}://BUCKET/PREFIX")


def join(base: str, *parts: str) -> str:
    """os.path.join for a local path, '/'-joined for a URI (never the local separator rules on a bucket key)."""
    if is_uri(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def absolute(path: str) -> str:
    return path.rstrip("/") if is_uri(path) else os.path.abspath(path)


def local_state_dir(uri: str) -> str:
    """A local directory for what cannot live on object storage (SQLite: ML Metadata, the embedded MLflow store; a
    lock), named after the URI under LATENTFORGE_STATE_DIR (default ~/.cache/latentforge/state)."""
    base = os.environ.get(STATE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "latentforge", "state")
    found, _, rest = uri.partition("://")
    return os.path.join(base, found, *[part for part in rest.split("/") if part not in ("", ".", "..")])


def s3_endpoint() -> Optional[str]:
    """The S3 endpoint the AWS SDKs would use (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def _bucket_key(uri: str) -> Tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def pyarrow_filesystem(uri: str):
    """(pyarrow filesystem, path on it) for a URI; for Ray Train's RunConfig(storage_filesystem, storage_path).
    pyarrow 10 reads the credentials and region from the environment but not AWS_ENDPOINT_URL*: passed here."""
    import pyarrow.fs  # pylint: disable=import-outside-toplevel
    check_scheme(uri)
    bucket, key = _bucket_key(uri)
    path = posixpath.join(bucket, key).rstrip("/")
    if scheme(uri) == "s3":
        endpoint = s3_endpoint()
        options = {"region": s3_region()}
        if endpoint:
            parsed = urlparse(endpoint)
            options.update(endpoint_override=parsed.netloc or endpoint, scheme=parsed.scheme or "https")
        return pyarrow.fs.S3FileSystem(**options), path
    if scheme(uri) == "gs":
        return pyarrow.fs.GcsFileSystem(), path
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(uri)


def check(uri: str, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Fails in seconds, before any work, when `uri` cannot be written: a scheme nobody serves, an endpoint that
    does not answer, a bucket that does not exist, credentials the store refuses. Writes nothing."""
    check_scheme(uri)
    if scheme(uri) == "s3":
        _check_s3(uri, timeout_s)
    elif scheme(uri) == "gs":
        _check_gcs(uri, timeout_s)


def _check_s3(uri: str, timeout_s: float) -> None:
    import boto3  # pylint: disable=import-outside-toplevel
    import botocore.config  # pylint: disable=import-outside-toplevel
    import botocore.exceptions as errors  # pylint: disable=import-outside-toplevel
    bucket, _ = _bucket_key(uri)
    endpoint = s3_endpoint()
    where = f"the S3 endpoint {endpoint}" if endpoint else "AWS S3"
    client = boto3.client("s3", region_name=s3_region(), config=botocore.config.Config(
        connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1}))
    try:
        client.head_bucket(Bucket=bucket)
    except errors.NoCredentialsError as e:
        raise StorageError(f"{uri}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                           "configure ~/.aws)") from e
    except (errors.EndpointConnectionError, errors.ConnectTimeoutError, errors.ReadTimeoutError) as e:
        raise StorageError(f"{uri}: {where} does not answer ({type(e).__name__}); set AWS_ENDPOINT_URL_S3 to "
                           "your store's address (e.g. http://127.0.0.1:9000 for a local MinIO)") from e
    except errors.ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            raise StorageError(f"{uri}: the bucket {bucket} does not exist on {where}; create it (aws s3 mb "
                               f"s3://{bucket}) or name another") from e
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            raise StorageError(f"{uri}: {where} refused the credentials for bucket {bucket} ({code}); check "
                               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from e
        raise StorageError(f"{uri}: {where} answered {code or e}") from e


def _check_gcs(uri: str, timeout_s: float) -> None:
    import datetime  # pylint: disable=import-outside-toplevel
    import pyarrow.fs  # pylint: disable=import-outside-toplevel
    bucket, _ = _bucket_key(uri)
    filesystem = pyarrow.fs.GcsFileSystem(retry_time_limit=datetime.timedelta(seconds=timeout_s))
    try:
        info = filesystem.get_file_info(bucket)
    except OSError as e:
        raise StorageError(f"{uri}: Google Cloud Storage could not be reached or refused access ({e}); set "
                           "GOOGLE_APPLICATION_CREDENTIALS") from e
    if info.type == pyarrow.fs.FileType.NotFound:
        raise StorageError(f"{uri}: the bucket {bucket} does not exist; create it (gcloud storage buckets create "
                           f"gs://{bucket}) or name another")


def tensorflow_env() -> Dict[str, str]:
    """tensorflow-io's S3 plugin reads its own variables (S3_ENDPOINT, S3_USE_HTTPS, S3_VERIFY_SSL), derived
    here from the standard ones."""
    endpoint = s3_endpoint()
    env = {"AWS_REGION": s3_region()}
    if endpoint:
        parsed = urlparse(endpoint)
        env.update(S3_ENDPOINT=endpoint, S3_USE_HTTPS="0" if parsed.scheme == "http" else "1",
                   S3_VERIFY_SSL="0" if parsed.scheme == "http" else "1")
    return env


def worker_env() -> Dict[str, str]:
    """The settings a Ray worker on another node needs to reach the same store (credentials excepted: they belong
    to the node, as its role or its own environment)."""
    env = {name: os.environ[name] for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if os.environ.get(name)}
    return {**env, **tensorflow_env()} if env or os.environ.get("AWS_REGION") else env


_tensorflow_s3 = False


def enable_tensorflow(path: str) -> None:
    """Makes tf.io.gfile (and so TFX, tf.data, SavedModel) serve `path`'s scheme in this process: s3:// needs
    tensorflow-io's plugin, loaded here; gs:// is TensorFlow's own."""
    global _tensorflow_s3  # pylint: disable=global-statement
    if scheme(path) != "s3" or _tensorflow_s3:
        return
    os.environ.update(tensorflow_env())
    import tensorflow_io  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    _tensorflow_s3 = True
    previous_hook = sys.excepthook

    def note_uncaught(*exc_info):  # an uncaught exception still leaves with 1 (see _leave_before_static_destructors)
        set_exit_code(1)
        previous_hook(*exc_info)
    sys.excepthook = note_uncaught


# Files by path, local or URI: the builtins for a local path, tf.io.gfile (TFX's own filesystem layer) for a URI.
# Local reads stay TensorFlow-free (the CLI's quick commands read artifacts' JSON without importing it).

def _gfile():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.io.gfile


def open_file(path: str, mode: str = "r"):
    if is_uri(path):
        enable_tensorflow(path)
        return _gfile().GFile(path, mode)
    return open(path, mode)  # pylint: disable=consider-using-with,unspecified-encoding


def makedirs(path: str) -> None:
    if is_uri(path):
        enable_tensorflow(path)
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def exists(path: str) -> bool:
    if is_uri(path):
        enable_tensorflow(path)
        return _gfile().exists(path)
    return os.path.exists(path)


def listdir(path: str) -> List[str]:
    """The names in a directory ([] when there is none)."""
    if is_uri(path):
        enable_tensorflow(path)
        return [name.rstrip("/") for name in _gfile().listdir(path)] if _gfile().isdir(path) else []
    return os.listdir(path) if os.path.isdir(path) else []


def glob(pattern: str) -> List[str]:
    if is_uri(pattern):
        enable_tensorflow(pattern)
        return sorted(_gfile().glob(pattern))
    import glob as local  # pylint: disable=import-outside-toplevel
    return sorted(local.glob(pattern))


def copy_tree(source: str, destination: str, skip: Callable[[str], bool] = lambda name: False) -> None:
    """Every file under `source` to the same place under `destination` (either local or a URI), through pyarrow's
    filesystems; files whose base name `skip` accepts are left out."""
    import pyarrow.fs  # pylint: disable=import-outside-toplevel
    source_fs, source_path = pyarrow_filesystem(source)
    destination_fs, destination_path = pyarrow_filesystem(destination)
    for info in source_fs.get_file_info(pyarrow.fs.FileSelector(source_path, recursive=True)):
        if info.type != pyarrow.fs.FileType.File or skip(info.base_name):
            continue
        target = posixpath.join(destination_path, posixpath.relpath(info.path, source_path))
        destination_fs.create_dir(posixpath.dirname(target), recursive=True)
        pyarrow.fs.copy_files(info.path, target, source_filesystem=source_fs, destination_filesystem=destination_fs)


_exit_code = 0


def set_exit_code(code: int) -> None:
    """The code this process leaves with if it used TensorFlow's S3 plugin (see below): the CLI's and the test
    session's."""
    global _exit_code  # pylint: disable=global-statement
    _exit_code = int(code)


def _leave_before_static_destructors() -> None:
    """tensorflow-io 0.37.1 (the last release, the one for TF 2.16) aborts in its S3 client's static destructors
    at interpreter exit ("pure virtual method called", exit code 134: tensorflow/io#2039, fixed upstream after the
    release). A process that loaded it leaves here, after the exit handlers registered after this module's import
    (Ray's, MLflow's, files' flushes) and before the C++ destructors, with the code set_exit_code gave."""
    if _tensorflow_s3:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_code)  # pylint: disable=protected-access


atexit.register(_leave_before_static_destructors)  # at import: the CLI imports this module before the others
