"""An exponential moving average (EMA) of a network's weights: what diffusion and GAN toolkits sample with.

    ema = ExponentialMovingAverage(generator, decay=0.999)   # a copy of the network, the average's weights
    ...in the train step, after the optimizer's step:
    ema.update(generator, optimizer.iterations)
    ema.network(codings)                                      # samples from the averaged weights

After update number n the average moves by (1 - d_n) toward the current weights, with
d_n = min(decay, (1 + n) / (10 + n)) (tf.train.ExponentialMovingAverage's num_updates warm-up): the first steps'
random weights are not frozen into the average. n is the optimizer's step counter, so a run restored from a
checkpoint (the averaged network is part of the model's checkpoint) continues the identical average.

Distribution: the update runs in cross-replica context (`merge_call`, as Keras' own optimizer EMA does) and
moves every replica's copy by the same amount, so it is right under MultiWorkerMirroredStrategy; non-trainable
weights (BatchNormalization's moving statistics) are averaged the same way.

A model with averages lists them as (average, network it averages) pairs in `weight_averages()`: its train step
updates each pair, and whoever needs the raw weights in place of the averaged ones (a benchmark scoring both, a
test perturbing the average) reads the same list instead of knowing the model's attribute names.
"""
import tensorflow as tf
import tf_keras as keras


def warmed_up_decay(decay: float, step) -> tf.Tensor:
    """The decay of update number `step` (1-based): min(decay, (1 + step) / (10 + step))."""
    step = tf.cast(step, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1.0 + step) / (10.0 + step))


def _move_toward(average, value, decay):
    return average.assign_sub((1.0 - decay) * (average - tf.cast(value, average.dtype)))


class ExponentialMovingAverage(keras.layers.Layer):
    """`network`'s architecture with its own variables, which `update` moves toward `network`'s weights.

    A layer that is never called, only so that Keras counts its weights as the model's non-trainable ones (a
    train step over `model.trainable_variables` leaves them alone) and checkpoints them with the model."""

    def __init__(self, network: keras.Model, decay: float):
        super().__init__(name=f"{network.name}_ema", trainable=False)
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay={decay}: must be in (0, 1) for an average (0 turns it off)")
        self.decay = float(decay)
        self.network = keras.models.clone_model(network)
        self.network.set_weights(network.get_weights())
        self.network.trainable = False
        mismatched = [(a.name, b.name) for a, b in zip(self.network.weights, network.weights) if a.shape != b.shape]
        if mismatched or len(self.network.weights) != len(network.weights):
            raise ValueError(f"the copy of {network.name} does not match it weight for weight: {mismatched}")

    def update(self, network: keras.Model, step) -> None:
        """Moves the average toward `network`'s weights as update number `step` (the optimizer's iterations
        after its step). Call it inside the train step, after `apply_gradients`."""
        pairs = list(zip(self.network.weights, network.weights))

        def blend(strategy):
            decay = warmed_up_decay(self.decay, step)
            for average, value in pairs:
                strategy.extended.update(average, _move_toward, args=(value, decay), group=False)

        context = tf.distribute.get_replica_context()
        if context is None:  # cross-replica context already
            blend(tf.distribute.get_strategy())
        else:
            context.merge_call(blend)

    def reset(self, network: keras.Model) -> None:
        """The average restarts at `network`'s weights."""
        self.network.set_weights(network.get_weights())
