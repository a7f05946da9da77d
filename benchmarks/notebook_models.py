"""The seed notebook's own code (handson-ml3 notebook 17), transcribed: the baselines our benchmarks compare with.

Architectures and training calls as the notebook writes them (../shared/seeds/NOTEBOOK-17.md): plain
Sequential models, `compile`, `fit` on NumPy arrays, and the GAN's Python loop of `train_on_batch` calls.
"""
import tensorflow as tf
import tf_keras as keras

from trainers.autoencoders import DenseTranspose, KLDivergenceRegularizer


def stacked_ae():
    encoder = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(100, activation="relu"),
                                keras.layers.Dense(30, activation="relu")])
    decoder = keras.Sequential([keras.layers.Dense(100, activation="relu"), keras.layers.Dense(28 * 28),
                                keras.layers.Reshape([28, 28, 1])])
    return keras.Sequential([encoder, decoder])


def tied_ae():
    dense_1, dense_2 = keras.layers.Dense(100, activation="relu"), keras.layers.Dense(30, activation="relu")
    encoder = keras.Sequential([keras.layers.Flatten(), dense_1, dense_2])
    decoder = keras.Sequential([DenseTranspose(dense_2, activation="relu"), DenseTranspose(dense_1),
                                keras.layers.Reshape([28, 28, 1])])
    return keras.Sequential([encoder, decoder])


def conv_ae():
    encoder = keras.Sequential([
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"), keras.layers.MaxPool2D(2),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"), keras.layers.MaxPool2D(2),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"), keras.layers.MaxPool2D(2),
        keras.layers.Conv2D(30, 3, padding="same", activation="relu"), keras.layers.GlobalAvgPool2D()])
    decoder = keras.Sequential([
        keras.layers.Dense(3 * 3 * 16), keras.layers.Reshape((3, 3, 16)),
        keras.layers.Conv2DTranspose(32, 3, strides=2, activation="relu"),
        keras.layers.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2DTranspose(1, 3, strides=2, padding="same")])
    return keras.Sequential([encoder, decoder])


def recurrent_ae():
    encoder = keras.Sequential([keras.layers.Reshape([28, 28]), keras.layers.LSTM(100, return_sequences=True),
                                keras.layers.LSTM(30)])
    decoder = keras.Sequential([keras.layers.RepeatVector(28), keras.layers.LSTM(100, return_sequences=True),
                                keras.layers.Dense(28), keras.layers.Reshape([28, 28, 1])])
    return keras.Sequential([encoder, decoder])


def denoising_ae():
    encoder = keras.Sequential([keras.layers.Flatten(), keras.layers.Dropout(0.5),
                                keras.layers.Dense(100, activation="relu"), keras.layers.Dense(30, activation="relu")])
    decoder = keras.Sequential([keras.layers.Dense(100, activation="relu"), keras.layers.Dense(28 * 28),
                                keras.layers.Reshape([28, 28, 1])])
    return keras.Sequential([encoder, decoder])


def _sparse(coding_layers):
    encoder = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(100, activation="relu"), *coding_layers])
    decoder = keras.Sequential([keras.layers.Dense(100, activation="relu"), keras.layers.Dense(28 * 28),
                                keras.layers.Reshape([28, 28, 1])])
    return keras.Sequential([encoder, decoder])


def sparse_l1_ae():
    return _sparse([keras.layers.Dense(300, activation="sigmoid"), keras.layers.ActivityRegularization(l1=1e-4)])


def sparse_kl_ae():
    return _sparse([keras.layers.Dense(300, activation="sigmoid",
                                       activity_regularizer=KLDivergenceRegularizer(5e-3, 0.1))])


AUTOENCODERS = {"stacked_ae": stacked_ae, "tied_ae": tied_ae, "conv_ae": conv_ae, "recurrent_ae": recurrent_ae,
                "denoising_ae": denoising_ae, "sparse_l1_ae": sparse_l1_ae, "sparse_kl_ae": sparse_kl_ae}


def train_autoencoder(name, x_train, epochs, batch_size=32, verbose=2):
    """The notebook's recipe: MSE, Nadam, fit on the arrays themselves."""
    model = AUTOENCODERS[name]()
    model.compile(loss="mse", optimizer="nadam")
    model.fit(x_train, x_train, epochs=epochs, batch_size=batch_size, verbose=verbose)
    return model


def dcgan(codings_size=100):
    """The notebook's DCGAN: generator, discriminator, and the combined model compiled as it does."""
    generator = keras.Sequential([
        keras.layers.Dense(7 * 7 * 128, input_shape=[codings_size]), keras.layers.Reshape([7, 7, 128]),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2DTranspose(64, 5, strides=2, padding="same", activation="selu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2DTranspose(1, 5, strides=2, padding="same", activation="tanh")])
    discriminator = keras.Sequential([
        keras.layers.Conv2D(64, 5, strides=2, padding="same", activation=keras.layers.LeakyReLU(0.2),
                            input_shape=[28, 28, 1]),
        keras.layers.Dropout(0.4),
        keras.layers.Conv2D(128, 5, strides=2, padding="same", activation=keras.layers.LeakyReLU(0.2)),
        keras.layers.Dropout(0.4), keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    gan = keras.Sequential([generator, discriminator])
    discriminator.compile(loss="binary_crossentropy", optimizer="rmsprop")
    discriminator.trainable = False
    gan.compile(loss="binary_crossentropy", optimizer="rmsprop")
    return gan


def train_gan_steps(gan, dataset, batch_size, codings_size, steps):
    """The notebook's `train_gan` loop body, for `steps` batches of `dataset`."""
    generator, discriminator = gan.layers
    for x_batch in dataset.take(steps):
        # phase 1 - training the discriminator
        noise = tf.random.normal(shape=[batch_size, codings_size])
        generated_images = generator(noise)
        x_fake_and_real = tf.concat([generated_images, x_batch], axis=0)
        y1 = tf.constant([[0.]] * batch_size + [[1.]] * batch_size)
        discriminator.trainable = True
        discriminator.train_on_batch(x_fake_and_real, y1)
        # phase 2 - training the generator
        noise = tf.random.normal(shape=[batch_size, codings_size])
        y2 = tf.constant([[1.]] * batch_size)
        discriminator.trainable = False
        gan.train_on_batch(noise, y2)
