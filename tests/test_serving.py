"""serving/: the model server on Ray Serve, started here on 127.0.0.1 for the module.

It serves an autoencoder, a VAE, a GAN and a DDPM from their SavedModel directories, and an autoencoder from an
MLflow registry (SQLite store in a temp dir) following its @champion. Shown: every signature answers what the
SavedModel computes (1e-5); every bad input gets its 4xx and message and the server keeps serving; 2,000
requests from 8 clients finish with no error (p50/p99 printed); moving @champion during a stream of requests
drops none and the responses switch version; the CLI's predict and serve."""
import concurrent.futures
import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from backends import tracking
from pipelines import cli
from serving import export
from serving.client import Client, ServingError
from serving.model import Limits
from tests.conftest import free_port, sample_digits
from tests.test_export import SHAPE, build, unit_or_symmetric

pytestmark = pytest.mark.slow  # a local Ray for the module

MODELS = ("stacked_ae", "conv_vae", "dcgan", "ddpm")  # served under these names from SavedModel directories
REGISTERED = "mnist-autoencoder"  # served from the registry, @champion
POLL_S = 0.5



def _export(name: str, directory: str, shift: float = 0.0):
    entry, model = build(name)
    for variable in model.trainable_variables:  # another "version": other weights
        variable.assign_add(tf.fill(variable.shape, shift))
    export.export_model(entry.family, model, SHAPE, directory, entry.pixel_range)
    return entry


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from serving import server
    root = tmp_path_factory.mktemp("serving")
    entries, sources = {}, []
    for name in MODELS:
        entries[name] = _export(name, str(root / name))
        sources.append(server.ModelSource(name=name, saved_model_dir=str(root / name)))
    # Two versions of an autoencoder in the registry (different random weights); @champion on version 1.
    config = tracking.TrackingConfig(uri=f"sqlite:///{root}/mlflow.db", experiment="serving-test",
                                     artifact_location=f"file://{root}/mlartifacts")
    images = sample_digits(2)
    versions = {}
    for version in ("1", "2"):
        directory = str(root / f"registered-v{version}")
        _export("stacked_ae", directory, shift=0.0 if version == "1" else 0.05)
        alias = "champion" if version == "1" else None
        assert tracking.register_saved_model(config, REGISTERED, directory, images, alias=alias) == version
        versions[version] = directory
    sources.append(server.ModelSource(name=REGISTERED, registered_name=REGISTERED, alias="champion",
                                      tracking_uri=config.uri))
    options = server.ServerOptions(limits=Limits(max_generated=16, max_steps=10, max_body_bytes=2 * 1024 ** 2),
                                   max_batch_size=8, poll_interval_s=POLL_S)
    url = server.start(sources, options, port=free_port())
    try:
        yield {"url": url, "root": root, "entries": entries, "config": config, "registered": versions}
    finally:
        server.stop()


def _post(url: str, body, raw: bytes = None):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers.get("X-Model-Version"), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("X-Model-Version"), json.loads(error.read())


def _inputs_for(signature_info, entry, rng):
    """Valid inputs for a signature: real digits for images, normal noise for codings, small n/seed/steps."""
    values = {}
    for name, spec in signature_info["inputs"].items():
        if name == "images":
            values[name] = unit_or_symmetric(entry, sample_digits(3))
        elif name in ("codings", "noise"):
            values[name] = rng.standard_normal([3 if d == -1 else d for d in spec["shape"]]).astype(np.float32)
        else:
            values[name] = np.int32({"n": 2, "seed": 7, "steps": 3}[name])
    return values


def test_every_signature_answers_what_the_saved_model_computes(served):
    rng = np.random.default_rng(0)
    client = Client(served["url"])
    assert client.healthy()
    assert {m["name"] for m in client.models()} == {*MODELS, REGISTERED}
    for name in MODELS:
        entry = served["entries"][name]
        loaded = tf.saved_model.load(str(served["root"] / name))
        info = client.metadata(name)
        assert info["family"] == entry.family.name and info["version"] == "0"
        assert client.request("GET", f"/v1/models/{name}/metadata")[2] == info  # TF Serving's URL too
        assert set(info["signatures"]) == set(loaded.signatures)
        for signature, signature_info in info["signatures"].items():
            inputs = _inputs_for(signature_info, entry, rng)
            expected = {k: v.numpy() for k, v in loaded.signatures[signature](
                **{k: tf.constant(v) for k, v in inputs.items()}).items()}
            for spec_name, spec in signature_info["outputs"].items():
                assert spec["dtype"] == loaded.signatures[signature].structured_outputs[spec_name].dtype.name
            batched = all(np.ndim(v) for v in inputs.values())
            if batched and len(inputs) == 1:  # row format, as TF Serving: one prediction per instance
                status, version, body = _post(f"{served['url']}/v1/models/{name}:predict", {
                    "signature_name": signature, "instances": next(iter(inputs.values())).tolist()})
                rows = body["predictions"]
                got = ({k: np.array([row[k] for row in rows]) for k in expected} if len(expected) > 1
                       else {next(iter(expected)): np.array(rows)})
            else:  # columnar
                status, version, body = _post(f"{served['url']}/v1/models/{name}:predict", {
                    "signature_name": signature, "inputs": {k: v.tolist() for k, v in inputs.items()}})
                outputs = body["outputs"]
                got = {k: np.array(v) for k, v in outputs.items()} if len(expected) > 1 else \
                    {next(iter(expected)): np.array(outputs)}
            assert status == 200 and version == "0", (name, signature, body)
            for key, value in expected.items():
                assert got[key].shape == value.shape, (name, signature, key)
                assert np.max(np.abs(got[key] - value)) <= 1e-5, (name, signature, key)
        if info["generative"]:
            steps = {"steps": 3} if entry.family.name == "diffusion" else {}
            reply = client.generate(name, n=4, seed=3, **steps)
            signature = "generate" if "generate" in loaded.signatures else "sample"
            direct = loaded.signatures[signature](n=tf.constant(4), seed=tf.constant(3),
                                                  **{k: tf.constant(v) for k, v in steps.items()})["images"].numpy()
            assert np.max(np.abs(reply.outputs - direct)) <= 1e-5 and reply.version == "0"
            from PIL import Image
            grid = Image.open(io.BytesIO(client.generate_png(name, n=4, seed=3, **steps)))
            assert grid.size == (2 * 30 + 2, 2 * 30 + 2)  # 2x2 digits of 28 px with 2 px gaps


BAD_INPUTS = [
    # (what, path suffix, body or raw bytes, status, words the message must contain)
    ("wrong shape", "stacked_ae:predict", {"instances": np.zeros((2, 28, 28)).tolist()}, 400,
     ["'images'", "shape (-1, 28, 28, 1)", "(2, 28, 28)"]),
    ("ragged rows", "stacked_ae:predict", {"inputs": [[0.1, 0.2], [0.3]]}, 400, ["not a rectangular array"]),
    ("wrong dtype", "stacked_ae:predict", {"instances": [[["a"] * 28] * 28]}, 400, ["expected numbers", "strings"]),
    ("float seed", "dcgan:predict", {"signature_name": "generate", "inputs": {"n": 2, "seed": 0.5}}, 400,
     ["'seed'", "expected integers"]),
    ("outside the pixel range", "stacked_ae:predict", {"instances": np.full((1, 28, 28, 1), 3.0).tolist()}, 400,
     ["images", "[0, 1]", "max 3"]),
    ("NaN pixel", "stacked_ae:predict", {"instances": [[[[float("nan")]] * 28] * 28]}, 400, ["finite"]),
    ("unknown signature", "stacked_ae:predict", {"signature_name": "encode_all", "instances": [[[[0.0]] * 28] * 28]},
     400, ["unknown signature_name 'encode_all'", "reconstruct"]),
    ("unknown field", "stacked_ae:predict", {"instance": []}, 400, ["unknown field", "instance"]),
    ("both instances and inputs", "stacked_ae:predict", {"instances": [], "inputs": []}, 400, ["exactly one"]),
    ("n over the limit", "dcgan:generate", {"n": 17}, 400, ["n=17", "between 1 and 16"]),
    ("n of zero", "conv_vae:generate", {"n": 0}, 400, ["n=0"]),
    ("steps over the limit", "ddpm:generate", {"n": 1, "steps": 11}, 400, ["steps=11", "between 1 and 10"]),
    ("n over the limit by :predict", "dcgan:predict",
     {"signature_name": "generate", "inputs": {"n": 5000, "seed": 0}}, 400, ["n=5000", "between 1 and 16"]),
    ("generate on an autoencoder", "stacked_ae:generate", {"n": 1}, 400, ["does not generate"]),
    ("unknown format", "dcgan:generate", {"n": 1, "format": "gif"}, 400, ["format 'gif'"]),
    ("malformed JSON", "stacked_ae:predict", b'{"instances": [', 400, ["malformed JSON"]),
    ("empty body", "stacked_ae:predict", b"", 400, ["empty"]),
    ("body over the size limit", "stacked_ae:predict", b"[" + b"0.5, " * 600_000 + b"0.5]", 413,
     ["over 2097152 bytes"]),
    ("unknown model", "nope:predict", {"instances": []}, 404, ["no model 'nope'", "stacked_ae"]),
    ("unknown verb", "stacked_ae:explain", {}, 404, [":explain"]),
]


@pytest.mark.parametrize("what,path,body,status,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_4xx_naming_the_problem_and_the_server_keeps_serving(served, what, path, body, status,
                                                                               words):
    raw = body if isinstance(body, bytes) else None
    got_status, version, reply = _post(f"{served['url']}/v1/models/{path}", body, raw)
    assert got_status == status, (what, reply)
    for word in words:
        assert word in reply["error"], (what, reply["error"])
    if not path.startswith("nope"):
        assert version == "0"
    # Still serving, the right answer.
    image = sample_digits(1)
    reply = Client(served["url"]).predict("stacked_ae", image, "reconstruct")
    loaded = tf.saved_model.load(str(served["root"] / "stacked_ae"))
    assert np.max(np.abs(reply.outputs - loaded.signatures["reconstruct"](images=tf.constant(image))[
        "reconstructions"].numpy())) <= 1e-5


def test_wrong_method_and_route(served):
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{served['url']}/v1/models/stacked_ae:predict", timeout=30)  # GET
    assert error.value.code == 405 and "use POST" in json.loads(error.value.read())["error"]
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{served['url']}/v2/anything", timeout=30)
    assert error.value.code == 404


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served):
    """8 clients at once (stacked by @serve.batch): every request answered, each with the reconstruction of its
    own image, not a neighbour's in the batch. Throughput is benchmarks/serving_load.py's business."""
    images = sample_digits(16)
    expected = tf.saved_model.load(str(served["root"] / "stacked_ae")).signatures["reconstruct"](
        images=tf.constant(images))["reconstructions"].numpy()
    body = [json.dumps({"signature_name": "reconstruct", "instances": images[i:i + 1].tolist()}).encode()
            for i in range(16)]
    url = f"{served['url']}/v1/models/stacked_ae:predict"

    def one(i):
        status, _, reply = _post(url, None, body[i % 16])
        return status == 200 and np.allclose(reply["predictions"], expected[i % 16:i % 16 + 1], atol=1e-5)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(200)))
    assert sum(answers) == 200


def test_moving_champion_during_a_stream_drops_no_request_and_switches_version(served):
    import mlflow
    client = Client(served["url"])
    image = sample_digits(1)
    expected = {v: tf.saved_model.load(d).signatures["reconstruct"](images=tf.constant(image))[
        "reconstructions"].numpy() for v, d in served["registered"].items()}
    assert np.max(np.abs(expected["1"] - expected["2"])) > 1e-3  # the two versions answer differently
    assert client.metadata(REGISTERED)["version"] == "1"
    replies, failures, stop = [], [], threading.Event()

    def stream():
        while not stop.is_set():
            try:
                replies.append(client.predict(REGISTERED, image, "reconstruct"))
            except (ServingError, OSError) as error:
                failures.append(error)

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    mlflow.MlflowClient(served["config"].uri).set_registered_model_alias(REGISTERED, "champion", "2")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(r.version == "2" for r in replies[-5:]):
        time.sleep(0.2)
    time.sleep(1.0)  # and some more requests on version 2
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures
    versions = [r.version for r in replies]
    assert versions[0] == "1" and versions[-1] == "2", versions
    assert set(versions) == {"1", "2"}
    for reply in replies:  # each answer is what the version in its header computes
        assert np.max(np.abs(reply.outputs - expected[reply.version])) <= 1e-5
    assert client.metadata(REGISTERED)["version"] == "2"


def test_cli_predict_against_the_server(served, tmp_path, capsys):
    np.save(tmp_path / "digits.npy", sample_digits(4))
    assert cli.main(["predict", "--url", served["url"], "--model", "stacked_ae", "--input",
                     str(tmp_path / "digits.npy"), "--signature", "encode", "--output",
                     str(tmp_path / "codings.npy")]) == 0
    assert np.load(tmp_path / "codings.npy").shape[0] == 4
    assert cli.main(["predict", "--url", served["url"], "--model", "ddpm", "--generate", "4", "--steps", "2",
                     "--output", str(tmp_path / "samples.png")]) == 0
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert "version 0" in capsys.readouterr().out
    # The server's refusal, as the CLI prints it.
    assert cli.main(["predict", "--url", served["url"], "--model", "ddpm", "--generate", "99"]) == cli.EXIT_BAD_INPUT
    assert "n=99" in capsys.readouterr().err


def test_cli_serve_refuses_bad_references_before_starting(tmp_path, capsys):
    assert cli.main(["serve"]) == cli.EXIT_BAD_INPUT
    assert "--model NAME" in capsys.readouterr().err
    assert cli.main(["serve", "--saved-model", str(tmp_path / "missing")]) == cli.EXIT_BAD_INPUT
    assert "neither a SavedModel" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "mnist-vae@", "--run-dir", str(tmp_path)]) == cli.EXIT_BAD_INPUT
    assert cli.main(["serve", "--model", "mnist-vae", "--run-dir", str(tmp_path)]) == cli.EXIT_BAD_INPUT
    assert "no MLflow registry" in capsys.readouterr().err
    assert cli.main(["serve", "--saved-model", str(tmp_path), "--detach"]) == cli.EXIT_BAD_INPUT
    assert "--detach leaves the server on a Ray cluster" in capsys.readouterr().err


def test_cli_serve_names_a_missing_registered_model(served, capsys):
    uri = served["config"].uri
    assert cli.main(["serve", "--model", "mnist-vae", "--mlflow-uri", uri]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no alias @champion of 'mnist-vae'" in err and REGISTERED in err
    assert cli.main(["serve", "--model", f"{REGISTERED}/9", "--mlflow-uri", uri]) == cli.EXIT_BAD_INPUT
    assert "no version 9" in capsys.readouterr().err


def test_png_grid_tiles_images():
    from PIL import Image
    from serving.images import png_grid
    images = np.zeros((5, 4, 4, 1), np.float32)
    images[2] = 1.0
    grid = np.asarray(Image.open(io.BytesIO(png_grid(images))))
    assert grid.shape == (2 + 2 * 6, 2 + 3 * 6)  # 3 columns, 2 rows
    assert grid[2:6, 14:18].min() == 255 and grid[2:6, 2:6].max() == 0
    with pytest.raises(ValueError, match="expected images"):
        png_grid(np.zeros((4, 4)))


def test_latentforge_serve_follows_a_pusher_folder_and_stops_on_ctrl_c(served, tmp_path):
    """The command as a user runs it, in its own process (its own local Ray): a base folder of numbered versions
    as the Pusher writes it; a newer version pushed while it serves is picked up."""
    import shutil
    import signal
    import subprocess
    import sys
    base = tmp_path / "serving" / "stacked_ae"
    shutil.copytree(served["root"] / "registered-v1", base / "7")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--saved-model", str(base),
                                "--port", str(port), "--poll-interval", "0.5", "--max-batch-size", "4"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []

    def read_output():
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        client, deadline = Client(f"http://127.0.0.1:{port}", timeout=30), time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if client.metadata("stacked_ae")["version"] == "7":
                    break
            except (ServingError, OSError):
                time.sleep(1)
        assert client.metadata("stacked_ae")["version"] == "7"
        image = sample_digits(1)
        assert client.predict("stacked_ae", image).version == "7"
        shutil.copytree(served["root"] / "registered-v2", base / "9")  # the Pusher pushes a newer model
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.predict("stacked_ae", image).version != "9":
            time.sleep(0.5)
        reply = client.predict("stacked_ae", image, "reconstruct")
        expected = tf.saved_model.load(str(base / "9")).signatures["reconstruct"](images=tf.constant(image))
        assert reply.version == "9"
        assert np.max(np.abs(reply.outputs - expected["reconstructions"].numpy())) <= 1e-5
        # The proxy answers before `serve.run` returns on a loaded machine; a Ctrl-C before the command says it
        # serves interrupts the start (exit 130), so press it when the user would: after "Ctrl-C stops the server".
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Ctrl-C stops the server" in line for line in lines):
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
        reader.join(timeout=10)
        output = "".join(lines)
        assert process.returncode == 0, output[-3000:]
        assert f"serving stacked_ae at http://127.0.0.1:{port}" in output and "stopping the server" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serve_run_builder_checks_its_arguments(served):
    from ray import serve
    from serving import server
    app = server.build_app({"saved_model": f"ae={served['root'] / 'stacked_ae'}", "replicas": "2",
                            "max_batch_size": "8"})
    assert isinstance(app, serve.Application)
    with pytest.raises(ValueError, match="unknown argument"):
        server.build_app({"saved_model": str(served["root"] / "stacked_ae"), "replica": "2"})
    with pytest.raises(ValueError, match="give saved_model"):
        server.build_app({})
    with pytest.raises(ValueError, match="need mlflow_uri"):
        server.build_app({"model": "mnist-vae@champion"})
    with pytest.raises(FileNotFoundError, match="neither a SavedModel"):
        server.build_app({"saved_model": str(served["root"])})
