"""Run by tests/test_distribution.py in a fresh process: two logical CPU devices must be set up before TF starts.

Prints one JSON line: the summed per-replica average_loss vs the global mean, and each family's losses after
one epoch under MirroredStrategy (the single-machine sibling of MultiWorkerMirroredStrategy).
"""
import json
import sys

import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from tests.conftest import sample_digits  # noqa: E402  (after the device set-up)
from trainers import registry  # noqa: E402
from trainers.common import average_loss  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
report = {"replicas": strategy.num_replicas_in_sync}

# The loss each replica computes from its half of a global batch of 8 sums to the global mean.
values = tf.constant(np.arange(8, dtype=np.float32) ** 2)
shards = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(values).unbatch().batch(8))
per_replica = strategy.run(average_loss, args=(next(iter(shards)),))
report["summed_replica_loss"] = float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))
report["global_mean"] = float(tf.reduce_mean(values))

TINY = {"stacked_ae": {}, "vae": {}, "wgan_gp": {"critic_steps": 2},
        "ddpm": {"timesteps": 20, "base_channels": 16, "channel_multipliers": [1, 2], "sample_steps": 2},
        # DCGAN with the mode-collapse remedies: a per-replica replay buffer, a batch statistic in G's loss and in D.
        "dcgan+remedies": {"conv_filters": [16, 32], "minibatch_stddev": 4, "feature_matching": 1.0,
                           "replay_size": 32},
        # The images seen (one copy, every replica adding the global batch) and w_avg (per replica).
        "progressive_dcgan": {"conv_filters": [16, 32], "fade_images": 32, "stable_images": 16},
        "stylegan": {"synthesis_filters": [16, 16, 8], "conv_filters": [8, 16], "mapping_layers": 2,
                     "style_size": 16, "coding_size": 16}}
images = sample_digits(64)  # two global batches: every family's step traced and run twice
for name in sys.argv[1:]:
    entry = registry.get_model(name.split("+")[0])
    pixels = images * 2.0 - 1.0 if entry.pixel_range == "symmetric" else images
    config = registry.make_config(name.split("+")[0], {"epochs": 1, "batch_size": 32, **TINY[name]})
    with strategy.scope():
        model = entry.build(config, (28, 28, 1))
    data = tf.data.Dataset.from_tensor_slices(pixels).batch(32)
    if entry.family.name == "autoencoder":
        data = data.map(lambda x: (x, x))
    history = model.fit(data, epochs=1, verbose=0).history
    report[name] = {k: float(v[-1]) for k, v in history.items()}
    if getattr(model, "growth", None) is not None:
        report[name]["images_seen"] = int(model.growth.images_seen.numpy())
# The same model, the same global batch, plain SGD (whose step is proportional to the gradient, unlike Adam's): one
# step on two replicas must move every weight as one step on one device does.
config = registry.make_config("stacked_ae", {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "learning_rate": 1.0,
                                             "jit_compile": False, "steps_per_execution": 1})
entry = registry.get_model("stacked_ae")
with strategy.scope():
    on_two = entry.build(config, (28, 28, 1))
on_one = entry.build(config, (28, 28, 1))
on_one.set_weights(on_two.get_weights())
before = on_one.get_weights()
batch = tf.data.Dataset.from_tensor_slices((images[:32], images[:32])).batch(32)
on_two.fit(batch, epochs=1, verbose=0)
on_one.fit(batch, epochs=1, verbose=0)
report["one_step"] = {
    "largest_change": max(float(np.max(np.abs(a - b))) for a, b in zip(on_one.get_weights(), before)),
    "largest_difference": max(float(np.max(np.abs(a - b))) for a, b in zip(on_one.get_weights(),
                                                                            on_two.get_weights()))}
print("RESULT " + json.dumps(report))
