"""Custom train steps under a distribution strategy: two replicas (logical CPUs) in a fresh process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

FAMILIES = ["stacked_ae", "vae", "wgan_gp", "ddpm", "dcgan+remedies", "progressive_dcgan", "stylegan"]


@pytest.mark.slow  # seven families traced under a 2-replica strategy in a fresh process: over a minute
def test_every_family_trains_with_two_replicas_and_losses_are_scaled_by_the_global_batch():
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "tests.distributed_step", *FAMILIES], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    lines = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    report = json.loads(lines[-1][len("RESULT "):])
    assert report["replicas"] == 2
    # Each replica's loss is its share of the global mean, so gradients summed over replicas are right.
    assert np.isclose(report["summed_replica_loss"], report["global_mean"])
    for name in FAMILIES:
        losses = report[name]
        assert losses and all(np.isfinite(v) for v in losses.values()), (name, losses)
    # Two global batches of 32 counted once each (not once per replica).
    assert report["progressive_dcgan"]["images_seen"] == 64
    # One SGD step on two replicas moves the weights as on one device (a loss scaled by the replica's batch
    # instead of the global one would move them twice as far).
    step = report["one_step"]
    assert step["largest_change"] > 1e-5 and step["largest_difference"] < 1e-3 * step["largest_change"], step
