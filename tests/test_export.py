"""trainers.export: each family's SavedModel loads in a fresh Python process with plain TensorFlow (no project
import), every signature runs and matches the in-memory model within 1e-5, and bad inputs are refused inside
the graph."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from trainers import export
from tests.conftest import sample_digits
from trainers import classifier, registry

TINY = {
    "stacked_ae": {},
    "conv_vae": {"ema_decay": 0.99},  # the VAE's average is optional (the generators' is on by default)
    "dcgan": {},
    "stylegan": {"synthesis_filters": (16, 16, 8), "conv_filters": (8, 16), "mapping_layers": 2, "style_size": 16,
                 "coding_size": 16, "truncation": 0.7},
    # float32: this test asks for the model's own outputs to 1e-5; bfloat16 exports are test_precision's.
    "ddpm": {"timesteps": 20, "sample_steps": 4, "base_channels": 16, "channel_multipliers": (1, 2),
             "precision": "float32"},
}
SHAPE = (28, 28, 1)


def build(name):
    """(registry entry, an untrained model) of a TINY preset."""
    entry = registry.get_model(name)
    return entry, entry.build(registry.make_config(name, TINY[name]), SHAPE)

# Runs in a fresh interpreter: only TensorFlow and NumPy. For each model: call every signature listed in its
# cases file, compare with the expected outputs, call the SavedModel itself, and try each bad input.
FRESH_PROCESS_CHECK = r'''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
report = {}
for name, directory in json.loads(sys.argv[1]).items():
    loaded = tf.saved_model.load(directory)
    cases = np.load(os.path.join(directory, "..", name + "-cases.npz"), allow_pickle=True)
    result = {"signatures": sorted(loaded.signatures), "max_error": {}, "refused": {},
              "metadata": json.loads(loaded.metadata.numpy().decode())}
    for key in cases.files:
        if not key.startswith("in."):
            continue
        _, signature, argument = key.split(".")
        inputs = {k.split(".")[2]: tf.constant(cases[k]) for k in cases.files if k.startswith(f"in.{signature}.")}
        outputs = loaded.signatures[signature](**inputs)
        for output, value in outputs.items():
            expected = cases[f"out.{signature}.{output}"]
            result["max_error"][f"{signature}.{output}"] = float(np.max(np.abs(value.numpy() - expected)))
    result["max_error"]["__call__"] = float(np.max(np.abs(loaded(tf.constant(cases["call.in"])).numpy()
                                                          - cases["call.out"])))
    for key in cases.files:
        if key.startswith("bad."):
            _, signature, label = key.split(".")
            arguments = {k: tf.constant(v) for k, v in cases[key].item().items()}
            try:
                loaded.signatures[signature](**arguments)
                result["refused"][label] = None
            except tf.errors.InvalidArgumentError as error:
                result["refused"][label] = next((line for line in error.message.splitlines()
                                                 if "assertion failed" in line), error.message)[:300]
    report[name] = result
report["project_imported"] = sorted(m for m in ("trainers", "serving", "components", "pipelines") if m in sys.modules)
print(json.dumps(report))
'''


def unit_or_symmetric(entry, images):
    return images * 2.0 - 1.0 if entry.pixel_range == "symmetric" else images


def expected_cases(name, entry, model, images):
    """{npz key: array}: inputs and in-memory outputs per signature, the __call__ pair, and bad inputs."""
    cases = {}

    def case(signature, inputs, outputs):
        cases.update({f"in.{signature}.{k}": np.asarray(v) for k, v in inputs.items()})
        cases.update({f"out.{signature}.{k}": np.asarray(v) for k, v in outputs.items()})

    if entry.family.name in ("autoencoder", "vae"):
        reconstructions = model(images)
        case("reconstruct", {"images": images}, {"reconstructions": reconstructions})
        case("anomaly_score", {"images": images},
             {"scores": tf.reduce_mean(tf.square(reconstructions - images), axis=[1, 2, 3])})
        if entry.family.name == "vae":
            mean, log_var = model.encode(images)
            case("encode", {"images": images}, {"codings": mean, "log_var": log_var})
            case("decode", {"codings": mean}, {"images": model.decode(mean)})
            case("sample", {"n": np.int32(3), "seed": np.int32(7)}, {"images": model.sample(3, seed=7)})
        else:
            codings = model.encoder(images)
            case("encode", {"images": images}, {"codings": codings})
            case("decode", {"codings": codings}, {"images": model.decoder(codings)})
        cases["call.in"], cases["call.out"] = images, np.asarray(reconstructions)
        high = np.full((1, *SHAPE), 255.0, np.float32)  # raw bytes instead of the model's [0, 1]
        cases["bad.reconstruct.out_of_range"] = np.array({"images": high}, dtype=object)
        cases["bad.encode.nan"] = np.array({"images": np.full((1, *SHAPE), np.nan, np.float32)}, dtype=object)
    if entry.family.name == "gan":
        codings = tf.random.stateless_normal([3, model.coding_size], seed=[1, 2])
        case("generate", {"n": np.int32(3), "seed": np.int32(7)}, {"images": (model.generate(3, seed=7) + 1) / 2})
        generated = (model.sampling_generator(codings) + 1) / 2
        case("generate_from_codings", {"codings": codings}, {"images": generated})
        cases["call.in"], cases["call.out"] = np.asarray(codings), np.asarray(generated)
        cases["bad.generate.n_zero"] = np.array({"n": np.int32(0), "seed": np.int32(0)}, dtype=object)
        cases["bad.generate.n_too_many"] = np.array({"n": np.int32(export.MAX_GENERATED + 1), "seed": np.int32(0)},
                                                    dtype=object)
    if entry.family.name == "stylegan":
        case("generate", {"n": np.int32(3), "seed": np.int32(7), "truncation": np.float32(0.5)},
             {"images": (model.generate(3, seed=7, truncation=0.5) + 1) / 2})
        case("mix_styles", {"seed_a": np.int32(3), "seed_b": np.int32(4), "crossover": np.int32(2)},
             {"images": (model.mix_styles(3, 4, 2) + 1) / 2})
        codings = tf.random.stateless_normal([3, model.coding_size], seed=[1, 2])
        generated = (model.draw(codings, codings, model.style_layers, model.truncation, tf.constant([0, 1])) + 1) / 2
        case("generate_from_codings", {"codings": codings}, {"images": generated})
        cases["call.in"], cases["call.out"] = np.asarray(codings), np.asarray(generated)
        cases["bad.generate.truncation_above_one"] = np.array(
            {"n": np.int32(1), "seed": np.int32(0), "truncation": np.float32(1.5)}, dtype=object)
        cases["bad.mix_styles.crossover_beyond"] = np.array(
            {"seed_a": np.int32(0), "seed_b": np.int32(1), "crossover": np.int32(model.style_layers + 1)},
            dtype=object)
    if entry.family.name == "diffusion":
        case("generate", {"n": np.int32(2), "seed": np.int32(7), "steps": np.int32(3)},
             {"images": (model.generate(2, seed=7, steps=3) + 1) / 2})
        noise = tf.random.stateless_normal([2, *SHAPE], seed=[7, 0])
        # generate_from_noise is the deterministic map (eta 0) from x_T: generate(seed 7) at eta 0 (its noise is
        # drawn from [7, 0]); generate itself samples with the model's eta (1, seeded).
        case("generate_from_noise", {"noise": noise, "steps": np.int32(3)},
             {"images": (model.generate(2, seed=7, steps=3, eta=0.0) + 1) / 2})
        cases["call.in"] = np.asarray(noise)
        cases["call.out"] = np.asarray((model.generate(2, seed=7, steps=model.sample_steps, eta=0.0) + 1) / 2)
        cases["bad.generate.steps_beyond_T"] = np.array(
            {"n": np.int32(1), "seed": np.int32(0), "steps": np.int32(model.diffusion.timesteps + 1)}, dtype=object)
    if entry.family.name == "classifier":
        probabilities = model(images)
        case("classify", {"images": images},
             {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32)})
        cases["call.in"], cases["call.out"] = images, np.asarray(probabilities)
        cases["bad.classify.out_of_range"] = np.array({"images": np.full((1, *SHAPE), -1.0, np.float32)},
                                                      dtype=object)
    return cases


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every family exported under one directory, with its cases file beside it."""
    root = tmp_path_factory.mktemp("exported")
    digits = sample_digits(4)
    directories = {}
    models = {name: (registry.get_model(name), registry.make_config(name, TINY[name])) for name in TINY}
    built = {name: entry.build(config, SHAPE) for name, (entry, config) in models.items()}
    averaged = {"conv_vae": 2, "dcgan": 1, "stylegan": 1, "ddpm": 1}  # (average, network) pairs; autoencoders have none
    assert {name: len(built[name].weight_averages()) for name in averaged} == averaged
    for name in averaged:
        # Averaged weights unlike the raw ones (as after training): every expected output below comes from
        # the average, which is what must be exported.
        for average, _ in built[name].weight_averages():
            for weight in average.network.weights:
                weight.assign(weight * 0.9 + 0.01)
    encoder = classifier.copy_encoder(classifier.reusable_encoder(built["stacked_ae"]))
    head = classifier.build_classifier(classifier.ClassifierConfig(num_classes=10), encoder)
    families = {name: entry for name, (entry, _) in models.items()}
    families["classifier"] = registry.get_model(classifier.NAME)
    built["classifier"] = head
    for name, entry in families.items():
        directory = str(root / name)
        # The classifier's pixel range is its base model's (stacked_ae: unit).
        export.export_model(entry.family, built[name], SHAPE, directory, entry.pixel_range or "unit")
        images = tf.constant(unit_or_symmetric(entry, digits))
        np.savez(str(root / f"{name}-cases.npz"), **expected_cases(name, entry, built[name], images))
        directories[name] = directory
    return directories


def test_every_signature_matches_in_a_fresh_process_with_plain_tensorflow(exported, tmp_path):
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS_CHECK, json.dumps(exported)], cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.pop("project_imported") == []
    expected_signatures = {
        "stacked_ae": ["anomaly_score", "decode", "encode", "reconstruct", "serving_default"],
        "conv_vae": ["anomaly_score", "decode", "encode", "reconstruct", "sample", "serving_default"],
        "dcgan": ["generate", "generate_from_codings", "serving_default"],
        "stylegan": ["generate", "generate_from_codings", "mix_styles", "serving_default"],
        "ddpm": ["generate", "generate_from_noise", "serving_default"],
        "classifier": ["classify", "serving_default"],
    }
    families_of = {"stacked_ae": "autoencoder", "conv_vae": "vae", "dcgan": "gan", "stylegan": "stylegan",
                   "ddpm": "diffusion",
                   "classifier": "classifier"}
    for name, signatures in expected_signatures.items():
        assert report[name]["signatures"] == signatures, name
        for output, error in report[name]["max_error"].items():
            assert error <= 1e-5, (name, output, error)
        for label, message in report[name]["refused"].items():
            assert message is not None, f"{name}: {label} was accepted"
    for name in expected_signatures:  # what a server reads: family, pixel range, shape, DDPM's steps
        assert report[name]["metadata"]["family"] == families_of[name], name
        assert report[name]["metadata"]["image_shape"] == list(SHAPE)
    assert report["stacked_ae"]["metadata"]["pixel_range"] == "unit"
    assert report["dcgan"]["metadata"]["pixel_range"] == "symmetric"
    assert report["ddpm"]["metadata"]["timesteps"] == 20 and report["ddpm"]["metadata"]["sample_steps"] == 4
    assert report["ddpm"]["metadata"]["sampler"] == "ddim"
    assert "pixel range" in report["stacked_ae"]["refused"]["out_of_range"]
    assert "finite" in report["stacked_ae"]["refused"]["nan"]
    assert "n: must be between 1 and" in report["dcgan"]["refused"]["n_zero"]
    assert str(export.MAX_GENERATED + 1) in report["dcgan"]["refused"]["n_too_many"]
    assert "steps: must be between 1 and" in report["ddpm"]["refused"]["steps_beyond_T"]
    assert report["stylegan"]["metadata"]["generate_defaults"] == {"truncation": 0.7}
    assert report["stylegan"]["metadata"]["style_layers"] == 6
    assert "truncation: psi must be in [0, 1]" in report["stylegan"]["refused"]["truncation_above_one"]
    assert "crossover: must be in [0, 6]" in report["stylegan"]["refused"]["crossover_beyond"]
    assert "[0, 1]" in report["classifier"]["refused"]["out_of_range"]


def test_unknown_pixel_range_is_refused(tmp_path):
    entry = registry.get_model("stacked_ae")
    model = entry.build(registry.make_config("stacked_ae", {}), SHAPE)
    with pytest.raises(ValueError, match="pixel_range='bytes'"):
        export.export_model(entry.family, model, SHAPE, str(tmp_path), "bytes")


def _module_with(signature_names, metadata=None):
    """A SavedModel-like object as tf.saved_model.load returns it: `signatures`, and `metadata` when given."""
    module = tf.Module()
    function = tf.function(lambda x: {"y": x}, input_signature=[tf.TensorSpec([None], tf.float32)])
    module.signatures = {name: function.get_concrete_function() for name in signature_names}
    if metadata is not None:
        module.metadata = tf.Variable(json.dumps(metadata))
    return module


def test_older_exports_are_described_by_their_signatures():
    """A SavedModel from before the exporter wrote `metadata` (or before it named the latent signature) is served
    as what it was: its family, and for the generators the signature the explorer draws through."""
    from serving.model import read_metadata  # pylint: disable=import-outside-toplevel
    assert read_metadata(_module_with(["generate", "generate_from_codings"])) == {
        "family": "gan", "latent_signature": "generate_from_codings"}
    assert read_metadata(_module_with(["sample", "decode", "reconstruct", "encode"]))["latent_signature"] == "decode"
    assert read_metadata(_module_with(["reconstruct", "encode"])) == {"family": "autoencoder"}
    # Metadata wins; what an older one lacks comes from the signatures only for the family they tell.
    described = read_metadata(_module_with(["generate", "generate_from_codings"],
                                           {"family": "gan", "pixel_range": "symmetric"}))
    assert described == {"family": "gan", "pixel_range": "symmetric", "latent_signature": "generate_from_codings"}
    assert "latent_signature" not in read_metadata(_module_with(["generate", "generate_from_codings"],
                                                                {"family": "stylegan"}))
    with pytest.raises(ValueError, match="not a latentforge SavedModel"):
        read_metadata(_module_with(["serving_default"]))
