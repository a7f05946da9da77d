"""Unlabelled images end to end: every family that needs no labels trains, is evaluated (generative ones in a
self-supervised feature space), registered, pushed and served on an `.npz` holding only `x` (32x32 colour) and on a
folder with its images directly in it; the family-by-family runs share one pipeline, so ingest, validation and the
feature network run once per source (TFX's cache)."""
import glob
import json
import os

import numpy as np
import pytest

from pipelines import cli, metadata
from serving import model as served
from tests.conftest import sample_digits, write_png

pytestmark = pytest.mark.slow

# Small budgets: what is checked is that each run goes through, not what it learns.
FAMILY_RUNS = {
    "conv_ae": ["--epochs", "1"],
    "conv_vae": ["--epochs", "1"],
    "dcgan": ["--epochs", "1"],
    "stylegan": ["--epochs", "1", "--batch-size", "16"],
    "ddpm": ["--epochs", "1", "--set", "sample_steps=4", "--set", "channel_multipliers=[1,2]"],
}


def colour_blobs(count: int, seed: int = 0) -> np.ndarray:
    """(count, 32, 32, 3) uint8: a disc of one random colour on a background of another."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    images = np.empty((count, 32, 32, 3), np.uint8)
    for image in images:
        y, x, r = rng.integers(8, 24), rng.integers(8, 24), rng.integers(4, 9)
        image[:] = rng.integers(0, 256, 3)
        image[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(0, 256, 3)
    return images


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from backends import ray_cluster
    ray_cluster.shutdown()
    return tmp_path_factory.mktemp("unlabelled")


def _run(source: str, model: str, run_dir, flags=()) -> dict:
    argv = ["run", "--source", source, "--model", model, *FAMILY_RUNS[model], *flags, "--eval-samples", "64",
            "--metric-network-epochs", "2", "--trainer", "in-process", "--run-dir", str(run_dir)]
    assert cli.main(argv) == cli.EXIT_OK
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"),
                                                    "latentforge")}
    with open(os.path.join(nodes["ModelEvaluator"].outputs["evaluation"], "evaluation.json")) as f:
        return {"nodes": nodes, "evaluation": json.load(f)}


def _served(run_dir, model: str) -> served.ServedModel:
    pushed = glob.glob(os.path.join(run_dir, "latentforge", "serving", model, "*", "saved_model.pb"))
    assert len(pushed) == 1, pushed
    return served.ServedModel(os.path.dirname(pushed[0]), model, "1")


@pytest.mark.parametrize("model", list(FAMILY_RUNS))
def test_every_family_without_labels_trains_evaluates_registers_pushes_and_serves_on_colour_npz(model, run_dir,
                                                                                                   tmp_path_factory):
    source = run_dir / "blobs.npz"
    if not source.exists():
        np.savez(source, x=colour_blobs(320))
    result = _run(f"npz:{source}", model, run_dir)
    nodes, evaluation = result["nodes"], result["evaluation"]
    assert {n.state for n in nodes.values()} <= {"COMPLETE", "CACHED"}
    metrics, blessing = evaluation["metrics"], evaluation["blessing"]
    assert blessing["blessed"] is True and nodes["MlflowRegistrar"].properties["registration"]["version"] == "1"
    assert np.isfinite(blessing["candidate"]) and blessing["metric"] in metrics
    servable = _served(run_dir, model)
    if servable.generative:
        # FID, KID and precision/recall in the self-supervised feature space; no class-based scores.
        assert {"fid", "kid_x1e3", "precision", "recall"} <= set(metrics) and "mode_entropy" not in metrics
        assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
        signature, inputs, _ = servable.parse_generate({"n": 3, "seed": 1})
        images = servable.run(signature, inputs)["images"]
        assert images.shape == (3, 32, 32, 3) and np.isfinite(images).all()
        with open(os.path.join(nodes["MetricNetworkTrainer"].outputs["evaluation"], "evaluation.json")) as f:
            feature_evaluation = json.load(f)
        assert feature_evaluation["method"] == "self_supervised" and feature_evaluation["test_accuracy"] is None
        assert 0 <= feature_evaluation["precision_floor"] <= 1
        # The exported epoch is the best by the sample-quality proxy, scored in that space after every epoch.
        with open(os.path.join(nodes["Trainer"].outputs["model_run"], "metrics.json")) as f:
            trained = json.load(f)
        assert trained["kept_epoch"] == 1 and len(trained["history"]["proxy_kid_x1e3"]) == 1
    else:
        reconstructions = servable.run("reconstruct", {"images": colour_blobs(2, seed=9).astype(np.float32) / 255})
        assert reconstructions["reconstructions"].shape == (2, 32, 32, 3)


def test_a_flat_folder_of_grey_digits_trains_a_generator_scored_without_labels(run_dir, capsys):
    folder = run_dir / "digits"
    for i, digit in enumerate(sample_digits(300)):
        write_png(str(folder / f"{i:04d}.png"), (digit * 255).astype(np.uint8))
    result = _run(f"folder:{folder}", "dcgan", run_dir, ["--keep-last-epoch"])
    out = capsys.readouterr().out
    assert "(28x28x1, unlabelled)" in out and "blessed: no champion yet" in out
    assert result["evaluation"]["metrics"]["samples"] == 64
    with open(os.path.join(result["nodes"]["Trainer"].outputs["model_run"], "metrics.json")) as f:
        trained = json.load(f)
    assert "kept_epoch" not in trained and "proxy_kid_x1e3" not in trained["history"]  # the last, unscored
    assert result["nodes"]["MetricNetworkTrainer"].state == "COMPLETE"  # a new source: its own feature network
