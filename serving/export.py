"""SavedModel export with named signatures a TF Serving user calls.

Autoencoders: reconstruct (serving_default), encode, decode, anomaly_score. Images go in as float32
(B, H, W, C) in the model's pixel range.
"""
import tensorflow as tf


def export_autoencoder(model, image_shape, coding_size: int, export_dir: str) -> None:
    images = tf.TensorSpec([None, *image_shape], tf.float32, name="images")
    codings = tf.TensorSpec([None, coding_size], tf.float32, name="codings")

    @tf.function(input_signature=[images])
    def reconstruct(x):
        return {"reconstructions": model(x, training=False)}

    @tf.function(input_signature=[images])
    def encode(x):
        return {"codings": model.encoder(x, training=False)}

    @tf.function(input_signature=[codings])
    def decode(z):
        return {"images": model.decoder(z, training=False)}

    @tf.function(input_signature=[images])
    def anomaly_score(x):
        return {"scores": model.anomaly_score(x)}

    tf.saved_model.save(model, export_dir, signatures={
        "serving_default": reconstruct, "reconstruct": reconstruct, "encode": encode, "decode": decode,
        "anomaly_score": anomaly_score})
