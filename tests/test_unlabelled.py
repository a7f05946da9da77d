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

# Small budgets: what is checked is that each run goes through, not what it learns. Each family runs on one of the
# two unlabelled sources: an .npz of 32x32 colour images with `x` only, a folder of grey digits directly in it.
FAMILY_RUNS = {
    "conv_ae": ("npz", ["--epochs", "1"]),
    "dcgan": ("npz", ["--epochs", "1"]),
    "stylegan": ("npz", ["--epochs", "1", "--batch-size", "16", "--set", "synthesis_filters=[32,16,8]",
                         "--set", "conv_filters=[16,32]", "--set", "mapping_layers=2"]),
    "conv_vae": ("folder", ["--epochs", "1", "--keep-last-epoch"]),
    "ddpm": ("folder", ["--epochs", "1", "--set", "sample_steps=4", "--set", "channel_multipliers=[1,2]"]),
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
def sources(tmp_path_factory):
    """The run directory and the two unlabelled sources, as --source values."""
    from backends import ray_cluster
    ray_cluster.shutdown()
    root = tmp_path_factory.mktemp("unlabelled")
    np.savez(root / "blobs.npz", x=colour_blobs(320))
    for i, digit in enumerate(sample_digits(300)):
        write_png(str(root / "digits" / f"{i:04d}.png"), (digit * 255).astype(np.uint8))
    return root, {"npz": f"npz:{root / 'blobs.npz'}", "folder": f"folder:{root / 'digits'}"}


def _run(source: str, model: str, run_dir) -> dict:
    argv = ["run", "--source", source, "--model", model, *FAMILY_RUNS[model][1], "--eval-samples", "64",
            "--metric-network-epochs", "2", "--trainer", "in-process", "--run-dir", str(run_dir)]
    assert cli.main(argv) == cli.EXIT_OK
    nodes = {n.node: n for n in metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"),
                                                    "latentforge")}
    with open(os.path.join(nodes["ModelEvaluator"].outputs["evaluation"], "evaluation.json")) as f:
        evaluation = json.load(f)
    with open(os.path.join(nodes["Trainer"].outputs["model_run"], "metrics.json")) as f:
        trained = json.load(f)
    return {"nodes": nodes, "evaluation": evaluation, "trained": trained}


def _served(run_dir, model: str) -> served.ServedModel:
    pushed = glob.glob(os.path.join(run_dir, "latentforge", "serving", model, "*", "saved_model.pb"))
    assert len(pushed) == 1, pushed
    return served.ServedModel(os.path.dirname(pushed[0]), model, "1")


@pytest.mark.parametrize("model", list(FAMILY_RUNS))
def test_every_family_without_labels_trains_evaluates_registers_pushes_and_serves(model, sources, capsys):
    run_dir, uris = sources
    kind = FAMILY_RUNS[model][0]
    result = _run(uris[kind], model, run_dir)
    nodes, evaluation, trained = result["nodes"], result["evaluation"], result["trained"]
    out = capsys.readouterr().out
    shape = "32x32x3" if kind == "npz" else "28x28x1"
    assert f"({shape}, unlabelled)" in out and "blessed: no champion yet" in out
    assert {n.state for n in nodes.values()} <= {"COMPLETE", "CACHED"}
    metrics, blessing = evaluation["metrics"], evaluation["blessing"]
    assert blessing["blessed"] is True and nodes["MlflowRegistrar"].properties["registration"]["version"] == "1"
    assert np.isfinite(blessing["candidate"]) and blessing["metric"] in metrics
    servable = _served(run_dir, model)
    side, channels = (32, 3) if kind == "npz" else (28, 1)
    if not servable.generative:
        reconstructions = servable.run("reconstruct", {"images": colour_blobs(2, seed=9).astype(np.float32) / 255})
        assert reconstructions["reconstructions"].shape == (2, 32, 32, 3)
        return
    # FID, KID and precision/recall in the self-supervised feature space; no class-based scores.
    assert {"fid", "kid_x1e3", "precision", "recall"} <= set(metrics) and "mode_entropy" not in metrics
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1 and metrics["samples"] == 64
    signature, inputs, _ = servable.parse_generate({"n": 3, "seed": 1})
    images = servable.run(signature, inputs)["images"]
    assert images.shape == (3, side, side, channels) and np.isfinite(images).all()
    with open(os.path.join(nodes["MetricNetworkTrainer"].outputs["evaluation"], "evaluation.json")) as f:
        feature_evaluation = json.load(f)
    assert feature_evaluation["method"] == "self_supervised" and feature_evaluation["test_accuracy"] is None
    assert 0 <= feature_evaluation["precision_floor"] <= 1
    if "--keep-last-epoch" in FAMILY_RUNS[model][1]:  # the last epoch, unscored
        assert "kept_epoch" not in trained and "proxy_kid_x1e3" not in trained["history"]
    else:  # the exported epoch is the best by the sample-quality proxy, scored in that space after every epoch
        assert trained["kept_epoch"] == 1 and len(trained["history"]["proxy_kid_x1e3"]) == 1
