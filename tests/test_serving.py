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
from pipelines import serve_commands as commands
from serving.client import Client, ServingError
from serving.model import Limits
from trainers import autoencoders, export, registry
from tests.conftest import SAMPLE_DIR, free_port, sample_digits, skip_or_fail_in_ci
from tests.test_export import SHAPE, TINY, build, unit_or_symmetric

pytestmark = pytest.mark.slow  # a local Ray for the module

MODELS = ("stacked_ae", "conv_vae", "dcgan", "ddpm")  # served under these names from SavedModel directories
# Also served, for the explorer's controls (class, guidance, truncation, style mixing): untrained, tiny.
EXPLORED = {"ddpm_cond": {"timesteps": 20, "sample_steps": 4, "base_channels": 8, "channel_multipliers": (1, 2),
                          "num_classes": 3, "precision": "float32", "guidance": 2.0},
            "stylegan": TINY["stylegan"]}
REGISTERED = "mnist-autoencoder"  # served from the registry, @champion
POLL_S = 0.5
TRAIN_END, CALIBRATION_END = 600, 1000  # the served stacked_ae: trained on digits [0, 600), calibrated on the rest



def _export(name: str, directory: str, shift: float = 0.0, train: bool = False):
    entry, model = build(name)
    for variable in model.trainable_variables:  # another "version": other weights
        variable.assign_add(tf.fill(variable.shape, shift))
    extra = {}
    if train:  # an autoencoder that knows digits, and its anomaly threshold at 1 % of other digits
        digits = sample_digits(CALIBRATION_END)
        model.fit(digits[:TRAIN_END], digits[:TRAIN_END], epochs=2, batch_size=32, verbose=0)
        calibration = tf.data.Dataset.from_tensor_slices(digits[TRAIN_END:]).batch(100)
        extra["anomaly"] = autoencoders.calibrate_anomaly_threshold(model, calibration, 0.01)
    export.export_model(entry.family, model, SHAPE, directory, entry.pixel_range, extra_metadata=extra)
    return entry


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from serving import server
    root = tmp_path_factory.mktemp("serving")
    entries, sources = {}, []
    for name in MODELS:
        entries[name] = _export(name, str(root / name), train=name == "stacked_ae")
        sources.append(server.ModelSource(name=name, saved_model_dir=str(root / name)))
    for name, config in EXPLORED.items():
        entry = registry.get_model(name)
        model = entry.build(registry.make_config(name, config), SHAPE)
        for variable in model.trainable_variables:  # a DDPM's last layer starts at zero: let inputs reach outputs
            variable.assign_add(tf.random.stateless_normal(variable.shape, [1, 2], stddev=0.05))
        for average, network in model.weight_averages():  # what samples: the (weight-averaged) network's copy
            average.reset(network)
        export.export_model(entry.family, model, SHAPE, str(root / name), entry.pixel_range)
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
                                   max_batch_size=8, poll_interval_s=POLL_S,
                                   class_examples=commands.read_class_examples(f"idx:{SAMPLE_DIR}"))
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
    assert {m["name"] for m in client.models()} == {*MODELS, *EXPLORED, REGISTERED}
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
    ("detect on a GAN", "dcgan:detect", {"instances": []}, 400, ["dcgan has no anomaly threshold", "autoencoder"]),
    ("detect naming a signature", "stacked_ae:detect", {"signature_name": "encode", "instances": []}, 400,
     ["always runs anomaly_score"]),
    ("detect outside the pixel range", "stacked_ae:detect", {"instances": np.full((1, 28, 28, 1), 2.0).tolist()},
     400, ["images", "[0, 1]"]),
    ("upload that is not an image", "stacked_ae:detect", {"png_base64": ["aGVsbG8gd29ybGQ="]}, 400,
     ["png_base64[0]", "not an image"]),
    ("upload that is not base64", "stacked_ae:predict", {"signature_name": "reconstruct", "png_base64": ["@@@"]}, 400,
     ["not base64"]),
    ("upload of the wrong size", "stacked_ae:detect", {"png_base64": ["WRONG_SIZE"]}, 400,
     ["32x20 pixels", "takes 28x28"]),
    ("upload over the file limit", "stacked_ae:detect", {"png_base64": ["A" * (3 * 1024 ** 2 // 2)]}, 413,
     ["over 1 MiB"]),
    ("interpolate a GAN between images", "dcgan:interpolate", {"images": [[0]]}, 400, ["does not encode"]),
    ("interpolate an autoencoder between seeds", "stacked_ae:interpolate", {"seeds": [0, 1]}, 400,
     ["no latent space"]),
    ("too many frames", "dcgan:interpolate", {"seeds": [0, 1], "frames": 500}, 400, ["frames=500"]),
    ("arithmetic on a GAN", "dcgan:arithmetic", {"a": {}, "b": {}, "c": {}}, 400, ["autoencoder or VAE"]),
    ("arithmetic with a bad operand", "stacked_ae:arithmetic", {"a": {"colour": 1}, "b": {}, "c": {}}, 400,
     ["a: expected one of"]),
    ("unknown model", "nope:predict", {"instances": []}, 404, ["no model 'nope'", "stacked_ae"]),
    ("unknown verb", "stacked_ae:explain", {}, 404, [":explain"]),
]


@pytest.mark.parametrize("what,path,body,status,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_4xx_naming_the_problem_and_the_server_keeps_serving(served, what, path, body, status,
                                                                               words):
    raw = body if isinstance(body, bytes) else None
    if isinstance(body, dict) and body.get("png_base64") == ["WRONG_SIZE"]:
        body = {"png_base64": [_png_base64(sample_digits(1)[0], size=(32, 20))]}
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


def _unseen_digits(n: int) -> np.ndarray:
    return sample_digits(CALIBRATION_END + n)[CALIBRATION_END:]  # neither trained on nor calibrated on


def test_detect_applies_the_models_calibrated_threshold_to_its_anomaly_scores(served):
    noise = np.random.default_rng(0).random((10, 28, 28, 1), np.float32)
    images = np.concatenate([_unseen_digits(40), noise])
    loaded = tf.saved_model.load(str(served["root"] / "stacked_ae"))
    threshold = json.loads(loaded.metadata.numpy())["anomaly"]["threshold"]
    expected = loaded.signatures["anomaly_score"](images=tf.constant(images))["scores"].numpy()
    reply = Client(served["url"]).detect("stacked_ae", images)
    assert reply["threshold"] == threshold and reply["version"] == "0"
    np.testing.assert_allclose(reply["scores"], expected, rtol=1e-5)
    np.testing.assert_array_equal(reply["anomaly"], expected > threshold)
    # Calibrated for 1 % of digits: unseen digits are (nearly all) normal, noise is anomalous.
    assert reply["anomaly"][:40].mean() <= 0.1 and reply["anomaly"][40:].all()
    status, _, rows = _post(f"{served['url']}/v1/models/stacked_ae:detect", {"instances": images[38:42].tolist()})
    assert status == 200 and rows["anomaly"] == reply["anomaly"][38:42].tolist()
    # The same images as uploaded PNG files.
    status, _, uploaded = _post(f"{served['url']}/v1/models/stacked_ae:detect",
                                {"png_base64": [_png_base64(image) for image in images[38:42]]})
    assert status == 200 and uploaded["anomaly"] == reply["anomaly"][38:42].tolist()
    np.testing.assert_allclose(uploaded["scores"], reply["scores"][38:42], atol=1e-4)  # 8-bit pixels
    assert "anomaly" in Client(served["url"]).metadata("stacked_ae")["metadata"]


def _png_base64(image: np.ndarray, size=None) -> str:
    """An image in [0, 1] as a base64 PNG file, as the explorer page uploads it."""
    import base64
    from PIL import Image
    picture = Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8))
    buffer = io.BytesIO()
    (picture.resize(size) if size else picture).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_interpolation_between_seeds_and_between_images_and_latent_arithmetic(served):
    url = served["url"]
    # A GAN: the strip starts and ends at the images :generate gives for the two seeds.
    status, _, strip = _post(f"{url}/v1/models/dcgan:interpolate", {"seeds": [3, 5], "frames": 6, "format": "json"})
    assert status == 200 and strip["n"] == 6
    frames = np.array(strip["images"])
    client = Client(url)
    np.testing.assert_allclose(frames[0], client.generate("dcgan", n=1, seed=3).outputs[0], atol=1e-5)
    np.testing.assert_allclose(frames[-1], client.generate("dcgan", n=1, seed=5).outputs[0], atol=1e-5)
    steps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    assert np.all(steps > 0) and steps.max() < np.abs(frames[-1] - frames[0]).mean()  # a path, not a jump
    status, _, png = _post(f"{url}/v1/models/ddpm:interpolate", {"seeds": [0, 1], "frames": 4, "steps": 3})
    assert status == 200 and png["format"] == "png" and png["n"] == 4
    # An autoencoder: between two uploaded digits, the ends are their reconstructions.
    digits = _unseen_digits(2)
    status, _, strip = _post(f"{url}/v1/models/stacked_ae:interpolate", {
        "png_base64": [_png_base64(d) for d in digits], "frames": 5, "format": "json"})
    assert status == 200
    ends = client.predict("stacked_ae", np.round(digits * 255) / 255, "reconstruct").outputs
    np.testing.assert_allclose(np.array(strip["images"])[[0, -1]], ends, atol=1e-4)
    # Latent arithmetic: A, B, C decoded, then decode(a - b + c); with images, what the signatures compute.
    status, _, result = _post(f"{url}/v1/models/stacked_ae:arithmetic", {
        "a": {"image": digits[0].tolist()}, "b": {"image": digits[1].tolist()}, "c": {"image": digits[1].tolist()},
        "format": "json"})
    assert status == 200 and result["n"] == 4
    decoded = np.array(result["images"])
    np.testing.assert_allclose(decoded[3], decoded[0], atol=1e-5)  # a - b + b = a
    # By class: each class's mean coding over the sample's test digits (the server's --class-examples).
    status, _, by_class = _post(f"{url}/v1/models/stacked_ae:arithmetic", {
        "a": {"class": 7}, "b": {"class": "1"}, "c": {"class": 4}, "format": "json"})
    assert status == 200
    test_images, test_labels = _sample_test_split()
    loaded = tf.saved_model.load(str(served["root"] / "stacked_ae"))
    codings = loaded.signatures["encode"](images=tf.constant(test_images))["codings"].numpy()
    means = {k: codings[test_labels == k][:200].mean(axis=0) for k in (1, 4, 7)}
    expected = loaded.signatures["decode"](codings=tf.constant(np.stack(
        [means[7], means[1], means[4], means[7] - means[1] + means[4]])))["images"].numpy()
    np.testing.assert_allclose(np.array(by_class["images"]), expected, atol=1e-4)
    np.testing.assert_allclose(client.arithmetic("stacked_ae", 7, "1", 4).outputs, expected, atol=1e-4)
    # From class 7's mean coding to class 1's: the ends are those codings decoded.
    strip = client.interpolate("stacked_ae", classes=[7, 1], frames=4).outputs
    assert strip.shape == (4, 28, 28, 1)
    np.testing.assert_allclose(strip[[0, -1]], expected[:2], atol=1e-4)
    status, _, refused = _post(f"{url}/v1/models/stacked_ae:arithmetic", {
        "a": {"class": "seven"}, "b": {"class": 1}, "c": {"class": 12}})
    assert status == 400 and "unknown class 'seven'" in refused["error"]


def test_test_images_are_listed_and_serve_as_interpolation_ends_and_operands(served):
    url, client = served["url"], Client(served["url"])
    test_images, test_labels = _sample_test_split()
    listed = client.examples("stacked_ae", per_class=1)
    assert [e["label"] for e in listed] == list(range(10)) and [e["class"] for e in listed] == [str(k) for k in
                                                                                                range(10)]
    for entry in listed:  # the first test digit of each class, as the server's --class-examples read them
        assert entry["index"] == int(np.flatnonzero(test_labels == entry["label"])[0])
        np.testing.assert_allclose(entry["image"], test_images[entry["index"]], atol=1e-6)
    status, pngs = _get(f"{url}/v1/models/stacked_ae/examples")
    assert status == 200 and len(pngs["examples"]) == 20 and pngs["total"] == len(test_images)
    # Between two test images: the ends are their reconstructions.
    i, j = listed[3]["index"], listed[8]["index"]
    strip = client.interpolate("stacked_ae", examples=[i, j], frames=5).outputs
    ends = client.predict("stacked_ae", test_images[[i, j]], "reconstruct").outputs
    np.testing.assert_allclose(strip[[0, -1]], ends, atol=1e-4)
    # Mixed ends: a class's mean coding to a test image.
    status, _, mixed = _post(f"{url}/v1/models/stacked_ae:interpolate", {
        "ends": [{"class": 3}, {"example": j}], "frames": 3, "format": "json"})
    by_class = client.interpolate("stacked_ae", classes=[3, 8], frames=3).outputs
    assert status == 200
    np.testing.assert_allclose(np.array(mixed["images"])[0], by_class[0], atol=1e-5)
    np.testing.assert_allclose(np.array(mixed["images"])[-1], ends[1], atol=1e-4)
    # Test images as arithmetic operands: a - b + b = a.
    result = client.arithmetic("stacked_ae", {"example": i}, {"example": j}, {"example": j}).outputs
    np.testing.assert_allclose(result[3], result[0], atol=1e-5)
    np.testing.assert_allclose(result[0], ends[0], atol=1e-4)
    # What is refused, and why.
    for query, words in (("per_class=0", "per_class='0'"), ("per_class=x", "between 1 and 20"),
                         ("format=bmp", "format='bmp'"), ("colour=1", "unknown query parameter")):
        status, refused = _get(f"{url}/v1/models/stacked_ae/examples?{query}")
        assert status == 400 and words in refused["error"], (query, refused)
    for body, words in (({"examples": [0, 10 ** 6]}, "test image 1000000 is not one of 0.."),
                        ({"examples": [0, True]}, "test image True"),
                        ({"seeds": [0, 1], "examples": [0, 1]}, "one kind of ends"),
                        ({"ends": [{"example": 0}]}, "expected two ends"),
                        ({"ends": [{"example": 0}, {"colour": 1}]}, "ends[1]: expected one of")):
        status, _, refused = _post(f"{url}/v1/models/stacked_ae:interpolate", body)
        assert status == 400 and words in refused["error"], (body, refused)


def test_the_projection_is_the_test_codings_first_two_principal_components(served):
    client = Client(served["url"])
    test_images, test_labels = _sample_test_split()
    projected = client.projection("stacked_ae")
    assert projected["method"] == "pca" and projected["x"].shape == projected["y"].shape == (len(test_images),)
    np.testing.assert_array_equal(projected["labels"], test_labels)
    loaded = tf.saved_model.load(str(served["root"] / "stacked_ae"))
    codings = loaded.signatures["encode"](images=tf.constant(test_images))["codings"].numpy().astype(np.float64)
    centred = codings - codings.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    for axis, component in zip(("x", "y"), components[:2]):  # the same axes (a component's sign is arbitrary)
        assert abs(np.corrcoef(projected[axis], centred @ component)[0, 1]) > 0.9999
    np.testing.assert_allclose(projected["explained_variance"], singular[:2] ** 2 / np.sum(singular ** 2),
                               rtol=1e-3)
    status, refused = _get(f"{served['url']}/v1/models/dcgan/projection")
    assert status == 400 and "no codings to project" in refused["error"]
    # The test images an operand names, by index (the page's previews).
    status, named = _get(f"{served['url']}/v1/models/stacked_ae/examples?indices=5,3&format=json")
    assert status == 200 and [e["index"] for e in named["examples"]] == [5, 3]
    np.testing.assert_allclose(named["examples"][0]["image"], test_images[5], atol=1e-6)
    for query, words in (("indices=99999", "test image 99999"), ("indices=1,x", "comma-separated"),
                         ("indices=1&per_class=2", "not both")):
        status, refused = _get(f"{served['url']}/v1/models/stacked_ae/examples?{query}")
        assert status == 400 and words in refused["error"], (query, refused)


def test_test_images_need_class_examples_of_the_models_size(served):
    from serving import explorer
    from serving.model import RequestError, ServedModel
    model = ServedModel(str(served["root"] / "stacked_ae"), "stacked_ae", "0")
    none = explorer.examples(model, None, {})
    assert none["examples"] == [] and "--class-examples" in none["note"]
    assert explorer.projection(model, None)["x"] == []
    with pytest.raises(RequestError, match="examples\\[0\\]: test-image operands need the server started with "
                                           "--class-examples"):
        explorer.interpolate(model, {"examples": [0, 1]}, None)
    wrong = explorer.ClassExamples(np.zeros((4, 32, 32, 1), np.float32), np.arange(4) % 2, ["a", "b"])
    with pytest.raises(RequestError, match="are 32x32x1 images; stacked_ae takes 28x28x1"):
        explorer.arithmetic(model, {"a": {"example": 0}, "b": {"class": "a"}, "c": {"class": "b"}}, wrong)
    with pytest.raises(RequestError, match="takes 28x28x1"):
        explorer.examples(model, wrong, {})


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _sample_test_split():
    from components.image_example_gen import sources
    info = sources.probe(sources.parse_source(f"idx:{SAMPLE_DIR}"))
    records = list(sources.read_split(info, "test"))
    return (np.stack([r[0] for r in records]).astype(np.float32) / 255.0,
            np.array([r[1] for r in records]))


def test_class_operands_need_class_examples_and_the_cli_checks_the_source(served, tmp_path, capsys):
    from serving import explorer
    from serving.model import RequestError, ServedModel
    model = ServedModel(str(served["root"] / "stacked_ae"), "stacked_ae", "0")
    with pytest.raises(RequestError, match="--class-examples SOURCE"):
        explorer.arithmetic(model, {"a": {"class": 7}, "b": {"class": 1}, "c": {"class": 4}}, None)
    args = ["serve", "--saved-model", str(served["root"] / "stacked_ae"), "--port", "1"]
    assert cli.main([*args, "--class-examples", f"idx:{tmp_path}"]) == cli.EXIT_BAD_INPUT
    assert "--class-examples idx:" in capsys.readouterr().err


def test_the_explorer_files_come_from_the_asset_folder_only(served):
    import http.client
    from urllib.parse import urlparse
    address = urlparse(served["url"])

    def get(path):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        connection.request("GET", path)  # sent as written: no client-side normalisation of ".."
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()

    status, kind, page = get("/ui/assets/explorer.js")
    assert status == 200 and kind.startswith("text/javascript") and b"X-Model-Version" in page
    for path in ("/", "/ui/stacked_ae", "/ui/dcgan"):
        status, kind, page = get(path)
        assert status == 200 and kind.startswith("text/html"), path
    for path in ("/ui/assets/../server.py", "/ui/assets/%2e%2e/server.py", "/ui/assets/%2E%2E%2Fserver.py",
                 "/ui/assets/%252e%252e/server.py", "/ui/assets/..%5cserver.py", "/ui/assets/../../README.md",
                 "/ui/assets//etc/passwd", "/ui/assets/nope.js", "/ui/nope", "/ui/assets/.hidden.js"):
        status, _, body = get(path)
        assert status == 404, (path, status)
        assert b"import" not in body and b"root:" not in body


def test_asset_paths_are_resolved_inside_the_folder_symlinks_included(tmp_path, monkeypatch):
    from serving import explorer
    assets, outside = tmp_path / "assets", tmp_path / "secret.js"
    assets.mkdir()
    (assets / "page.js").write_text("ok")
    outside.write_text("secret")
    (assets / "link.js").symlink_to(outside)
    (assets / "sub").symlink_to(tmp_path)
    monkeypatch.setattr(explorer, "ASSETS_DIR", str(assets))
    assert explorer.asset_file("page.js") == str(assets / "page.js")
    for path in ("link.js", "sub/secret.js", "../secret.js", "%2e%2e/secret.js", "page.js/..", "/page.js",
                 "", "page.py"):
        assert explorer.asset_file(path) is None, path


def test_slerp_keeps_gaussian_norms_and_hits_both_ends():
    from serving import explorer
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(64), rng.standard_normal(64)
    path = explorer.slerp(a, b, 9)
    np.testing.assert_allclose(path[0], a, atol=1e-5)
    np.testing.assert_allclose(path[-1], b, atol=1e-5)
    norms = np.linalg.norm(path, axis=1)
    np.testing.assert_allclose(norms, np.linspace(np.linalg.norm(a), np.linalg.norm(b), 9), rtol=1e-5)
    assert np.linalg.norm((a + b) / 2) < norms[4] * 0.9  # the straight line's midpoint is a smaller, unlikely code


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
    # Started as a terminal starts a command: SIGINT at its default. A pytest worker may by now have SIGINT
    # ignored (some library set it), and an ignored SIGINT stays ignored across exec: Python then never raises
    # KeyboardInterrupt, whatever the command does.
    command = ["serve", "--saved-model", str(base), "--port", str(port), "--poll-interval", "0.5",
               "--max-batch-size", "4"]
    process = subprocess.Popen(
        [sys.executable, "-c", "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         f"sys.argv = ['latentforge', *{command!r}]; runpy.run_module('pipelines.cli', run_name='__main__')"],
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
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            with open(f"/proc/{process.pid}/status") as f:
                signals = "".join(line for line in f if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
            with open("/proc/self/status") as f:
                ours = "".join(line for line in f if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
            pytest.fail(f"latentforge serve did not leave within 120 s of Ctrl-C; its signals:\n{signals}this "
                        f"process's:\n{ours}its output:\n" + "".join(lines)[-4000:])
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


# ------------------------------------------------------------------------------- the explorer in a real browser

@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by its chromedriver (`make test` installs both when it runs as root)."""
    import shutil
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        skip_or_fail_in_ci("chromium and chromedriver are not installed: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,1600"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def _console_errors(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _settled(driver) -> bool:
    """No request of the page in flight (a late answer would otherwise overwrite what the test looks at next)."""
    return driver.execute_script("return document.body.dataset.pending || '0'") == "0"


def _image_size(driver, element_id):
    return driver.execute_script(
        "const i = document.getElementById(arguments[0]); return [i.naturalWidth, i.naturalHeight, i.src.length];",
        element_id)


def test_the_explorer_draws_samples_that_follow_the_seed_and_an_interpolation_strip(served, browser):
    from selenium.webdriver.common.by import By
    browser.get(served["url"] + "/")
    links = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#models a"))
    assert {link.text for link in links} == {*MODELS, *EXPLORED, REGISTERED}
    browser.get(served["url"] + "/ui/dcgan")
    # The page opens on a grid of 16 samples: 4 x 4 digits of 28 px with 2 px gaps.
    _wait(browser, lambda d: _image_size(d, "sample-grid")[0] > 0)
    assert _image_size(browser, "sample-grid")[:2] == [4 * 30 + 2, 4 * 30 + 2]
    assert browser.find_element(By.ID, "family").text == "gan" and browser.find_element(By.ID, "version").text == "0"
    errors = _console_errors(browser)
    assert not errors, errors
    first = browser.find_element(By.ID, "sample-grid").get_attribute("src")
    seed = browser.find_element(By.ID, "seed")
    seed.clear()
    seed.send_keys("7")
    browser.find_element(By.ID, "draw").click()
    _wait(browser, lambda d: d.find_element(By.ID, "sample-grid").get_attribute("data-seed") == "7"
          and d.find_element(By.ID, "sample-grid").get_attribute("src") != first)
    # "Use via API": the request the page just sent, as a curl command a program can repeat.
    api_call = browser.find_element(By.ID, "api-call").get_attribute("textContent")
    assert f"{served['url']}/v1/models/dcgan:generate" in api_call and '"seed":7' in api_call, api_call
    status, _, answer = _post(f"{served['url']}/v1/models/dcgan:generate", json.loads(api_call.split("-d '")[1][:-1]))
    assert status == 200 and answer["n"] == 16  # the same request, sent by a program
    browser.find_element(By.ID, "interpolate").click()
    _wait(browser, lambda d: _image_size(d, "interpolation-strip")[0] > 0)
    assert _image_size(browser, "interpolation-strip")[:2] == [8 * 30 + 2, 30 + 2]  # 8 frames in a row
    assert not browser.find_element(By.ID, "errors").is_displayed()
    errors = _console_errors(browser)
    assert not errors, errors


def test_the_explorer_offers_class_guidance_truncation_and_style_mixing_where_the_model_has_them(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    shown = lambda element_id: browser.find_element(By.ID, element_id).is_displayed()  # noqa: E731
    grid = lambda: browser.find_element(By.ID, "sample-grid").get_attribute("src")  # noqa: E731
    # A class-conditional DDPM: DDIM steps, a class (or every class in turn) and the guidance weight.
    browser.get(served["url"] + "/ui/ddpm_cond")
    _wait(browser, lambda d: _settled(d) and _image_size(d, "sample-grid")[0] > 0)
    assert shown("steps-control") and shown("label-control") and shown("guidance-control")
    assert not shown("truncation-control") and not shown("mixing") and not shown("arithmetic")
    label = Select(browser.find_element(By.ID, "label"))
    assert [o.get_attribute("value") for o in label.options] == ["all", "0", "1", "2"]
    assert browser.find_element(By.ID, "guidance").get_attribute("value") == "2"
    first = grid()
    label.select_by_value("1")
    browser.find_element(By.ID, "draw").click()
    _wait(browser, lambda d: _settled(d) and grid() != first)
    errors = _console_errors(browser)
    assert not errors, errors
    # The grid is what the server draws for class 1 with the page's settings (and not what it draws for class 0):
    # the control sent the class.
    value = lambda element_id: browser.find_element(By.ID, element_id).get_attribute("value")  # noqa: E731
    body = {"n": int(value("count")), "seed": int(value("seed")), "steps": int(value("steps")),
            "guidance": float(value("guidance")), "format": "png"}
    drawn = {k: "data:image/png;base64," + _post(served["url"] + "/v1/models/ddpm_cond:generate",
                                                 {**body, "labels": [k]})[2]["png_base64"] for k in (0, 1)}
    assert grid() == drawn[1] != drawn[0]
    # A StyleGAN: truncation psi (its exported default) and a style-mixing strip, one image per crossover.
    browser.get(served["url"] + "/ui/stylegan")
    _wait(browser, lambda d: _settled(d) and _image_size(d, "sample-grid")[0] > 0)
    assert shown("truncation-control") and shown("mixing") and not shown("label-control")
    assert browser.find_element(By.ID, "truncation").get_attribute("value") == "0.7"
    first = grid()
    truncation = browser.find_element(By.ID, "truncation")
    truncation.clear()
    truncation.send_keys("0")  # every sample is the average style: one image, 16 times
    browser.find_element(By.ID, "draw").click()
    _wait(browser, lambda d: _settled(d) and grid() != first)
    average = _post(served["url"] + "/v1/models/stylegan:generate",
                    {"n": 16, "seed": int(browser.find_element(By.ID, "seed").get_attribute("value")),
                     "truncation": 0.0, "format": "png"})[2]["png_base64"]
    assert grid() == "data:image/png;base64," + average  # the control sent psi = 0
    browser.find_element(By.ID, "mix").click()
    _wait(browser, lambda d: _settled(d) and d.execute_script("return document.getElementById('mixing-strip').width") > 0)
    layers = Client(served["url"]).metadata("stylegan")["metadata"]["style_layers"]
    assert browser.execute_script("return document.getElementById('mixing-strip').width") == (layers + 1) * 30 + 2
    assert not shown("errors")
    errors = _console_errors(browser)
    assert not errors, errors


def test_the_explorer_interpolates_a_vae_between_two_picked_test_images_and_does_arithmetic(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    browser.get(served["url"] + "/ui/conv_vae")
    _wait(browser, lambda d: _settled(d) and len(d.find_elements(By.CSS_SELECTOR, "#examples figure")) == 20)
    errors = _console_errors(browser)
    assert not errors, errors
    # A VAE interpolates between seeds (points of its prior) or between two images' codings: picking a test image
    # switches to images.
    assert browser.find_element(By.ID, "seed-ends").is_displayed()
    assert Select(browser.find_element(By.ID, "ends")).first_selected_option.get_attribute("value") == "seeds"
    figures = browser.find_elements(By.CSS_SELECTOR, "#examples figure")
    figures[2].click()  # fills "from", then "to" is next
    assert browser.find_element(By.ID, "image-ends").is_displayed()
    assert not browser.find_element(By.ID, "seed-ends").is_displayed()
    figures[17].click()
    value = lambda element_id: browser.find_element(By.ID, element_id).get_attribute("value")  # noqa: E731
    assert value("from-example") == figures[2].get_attribute("data-index")
    assert value("to-example") == figures[17].get_attribute("data-index")
    browser.find_element(By.ID, "interpolate").click()
    _wait(browser, lambda d: _settled(d) and _image_size(d, "interpolation-strip")[0] > 0)
    assert _image_size(browser, "interpolation-strip")[:2] == [8 * 30 + 2, 30 + 2]
    # The scatter plot of the test codings: pointing at a point names it, clicking puts it into the active operand.
    projected = Client(served["url"]).projection("conv_vae")
    assert browser.find_element(By.ID, "projection").get_attribute("data-points") == str(len(projected["x"]))
    rightmost = int(np.argmax(projected["x"]))
    x_min, x_span = projected["x"].min(), np.ptp(projected["x"])
    y_min, y_span = projected["y"].min(), np.ptp(projected["y"])
    px = 10 + (projected["x"][rightmost] - x_min) / x_span * 400  # the page's 420-px canvas, 10-px margins
    py = 410 - (projected["y"][rightmost] - y_min) / y_span * 400
    from selenium.webdriver.common.action_chains import ActionChains
    canvas = browser.find_element(By.ID, "projection")
    ActionChains(browser).move_to_element_with_offset(canvas, int(px) - 210, int(py) - 210).perform()
    hover = browser.find_element(By.ID, "projection-hover").text
    assert hover.startswith("test image #"), hover
    hovered = int(hover.split("#")[1].split(" ")[0])
    assert abs(projected["x"][hovered] - projected["x"][rightmost]) <= 4 * x_span / 400  # the one pointed at
    ActionChains(browser).click().perform()
    assert value("from-example") == str(hovered)  # "from" was active again after "to" was filled
    _wait(browser, lambda d: _settled(d) and d.find_element(By.ID, "from-preview").is_displayed())
    # Arithmetic with A a picked test image (its field chosen first), B and C classes: A, B, C and the result.
    browser.find_element(By.ID, "a-example").click()
    figures[14].click()
    assert value("a-example") == figures[14].get_attribute("data-index")
    browser.find_element(By.ID, "compute").click()
    _wait(browser, lambda d: _settled(d) and _image_size(d, "arithmetic-result")[0] > 0)
    assert _image_size(browser, "arithmetic-result")[:2] == [4 * 30 + 2, 30 + 2]
    assert not browser.find_element(By.ID, "errors").is_displayed()
    errors = _console_errors(browser)
    assert not errors, errors


def test_the_explorer_page_follows_a_champion_swap(served, browser):
    import mlflow
    from selenium.webdriver.common.by import By
    client, registry = Client(served["url"]), mlflow.MlflowClient(served["config"].uri)
    browser.get(f"{served['url']}/ui/{REGISTERED}")
    _wait(browser, lambda d: _settled(d) and d.find_element(By.ID, "version").text)
    before = browser.find_element(By.ID, "version").text
    other = "2" if before == "1" else "1"
    registry.set_registered_model_alias(REGISTERED, "champion", other)
    try:
        _wait(browser, lambda d: client.metadata(REGISTERED)["version"] == other)
        # The next answer comes from the new champion, and the page says so (no reload).
        browser.find_element(By.ID, "compute").click()
        _wait(browser, lambda d: _settled(d) and _image_size(d, "arithmetic-result")[0] > 0)
        assert browser.find_element(By.ID, "version").text == other
        assert not browser.find_element(By.ID, "errors").is_displayed()
    finally:
        registry.set_registered_model_alias(REGISTERED, "champion", before)
        _wait(browser, lambda d: client.metadata(REGISTERED)["version"] == before)


def test_the_explorer_calls_an_uploaded_anomaly_an_anomaly_and_a_digit_normal(served, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    # The unseen digit with the median anomaly score among 20 (a typical digit), and a square of noise.
    digits = _unseen_digits(20)
    scores = Client(served["url"]).detect("stacked_ae", digits)["scores"]
    digit = digits[np.argsort(scores)[len(scores) // 2]]
    Image.fromarray(np.round(digit[..., 0] * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    noise = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    Image.fromarray(noise).resize((40, 40)).save(tmp_path / "big.png")
    browser.get(served["url"] + "/ui/stacked_ae")
    _wait(browser, lambda d: d.find_element(By.ID, "anomaly").is_displayed())
    errors = _console_errors(browser)
    assert not errors, errors
    for name, verdict in (("noise.png", "anomaly"), ("digit.png", "normal")):
        browser.find_element(By.ID, "upload").send_keys(str(tmp_path / name))
        _wait(browser, lambda d: _settled(d) and d.find_element(By.ID, "verdict").text == verdict)
        assert "threshold" in browser.find_element(By.ID, "score").text
    # A drawing on the pad: a stroke reaches the model and comes back reconstructed.
    from selenium.webdriver.common.action_chains import ActionChains
    pad = browser.find_element(By.ID, "pad")
    ActionChains(browser).move_to_element_with_offset(pad, -20, -80).click_and_hold().move_by_offset(10, 80) \
        .move_by_offset(10, 80).release().perform()
    browser.find_element(By.ID, "check").click()
    _wait(browser, lambda d: _settled(d) and d.find_element(By.ID, "verdict").text in ("normal", "anomaly")
          and "threshold" in d.find_element(By.ID, "score").text)
    # What was checked is the stroke at the model's size, and the verdict and score shown are the server's for it.
    import base64
    import io
    drawn = browser.execute_script("return padImage()").split(",", 1)[1]
    stroke = np.asarray(Image.open(io.BytesIO(base64.b64decode(drawn))).convert("L"))
    assert stroke.shape == (28, 28) and 10 < np.count_nonzero(stroke > 64) < 28 * 28 // 2
    invert = browser.find_element(By.ID, "invert").is_selected()
    _, _, detection = _post(served["url"] + "/v1/models/stacked_ae:detect", {"png_base64": [drawn], "invert": invert})
    assert browser.find_element(By.ID, "verdict").text == ("anomaly" if detection["anomaly"][0] else "normal")
    import re
    shown_score = float(re.match(r"score (\S+) ", browser.find_element(By.ID, "score").text).group(1))
    assert shown_score == pytest.approx(detection["scores"][0], rel=1e-3)
    # A file of the wrong size: the server's message is shown on the page.
    browser.find_element(By.ID, "upload").send_keys(str(tmp_path / "big.png"))
    _wait(browser, lambda d: "takes 28x28" in d.find_element(By.ID, "errors").text)
    browser.save_screenshot(str(tmp_path / "explorer.png"))
