"""AutoGraph leaves tf_keras's own code alone, as it leaves `keras` and `tensorflow`'s.

TensorFlow 2.16's AutoGraph rules (tensorflow/python/autograph/core/config.py) name `keras` but not `tf_keras`, the
package Keras 2 lives in since TF 2.16. Without this rule every trace of a train or test function converts Keras'
internals (Layer.__call__, its error handlers, compile_utils...) again: measured on the stacked AE (20 steps of
batch 32, 2 cores), the first epoch took 14.7 s in a fresh process, 2.3 s with the rule; the losses are the same
to the last digit. tf_keras was written to run unconverted (inside TF it was under the `tensorflow` rule); Keras
converts what it must, a model's own `call` and `train_step`, explicitly. Imported by trainers.common, so every
process that builds a model through trainers (in process, Ray workers, the export, the Evaluator's metric
network: components/evaluation imports trainers) has it.
"""
from tensorflow.python.autograph.core import config as _autograph_config

_TF_KERAS = "tf_keras"

if not any(isinstance(rule, _autograph_config.DoNotConvert) and rule.matches(_TF_KERAS)
           for rule in _autograph_config.CONVERSION_RULES):
    _autograph_config.CONVERSION_RULES = ((_autograph_config.DoNotConvert(_TF_KERAS),)
                                          + tuple(_autograph_config.CONVERSION_RULES))
