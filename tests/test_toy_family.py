"""Adding a family is one module plus one registry entry: a family defined and registered inside this test only
(a per-pixel Gaussian: a learned mean image and spread) runs through the whole pipeline: training in the
Trainer, the SavedModel (its signatures loaded in a fresh process), the Evaluator's FID with the metric network,
blessing, MLflow registration and the pictures; no file of the project knows its name.

The Trainer runs in process (`--trainer in-process`): Ray workers import the registry afresh and would not see
a family registered only in this process (a real family's module is registered in trainers/registry.py)."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipelines import cli, metadata
from tests.conftest import REPO_ROOT, SAMPLE_DIR
from trainers import common, registry, signatures
from evaluation import figures, scoring

pytestmark = pytest.mark.slow
FAMILY, MODEL = "gaussian_pixels", "toy_gaussian_pixels"


@dataclasses.dataclass(frozen=True)
class PixelsConfig(common.TrainingConfig):
    learning_rate: float = 0.05
    epochs: int = 2

    def check_input(self, input_shape):
        del input_shape  # any image shape


class GaussianPixels(keras.Model):
    """x ~ N(mean, exp(log_std)^2) independently per pixel, fitted by maximum likelihood."""

    def __init__(self, image_shape, **kwargs):
        super().__init__(**kwargs)
        self.mean = self.add_weight("mean", shape=image_shape, initializer="zeros")
        self.log_std = self.add_weight("log_std", shape=image_shape, initializer="zeros")
        self.nll = keras.metrics.Mean("loss")

    @property
    def metrics(self):
        return [self.nll]

    def call(self, noise, training=False):
        return tf.clip_by_value(self.mean + tf.exp(self.log_std) * noise, 0.0, 1.0)

    def train_step(self, images):
        with tf.GradientTape() as tape:
            z = (images - self.mean) / tf.exp(self.log_std)
            per_example = common.per_example_mean(0.5 * tf.square(z) + self.log_std)
            loss = common.average_loss(per_example)
        self.optimizer.apply_gradients(zip(tape.gradient(loss, self.trainable_variables), self.trainable_variables))
        self.nll.update_state(per_example)
        return {"loss": self.nll.result()}

    def test_step(self, images):
        z = (images - self.mean) / tf.exp(self.log_std)
        self.nll.update_state(common.per_example_mean(0.5 * tf.square(z) + self.log_std))
        return {"loss": self.nll.result()}

    def generate(self, n, seed=0):
        return self(tf.random.stateless_normal([n, *self.mean.shape], seed=[seed, 0]))


def build(config, input_shape, base_model=None):
    model = GaussianPixels(common.start_build(config, input_shape))
    model.compile(optimizer=common.make_optimizer(config))
    return model


def fit(model, config, train_data, eval_data=None, callbacks=None, initial_epoch=0):
    return common.fit_epochs(model, config, train_data, eval_data, callbacks, initial_epoch)


def serving_signatures(model, image_shape, pixel_range):
    del pixel_range

    @tf.function(input_signature=[signatures.N, signatures.SEED])
    def generate(n, seed):
        n = signatures.checked_count(n, "n", signatures.MAX_GENERATED)
        return {"images": model(tf.random.stateless_normal(tf.stack([n, *image_shape]), seed=tf.stack([seed, 0])))}

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name="noise")])
    def generate_from_noise(noise):
        return {"images": model(signatures.checked_codings(noise))}

    return {"serving_default": generate, "generate": generate, "generate_from_noise": generate_from_noise}


@pytest.fixture
def toy_family(monkeypatch):
    """The toy family and its one model, registered for this test only."""
    from trainers import family  # pylint: disable=import-outside-toplevel  (where the tables live)
    for table in ("FAMILIES", "MODELS"):
        copy = dict(getattr(family, table))
        monkeypatch.setattr(family, table, copy)
        monkeypatch.setattr(registry, table, copy)
    registry.register(registry.Family(
        FAMILY, PixelsConfig, build, fit, serving_signatures, signatures.output_of("generate_from_noise", "images"),
        key_metric=("fid", False), scorers=(scoring.score_generation,), figures=(figures.samples(16),),
        pixel_range="unit", generate_signature="generate",
        input_example=registry.standard_normal(lambda images, config: images.shape[1:])), {MODEL: {}})


def test_no_project_file_knows_the_toy_family():
    for package in ("pipelines", "components", "trainers", "evaluation", "serving", "backends"):
        for folder, _, names in os.walk(os.path.join(REPO_ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    with open(os.path.join(folder, name)) as f:
                        assert FAMILY not in f.read(), os.path.join(folder, name)


FRESH_PROCESS = r'''
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
images = loaded.signatures["generate"](n=tf.constant(3), seed=tf.constant(1))["images"].numpy()
called = loaded(tf.zeros([2, 28, 28, 1])).numpy()
print(json.dumps({"signatures": sorted(loaded.signatures), "metadata": json.loads(loaded.metadata.numpy()),
                  "shape": list(images.shape), "min": float(images.min()), "max": float(images.max()),
                  "called_mean": float(called.mean())}))
'''


def test_a_family_registered_in_a_test_runs_through_the_whole_pipeline(toy_family, tmp_path, capsys):
    assert cli.main(["models"]) == 0
    assert f"{MODEL:16s} {FAMILY}" in capsys.readouterr().out
    run_dir = str(tmp_path)
    assert cli.main(["run", "--source", f"idx:{SAMPLE_DIR}", "--model", MODEL, "--trainer", "in-process",
                     "--eval-samples", "200", "--metric-network-epochs", "1", "--run-dir", run_dir]) == 0
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"),
                                                    "latentforge")}
    assert {n.state for n in nodes.values()} == {"COMPLETE"} and "MetricNetworkTrainer" in nodes

    # Training: the likelihood rose, and the learned mean image is the data's mean digit.
    model_run = nodes["Trainer"].outputs["model_run"]
    with open(os.path.join(model_run, "metrics.json")) as f:
        trained = json.load(f)
    assert trained["family"] == FAMILY and len(trained["history"]["loss"]) == 2
    assert trained["history"]["loss"][1] < trained["history"]["loss"][0]
    assert {"loss.png", "samples.png"} <= set(os.listdir(model_run))

    # Export: the signatures load and run in a process that has never seen the family.
    saved_model = os.path.join(nodes["Trainer"].outputs["model"], "Format-Serving")
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, saved_model], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["signatures"] == ["generate", "generate_from_noise", "serving_default"]
    assert fresh["metadata"]["family"] == FAMILY and fresh["metadata"]["generate_signature"] == "generate"
    assert fresh["shape"] == [3, 28, 28, 1] and 0.0 <= fresh["min"] and fresh["max"] <= 1.0
    assert 0.05 < fresh["called_mean"] < 0.3  # zero noise: the mean image (MNIST's mean pixel is ~0.13)

    # Evaluation: scored by the family's scorer and key metric, blessed (no champion yet), registered.
    with open(os.path.join(nodes["ModelEvaluator"].outputs["evaluation"], "evaluation.json")) as f:
        evaluated = json.load(f)
    assert evaluated["family"] == FAMILY and evaluated["metrics"]["samples"] == 200
    assert np.isfinite(evaluated["metrics"]["fid"]) and evaluated["metrics"]["fid"] > 0
    assert evaluated["blessing"]["metric"] == "fid" and evaluated["blessing"]["blessed"] is True
    assert {"samples.png", "modes.png"} <= set(os.listdir(nodes["ModelEvaluator"].outputs["evaluation"]))
    registration = nodes["MlflowRegistrar"].properties["registration"]
    assert (registration["name"], registration["version"]) == (f"mnist-sample-{FAMILY}", "1")
    input_example = np.load(os.path.join(nodes["ModelEvaluator"].outputs["evaluation"], "input_example.npy"))
    assert input_example.shape == (2, 28, 28, 1)
