"""Scoring trained models: metrics, FID/KID and mode coverage from a metric network, blessing, and the pictures.

    scoring   scores of a SavedModel (through its signatures), the metric network, the blessing decision
    figures   the PNGs a person looks at: reconstructions, samples, curves, codings, confusion matrices

TensorFlow, NumPy, SciPy and matplotlib only: no TFX, Ray or MLflow (components/evaluation wraps this for TFX).
"""
