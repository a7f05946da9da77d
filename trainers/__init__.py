"""The models of chapter 17 as a library: each family knows nothing of TFX, Ray or MLflow."""
import os

# Keras 2 (tf_keras) throughout, set before TensorFlow resolves `tf.keras`: tf_keras's own layers use
# tf.keras (SpectralNormalization builds tf.keras.layers.InputSpec), and Keras 3 fails under
# MultiWorkerMirroredStrategy (keras-team/keras#20585). tensorflow_transform sets the same on import.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
