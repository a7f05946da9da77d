"""The layers the GANs add to Keras': the projection discriminator's class term, ProGAN's minibatch standard
deviation, the discriminator's replay buffer of past fakes, and spectral normalisation that traces without
AutoGraph. Used by trainers/gans.py and the families built on its game (trainers/stylegan.py)."""
from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras


class ClassProjection(keras.layers.Layer):
    """The projection discriminator's class term (Miyato & Koyama 2018): [phi (B, F), labels (B,)] ->
    <embedding[label], phi> (B, 1), 0 for an unlabeled image (label -1)."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def build(self, input_shape):
        self.embeddings = self.add_weight(name="embeddings", shape=(self.num_classes, int(input_shape[0][-1])),
                                          initializer=keras.initializers.RandomNormal(stddev=0.02))
        super().build(input_shape)

    def call(self, inputs):
        features, labels = inputs
        labels = tf.cast(labels, tf.int32)
        embedded = tf.gather(tf.cast(self.embeddings, features.dtype), tf.maximum(labels, 0))
        labelled = tf.cast(labels >= 0, features.dtype)[:, None]
        return tf.reduce_sum(embedded * features, axis=-1, keepdims=True) * labelled

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


class MinibatchStddev(keras.layers.Layer):
    """Minibatch discrimination as ProGAN does it (Karras et al. 2018, section 3): (B, ..., F) -> (B, ..., F + 1),
    the added feature (constant over the spatial positions) being the standard deviation of every value across a
    group of `group_size` images, averaged. The batch splits into groups of strided images (image i is in the
    group of i mod B/group_size); a batch `group_size` does not divide is one group."""

    def __init__(self, group_size: int, **kwargs):
        super().__init__(**kwargs)
        self.group_size = group_size

    def call(self, x):
        batch = tf.shape(x)[0]
        group = tf.minimum(self.group_size, batch)
        group = tf.where(batch % group == 0, group, batch)
        groups = batch // group
        grouped = tf.reshape(tf.cast(x, tf.float32), tf.concat([[group, groups], tf.shape(x)[1:]], axis=0))
        spread = tf.sqrt(tf.math.reduce_variance(grouped, axis=0) + 1e-8)  # (groups, ...)
        per_group = tf.reduce_mean(tf.reshape(spread, [groups, -1]), axis=1)
        per_image = tf.reshape(tf.tile(per_group, [group]), [-1] + [1] * (len(x.shape) - 1))
        feature = tf.broadcast_to(tf.cast(per_image, x.dtype), tf.concat([tf.shape(x)[:-1], [1]], axis=0))
        return tf.concat([x, feature], axis=-1)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([input_shape[-1] + 1])

    def get_config(self):
        return {**super().get_config(), "group_size": self.group_size}


class ReplayBuffer(tf.Module):
    """Experience replay for the discriminator: the last `size` fakes until full, then each new fake overwrites a
    random slot (older fakes fade out gradually, as in Shrivastava et al. 2017). Each replica keeps its own buffer
    (ON_READ variables: no synchronisation per step); a checkpoint keeps the first replica's."""

    def __init__(self, size: int, image_shape: Sequence[int], fraction: float, conditional: bool):
        super().__init__(name="replay_buffer")
        self.size, self.fraction = size, fraction
        local = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.images = tf.Variable(tf.zeros((size, *image_shape)), name="images", **local)
        # The label each fake was judged with (-1: none), for a conditional discriminator.
        self.labels = tf.Variable(tf.fill([size], -1), name="labels", **local) if conditional else None
        self.seen = tf.Variable(tf.constant(0, tf.int64), name="seen", **local)  # fakes written so far

    def mix(self, fresh: tf.Tensor, labels: Optional[tf.Tensor]):
        """(fakes, labels) for the discriminator: `fraction` of the batch replaced by stored fakes (none while the
        buffer is empty); then the fresh fakes are stored."""
        batch = tf.shape(fresh)[0]
        stored = tf.minimum(self.seen, self.size)
        take = tf.where(stored > 0, tf.cast(tf.round(self.fraction * tf.cast(batch, tf.float32)), tf.int32), 0)
        slots = tf.random.uniform([take], 0, tf.maximum(stored, 1), dtype=tf.int64)
        mixed = tf.concat([tf.gather(self.images, slots), fresh[take:]], axis=0)
        mixed_labels = None
        if labels is not None:
            mixed_labels = tf.concat([tf.gather(self.labels, slots), labels[take:]], axis=0)
        self._store(fresh, labels, batch)
        return mixed, mixed_labels

    def _store(self, fresh, labels, batch):
        positions = self.seen + tf.range(tf.cast(batch, tf.int64), dtype=tf.int64)
        positions = tf.where(positions < self.size, positions,
                             tf.random.uniform([batch], 0, self.size, dtype=tf.int64))[:, None]
        self.images.assign(tf.tensor_scatter_nd_update(self.images, positions, fresh))
        if labels is not None:
            self.labels.assign(tf.tensor_scatter_nd_update(self.labels, positions, labels))
        self.seen.assign_add(tf.cast(batch, tf.int64))


@keras.saving.register_keras_serializable("latentforge")
class SpectralNormalization(keras.layers.SpectralNormalization):
    """Keras' spectral normalisation with its check for an all-zero kernel as a tf.cond: Keras writes it as
    `if not tf.reduce_all(...)`, which only runs in a graph when AutoGraph converts Keras' own code, and
    trainers/autograph_rules.py keeps AutoGraph out of tf_keras. The same computation otherwise."""

    def normalize_weights(self):
        weights = tf.reshape(self.kernel, [-1, self.kernel_shape[-1]])

        def normalize():
            vector_u = self.vector_u
            for _ in range(self.power_iterations):
                vector_v = tf.math.l2_normalize(tf.matmul(vector_u, weights, transpose_b=True))
                vector_u = tf.math.l2_normalize(tf.matmul(vector_v, weights))
            vector_u, vector_v = tf.stop_gradient(vector_u), tf.stop_gradient(vector_v)
            sigma = tf.matmul(tf.matmul(vector_v, weights), vector_u, transpose_b=True)
            self.vector_u.assign(tf.cast(vector_u, self.vector_u.dtype))
            self.kernel.assign(tf.cast(tf.reshape(self.kernel / sigma, self.kernel_shape), self.kernel.dtype))
            return tf.constant(True)

        tf.cond(tf.reduce_all(tf.equal(weights, 0.0)), lambda: tf.constant(False), normalize)
