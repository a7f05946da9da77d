"""Object storage (backends/storage.py) against an S3-compatible server on 127.0.0.1: URIs are checked before any
work, with one line naming the URI and what to set; Ray Train keeps its checkpoints in the bucket and resumes
from them, past a damaged one."""
import glob
import json
import os
import tempfile
import time

import pytest

from tests.conftest import S3_BUCKET, TRANSFORMED_SPEC, free_port, s3_keys, sample_digits, sample_labels, \
    write_transformed
from backends import storage


@pytest.mark.parametrize("uri, expected", [
    ("hdfs://cluster/runs", "nothing here serves hdfs://; give a local directory, s3://BUCKET/PREFIX"),
    ("s3:///runs", "no bucket; give s3://BUCKET/PREFIX"),
])
def test_a_uri_nobody_serves_is_named_with_the_ones_that_are(uri, expected):
    with pytest.raises(storage.StorageError, match=expected):
        storage.check(uri)


def test_a_missing_bucket_is_named_with_how_to_create_it(s3_store):
    storage.check(f"s3://{S3_BUCKET}/runs")  # the fixture's bucket: fine, and nothing is written
    assert s3_keys(s3_store, "") == []
    with pytest.raises(storage.StorageError, match=r"s3://no-such-bucket/runs: the bucket no-such-bucket does not "
                                                   r"exist on the S3 endpoint http://127\.0\.0\.1:\d+; create it"):
        storage.check("s3://no-such-bucket/runs")


def test_an_endpoint_that_does_not_answer_fails_in_seconds(s3_store, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(storage.StorageError, match="does not answer .*; set AWS_ENDPOINT_URL_S3"):
        storage.check(f"s3://{S3_BUCKET}/runs")
    assert time.monotonic() - started < 20


def test_credentials_the_store_refuses_are_named(monkeypatch):
    # A store that checks credentials (moto's server with its IAM authentication on): keys it does not know.
    import subprocess
    import sys
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        deadline = time.monotonic() + 60
        while True:
            try:
                storage.check("s3://team-bucket/runs")
                pytest.fail("unknown credentials passed the check")
            except storage.StorageError as error:
                if "does not answer" in str(error) and time.monotonic() < deadline:
                    time.sleep(0.3)  # the server is still starting
                    continue
                message = str(error)
                break
        assert message.startswith("s3://team-bucket/runs: the S3 endpoint http://127.0.0.1:")
        assert "refused the credentials for bucket team-bucket" in message and "check AWS_ACCESS_KEY_ID" in message
    finally:
        server.kill()


def test_paths_join_as_their_kind_does():
    assert storage.join("s3://bucket/runs/", "ray", "x") == "s3://bucket/runs/ray/x"
    assert storage.join("/tmp/runs", "ray") == os.path.join("/tmp/runs", "ray")
    assert storage.absolute("s3://bucket/runs/") == "s3://bucket/runs"


@pytest.mark.slow
def test_ray_train_checkpoints_into_the_bucket_and_resumes_past_a_damaged_one(s3_store, tmp_path):
    """Ray Train keeps a run's checkpoints in the bucket; a run interrupted after its newest checkpoint was
    truncated (a crash mid-write, a full disk) is resumed by the same run name: the rerun says so, skips it and
    resumes from the checkpoint before it, downloaded from the bucket."""
    from backends import ray_cluster
    from components.trainer import ray_train
    from trainers import job as training
    # A local Ray started now, with this process's settings: its workers upload the checkpoints themselves.
    ray_cluster.shutdown()
    images, labels = sample_digits(192), sample_labels(192)
    train_file = write_transformed(str(tmp_path / "train.gz"), images[:128], labels[:128])
    eval_file = write_transformed(str(tmp_path / "eval.gz"), images[128:], labels[128:])

    def job(epochs):
        return training.TrainingJob("stacked_ae", {"epochs": epochs, "batch_size": 64, "seed": 3}, (28, 28, 1),
                                    [train_file], [eval_file], TRANSFORMED_SPEC)

    root = f"s3://{S3_BUCKET}/runs/ray"
    client = s3_store["client"]
    try:
        name = ray_train.run_name(root, "ae")
        first = ray_train.train(job(2), ray_train.RaySettings(workers=1, max_failures=0), root, name)
        assert first.run_path == f"{root}/{name}"
        keys = s3_keys(s3_store, f"runs/ray/{name}/")
        assert f"runs/ray/{name}/{ray_train.COMPLETE_MARKER}" in keys
        epoch_of = {key.rsplit("/", 1)[0]: json.loads(client.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read())[
            "epoch"] for key in keys if key.endswith("/state.json") and "/checkpoint_" in key}
        assert sorted(epoch_of.values()) == [1, 2], keys
        # The model comes back from the bucket's checkpoint (downloaded once, by Ray's Checkpoint API).
        model, state = training.restore(first.checkpoint_dir)
        assert state["epoch"] == 2 and model(images[:4]).shape == (4, 28, 28, 1)
        # A finished run is never resumed into: the next run of the same base gets the next name.
        assert ray_train.run_name(root, "ae") == "ae-2"
        assert first.downloaded and os.path.isdir(first.checkpoint_dir)
        first.remove_download()  # once restored, the local copy goes (a run per day would fill the disk)
        assert not os.path.exists(first.checkpoint_dir)
        resume_downloads = set(glob.glob(os.path.join(tempfile.gettempdir(), "latentforge-resume-*")))

        # As if the run had been killed while its last checkpoint was written.
        client.delete_object(Bucket=S3_BUCKET, Key=f"runs/ray/{name}/{ray_train.COMPLETE_MARKER}")
        newest = next(prefix for prefix, epoch in epoch_of.items() if epoch == 2)
        for key in (k for k in keys if k.startswith(newest + "/") and "/weights.data-" in k):
            data = client.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
            client.put_object(Bucket=S3_BUCKET, Key=key, Body=data[:len(data) // 2])
        second = ray_train.train(job(3), ray_train.RaySettings(workers=1, max_failures=0), root, name)
        worker = second.workers[0]
        assert [p.rstrip("/").rsplit("/", 1)[-1] for p in worker["unreadable_checkpoints"]] == [
            newest.rsplit("/", 1)[-1]]
        assert worker["resumed_from_epoch"] == 1
        assert len(second.history["loss"]) == 3 and second.history["loss"][0] == first.history["loss"][0]
        # The worker's download of the checkpoint it resumed from is gone once it trained.
        assert set(glob.glob(os.path.join(tempfile.gettempdir(), "latentforge-resume-*"))) <= resume_downloads
        second.remove_download()
    finally:
        ray_cluster.shutdown()


def _latentforge(*args, env=None, timeout=600):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_a_run_into_a_missing_bucket_fails_before_any_work_naming_it(s3_store, tmp_path):
    started = time.monotonic()
    result = _latentforge("run", "--model", "conv_ae", "--run-dir", "s3://no-such-bucket/runs",
                          env={**os.environ, "LATENTFORGE_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "s3://no-such-bucket/runs/latentforge: the bucket no-such-bucket does not exist" in result.stderr
    assert "ImageExampleGen" not in result.stdout and time.monotonic() - started < 60
    assert not (tmp_path / "state").exists()
