"""Scores of trained models, computed from what they export (their SavedModel signatures) and a metric network.

A family's description (trainers/family.py) lists the scorers that apply to it:
    score_reconstructions  test_mse, test_bce per pixel; anomaly_auroc when a class was held out of training; the
                           exported anomaly threshold's test_false_positive_rate (and anomaly_precision/_recall)
    score_elbo             test_neg_elbo (reconstruction + KL per example, one sampled coding): VAEs
    score_generation       fid, kid (x 1e3), precision, recall, mode_entropy, mode_kl (see below) of generated images
    score_classification   test_accuracy, per-class accuracy, confusion matrix

FID/KID here are *domain* scores: the features are the penultimate layer of a small CNN trained on the dataset's
own labels (the metric network), or, for a source without labels, of a self-supervised encoder trained on its
images (evaluation/self_supervised.py); not Inception's (which knows nothing of 28x28 digits), so the numbers
compare models on one dataset in one feature space, not across papers. Precision and recall (Kynkaanniemi et
al. 2019) say which a model lacks: fidelity (its samples look real) or coverage (it draws all the data's kinds).
Mode coverage (a labelled metric network only): the metric network's predicted-class histogram over the
generated images; its entropy (log K when every class is equally common) and its KL divergence to the real
train histogram (0 when the proportions match).
"""
# What the rest of latentforge imports from evaluation, in one place; each part lives in its own module:
# metrics (the scores on arrays), metric_network (the feature space), scorers (a SavedModel scored), blessing.
# pylint: disable=unused-import
from evaluation.blessing import Blessing, decide_blessing, finite_metrics  # noqa: F401
from evaluation.metric_network import (FEATURE_METHODS, METRIC_NETWORK_FEATURES, FeatureReference,  # noqa: F401
                                       MetricNetwork, MetricNetworkConfig, build_metric_network,
                                       export_metric_network, feature_scores, generative_scores)
from evaluation.metrics import (auroc, class_histogram, classification_scores, feature_statistics,  # noqa: F401
                                frechet_distance, kernel_inception_distance, mode_coverage, negative_elbo,
                                precision_recall, reconstruction_errors, to_unit)
from evaluation.scorers import (EvaluationOptions, ImageBatches, ScoringRun, anomaly_decision_scores,  # noqa: F401
                                conditional_scores, generate, requested_labels, score_classification,
                                score_conditional_generation, score_elbo, score_generation, score_model,
                                score_reconstructions)
