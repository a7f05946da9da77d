"""Ray Train (components/trainer/ray_train.py): models train on 2 Ray workers under MultiWorkerMirroredStrategy, match a
1-worker run, and GPU requests fail fast. (A worker group that loses a node and resumes from the last checkpoint,
its weight averages intact: tests/test_cluster.py; a rerun past a damaged checkpoint: tests/test_object_storage.py.)"""
import dataclasses
import glob
import json
import os
import time

import numpy as np
import pytest

from tests.conftest import TRANSFORMED_SPEC, sample_digits, sample_labels, write_feature_network, write_transformed
from backends import ray_cluster
from components.trainer import ray_train
from trainers import job as training
from trainers.common import TrainingDiverged, resolve_precision


@pytest.fixture(scope="module")
def local_ray():
    ray_cluster.connect()  # a local Ray with this machine's cores (2 on CI)
    import ray
    if ray.cluster_resources().get("CPU", 0) < 2:
        pytest.skip("two Ray workers need 2 CPUs")
    return ray


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Real digits as the Transform writes them: 64 train (one global batch), 640 train, 128 eval."""
    root = tmp_path_factory.mktemp("transformed")
    images, labels = sample_digits(768), sample_labels(768)
    return {"one_batch": write_transformed(str(root / "one_batch.gz"), images[:64], labels[:64]),
            "train": write_transformed(str(root / "train.gz"), images[:640], labels[:640]),
            "eval": write_transformed(str(root / "eval.gz"), images[640:], labels[640:])}


def job(model, config, train_file, eval_file, **kw):
    return training.TrainingJob(model, config, (28, 28, 1), [train_file], [eval_file], TRANSFORMED_SPEC, **kw)


def test_two_workers_train_an_autoencoder_like_one_worker_with_the_same_global_batch(local_ray, digits, tmp_path,
                                                                                      capsys):
    # One global batch of 64 per epoch: the first epoch is exactly one step, so its eval loss is the model
    # after the first step. Two workers each take 32 of the 64 and all-reduce the gradients. The one-worker
    # reference trains in this process: a single Ray worker trains exactly as in process (ray_train._strategy;
    # test_pipeline_e2e checks a one-worker Ray run's replicas), without a second Ray run's start-up.
    ae = job("stacked_ae", {"epochs": 2, "batch_size": 64, "seed": 7}, digits["one_batch"], digits["eval"])
    two = ray_train.train(ae, ray_train.RaySettings(workers=2), str(tmp_path), "ae-2")
    # The chief's progress reaches this driver (workers' own output does not, by default): one line per epoch
    # (not a terminal here), once, not once per worker.
    shown = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in shown if line.startswith("  epoch ")] == ["  epoch 1/2", "  epoch 2/2"]
    assert not any(line.startswith("latentforge worker") for line in shown)
    config = ae.make_config()
    one = training.train(ae, training.build_model(ae, config), config, *training.datasets(ae, config))

    assert [w["rank"] for w in two.workers] == [0, 1]
    assert all(w["replicas"] == 2 and w["workers"] == 2 for w in two.workers)
    assert len({w["pid"] for w in two.workers}) == 2  # two processes, not two threads
    assert len(two.history["val_loss"]) == 2
    np.testing.assert_allclose(two.history["val_loss"][0], one["val_loss"][0], rtol=1e-3)
    np.testing.assert_allclose(two.history["loss"][0], one["loss"][0], rtol=1e-3)
    # It learned: the second step's model reconstructs better than the first's.
    assert two.history["val_loss"][1] < two.history["val_loss"][0]

    # The final checkpoint rebuilds the trained model anywhere.
    model, state = training.restore(two.checkpoint_dir)
    assert state["epoch"] == 2
    images = sample_digits(8)
    assert model(images).shape == images.shape


def test_two_workers_train_a_conditional_dcgan_to_completion(local_ray, digits, tmp_path):
    # The class-conditional DCGAN: (image, label) batches split across the replicas, the projection critic.
    # With a feature network, every worker scores each epoch's samples (the same seeds: the same value) and Ray
    # keeps the best checkpoint by that score, which is what comes back.
    features = write_feature_network(str(tmp_path / "features"))
    # Precision "auto": each worker resolves it on its own machine (mixed_bfloat16 where bfloat16 is native) and
    # says so. (Every family's custom step under two replicas, StyleGAN's included, is tests/test_distribution.py's;
    # here what Ray adds: workers, checkpoints, restore.)
    gan = job("dcgan_cond", {"epochs": 2, "batch_size": 64, "coding_size": 32, "num_classes": 10,
                             "precision": "auto"}, digits["one_batch"], digits["eval"],
              feature_network=os.path.join(features, "saved_model"), feature_reference=features)
    # Asked for TensorBoard events, a two-worker run still finishes (the chief alone running the callbacks hung
    # it): they are written from the history afterwards, as the executor does.
    events = str(tmp_path / "tensorboard")
    outcome = ray_train.train(dataclasses.replace(gan, tensorboard_dir=events), ray_train.RaySettings(workers=2),
                              str(tmp_path), "dcgan_cond")
    assert all(w["replicas"] == 2 for w in outcome.workers) and len(outcome.workers) == 2
    assert [w["precision"] for w in outcome.workers] == [resolve_precision("auto")] * 2
    import tensorflow as tf
    from components.trainer import tensorboard
    tensorboard.write_history(events, outcome.history)
    written = {v.tag for path in glob.glob(os.path.join(events, "train", "events.out.tfevents.*"))
               for event in tf.compat.v1.train.summary_iterator(path) for v in event.summary.value}
    assert {"epoch_d_loss", "epoch_g_loss"} <= written
    assert len(outcome.history["d_loss"]) == 2 and np.all(np.isfinite(outcome.history["g_loss"]))
    proxy = outcome.history["proxy_kid_x1e3"]
    assert len(proxy) == 2 and np.all(np.isfinite(proxy))
    assert outcome.kept_epoch == int(np.argmin(proxy)) + 1
    assert training.read_state(outcome.checkpoint_dir)["epoch"] == outcome.kept_epoch
    model, _ = training.restore(outcome.checkpoint_dir)
    samples = model.generate(4, seed=0, labels=[3]).numpy()
    assert samples.shape == (4, 28, 28, 1) and np.all(np.abs(samples) <= 1)
    assert not np.allclose(samples, model.generate(4, seed=0, labels=[5]).numpy())
    # The generator's weight average (on by default) is updated right across the two replicas: the chief's
    # last checkpoint holds exactly d * (epoch 1's average) + (1 - d) * (epoch 2's raw weights), with the
    # warm-up decay of generator step 2, d = min(0.999, 3 / 12).
    first, last = (training.restore(path)[0] for path in _checkpoints(outcome.run_path))
    assert int(last.g_optimizer.iterations) == 2
    for before, raw, after in zip(first.ema.network.get_weights(), last.generator.get_weights(),
                                  last.ema.network.get_weights()):
        np.testing.assert_allclose(after, 0.25 * before + 0.75 * raw, atol=1e-6)


def _checkpoints(run_path):
    """Finished checkpoints of a run (both workers' files uploaded and readable), oldest first."""
    done = [d for d in glob.glob(os.path.join(run_path, "checkpoint_*"))
            if all(_readable_json(os.path.join(d, f)) for f in ("state.json", "worker-0.json", "worker-1.json"))]
    return sorted(done, key=os.path.getmtime)


def _readable_json(path):
    """Whether `path` holds whole JSON yet (Ray copies a reported checkpoint into storage file by file)."""
    try:
        with open(path) as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False


def test_a_worker_that_diverges_raises_training_diverged_not_rays_wrapper(local_ray, tmp_path):
    # NaN pixels make the GAN's losses NaN at the first step; the divergence monitor stops the worker.
    images = sample_digits(128)
    images[:] = np.nan
    train_file = write_transformed(str(tmp_path / "nan.gz"), images, np.zeros(128))
    gan = job("gan", {"epochs": 1, "batch_size": 64}, train_file, train_file)
    with pytest.raises(TrainingDiverged, match="at step 1"):
        ray_train.train(gan, ray_train.RaySettings(workers=1, max_failures=0), str(tmp_path), "nan")


def test_asking_for_gpus_on_a_cpu_cluster_fails_fast_and_says_what_is_there(local_ray):
    if local_ray.cluster_resources().get("GPU", 0):
        pytest.skip("this machine's Ray has GPUs")
    start = time.time()
    with pytest.raises(ray_cluster.RayClusterError, match=r"need 2 GPUs, but the Ray cluster .* has 0: it has CPU"):
        ray_train.worker_resources(ray_train.RaySettings(workers=2, gpus_per_worker=1))
    with pytest.raises(ray_cluster.RayClusterError, match="need 64 CPUs"):
        ray_train.worker_resources(ray_train.RaySettings(workers=2, cpus_per_worker=32))
    assert time.time() - start < 5


def test_a_finished_run_is_never_resumed_into(tmp_path):
    os.makedirs(tmp_path / "ae")
    assert ray_train.run_name(str(tmp_path), "ae") == "ae"  # unfinished: a rerun resumes it
    (tmp_path / "ae" / ray_train.COMPLETE_MARKER).write_text("{}")
    assert ray_train.run_name(str(tmp_path), "ae") == "ae-2"
