"""trainers.job: what a job's datasets hold."""
import dataclasses

import numpy as np

from tests.conftest import TRANSFORMED_SPEC, sample_digits, sample_labels, write_transformed
from trainers import job as training


def test_a_held_out_class_never_reaches_an_autoencoders_training_or_eval_data(tmp_path):
    images, labels = sample_digits(300), sample_labels(300)
    train = write_transformed(str(tmp_path / "train" / "data.gz"), images[:200], labels[:200])
    evaluation = write_transformed(str(tmp_path / "eval" / "data.gz"), images[200:], labels[200:])
    job = training.TrainingJob(model="stacked_ae", config={"batch_size": 32}, image_shape=(28, 28, 1),
                               train_files=[train], eval_files=[evaluation], feature_spec=TRANSFORMED_SPEC,
                               holdout_class=3)
    train_data, eval_data = training.datasets(job, job.make_config())
    seen_train = np.concatenate([batch.numpy() for batch in train_data])
    seen_eval = np.concatenate([batch.numpy() for batch in eval_data])
    assert len(seen_train) == int(np.sum(labels[:200] != 3)) and len(seen_eval) == int(np.sum(labels[200:] != 3))
    threes = images[:200][labels[:200] == 3].reshape(-1, 784)
    assert len(threes) > 0
    flat = seen_train.reshape(len(seen_train), -1)
    assert not any(np.any(np.all(flat == three, axis=1)) for three in threes)


def test_the_training_order_is_the_seed_s_whatever_ran_before_in_the_process(tmp_path):
    """A shuffle takes TensorFlow's global seed as it stands when the dataset is made: in process, an earlier
    component (which a cached rerun skips) sets it. The job's datasets are the seed's alone."""
    import tensorflow as tf
    images, labels = sample_digits(200), sample_labels(200)
    train = write_transformed(str(tmp_path / "train" / "data.gz"), images, labels)
    job = training.TrainingJob(model="stacked_ae", config={"batch_size": 32}, image_shape=(28, 28, 1),
                               train_files=[train], eval_files=[train], feature_spec=TRANSFORMED_SPEC)

    def first_batch(earlier_seed, config):
        tf.keras.utils.set_random_seed(earlier_seed)  # what a component trained before this one left
        return next(iter(training.datasets(job, config)[0])).numpy()

    np.testing.assert_array_equal(first_batch(1, job.make_config()), first_batch(2, job.make_config()))
    other_seed = dataclasses.replace(job, config={"batch_size": 32, "seed": 5})
    assert not np.array_equal(first_batch(1, job.make_config()), first_batch(1, other_seed.make_config()))
