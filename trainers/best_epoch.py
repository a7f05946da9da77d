"""Keep the best epoch, not the last: FID swings from checkpoint to checkpoint in GAN and diffusion training, so a
cheap proxy of sample quality is measured at the end of every epoch and the best epoch's weights are what gets
exported.

The proxy is KID (x 1e3) of a few hundred samples against the feature network's reference of the train split
(the Evaluator's FID/KID space: evaluation.scoring's metric network, labelled or self-supervised), drawn from the
family's own generating signature on fixed seeds (the same noise every epoch, so epochs differ only by the
weights). KID rather than FID: it is unbiased at a few hundred samples, where FID's bias swamps the differences.

    callback = SampleQualityProxy(family, image_shape, pixel_range, feature_network, reference)
    model.fit(..., callbacks=[callback, ...])   # before the callbacks that read the epoch's logs
    callback.restore_best(model)                # in process; on Ray, the best checkpoint is restored instead

Every epoch's value lands in the logs (PROXY_METRIC: the history, MLflow's curves, the checkpoint's score on Ray)
with the seconds it took (PROXY_SECONDS). Under a multi-worker strategy every worker computes it: the samples are
seeded alike, so the values agree, and no worker waits on another's collective. Create it outside the strategy's
scope (it loads the feature network, whose variables must not become mirrored ones).
"""
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tf_keras as keras

from evaluation import scoring

PROXY_METRIC = "proxy_kid_x1e3"
PROXY_SECONDS = "proxy_seconds"
DEFAULT_SAMPLES = 400
# An iterative sampler draws the proxy's samples in this share of its export's steps (at least MIN_PROXY_STEPS):
# at the export's 40 DDIM steps a 64x64 DDPM's proxy took 17 % of an epoch of 20,000 images; the proxy ranks one
# run's epochs, and the DDIM step count moves every epoch's samples alike (full MNIST, one DDPM: FID 36.5 at 40
# steps, 37.5 at 20).
PROXY_STEP_SHARE = 0.5
MIN_PROXY_STEPS = 10


def proxy_steps(export_steps: int) -> int:
    return max(min(MIN_PROXY_STEPS, export_steps), int(round(export_steps * PROXY_STEP_SHARE)))


class SampleQualityProxy(keras.callbacks.Callback):
    """Each epoch: PROXY_METRIC of `samples` generated images; the lowest epoch's weights are kept (in memory)."""

    def __init__(self, family, image_shape: Sequence[int], pixel_range: str, feature_network: str,
                 reference_dir: str, samples: int = DEFAULT_SAMPLES, seed: int = 0, batch_size: int = 200):
        super().__init__()
        self.family, self.image_shape, self.pixel_range = family, tuple(image_shape), pixel_range
        self.network = scoring.MetricNetwork(feature_network)
        self.reference = scoring.FeatureReference.load(reference_dir)
        self.samples, self.seed, self.batch_size = samples, seed, batch_size
        self.best_epoch: Optional[int] = None  # 1-based
        self.best_value = float("inf")
        self.best_weights: Optional[List[np.ndarray]] = None
        self.values: Dict[int, float] = {}
        self._signature, self._inputs = None, {}

    def _draw(self, full_steps: bool = False) -> np.ndarray:
        if self._signature is None:
            # The export's own generating signature and default inputs (a DDPM's steps, a conditional model's
            # labels, StyleGAN's truncation), traced once over the live weights.
            signatures = self.family.signatures(self.model, self.image_shape, self.pixel_range)
            self._signature = signatures[self.family.generate_signature].get_concrete_function()
            takes = {spec.name for spec in self._signature.structured_input_signature[0]}
            defaults = self.family.export_metadata(self.model).get("generate_defaults", {})
            self._inputs = {k: v for k, v in defaults.items() if k in takes}
        inputs = dict(self._inputs)
        if "steps" in inputs and not full_steps:  # an iterative sampler (DDPM): see PROXY_STEP_SHARE
            inputs["steps"] = proxy_steps(int(inputs["steps"]))
        return np.asarray(scoring.generate(self._signature, self.samples, self.seed, self.batch_size, inputs),
                          np.float32)

    def full_scores(self) -> Dict[str, float]:
        """The Evaluator's generative scores (FID, KID, precision/recall, mode coverage) of `samples` images drawn
        as the export draws them (every sampler step): what a search's finalists are ranked by."""
        return scoring.feature_scores(*self.network(self._draw(full_steps=True)), self.reference, self.seed)

    def measure(self) -> float:
        features, _ = self.network(self._draw())
        kid, _ = scoring.kernel_inception_distance(features, self.reference.sample, subsets=4,
                                                   subset_size=len(features), seed=self.seed)
        return kid * 1e3

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        started = time.perf_counter()
        value = self.measure()
        self.values[epoch + 1] = value
        if logs is not None:  # the same dict the later callbacks (Ray's report, the history) receive
            logs[PROXY_METRIC] = value
            logs[PROXY_SECONDS] = time.perf_counter() - started
        if np.isfinite(value) and value < self.best_value:
            self.best_epoch, self.best_value = epoch + 1, value
            self.best_weights = [np.array(w) for w in self.model.get_weights()]

    def restore_best(self, model) -> Optional[int]:
        """Puts the best epoch's weights back into `model`; the epoch (None when no epoch was measured)."""
        if self.best_weights is not None:
            model.set_weights(self.best_weights)
        return self.best_epoch


def kept_epoch_details(history: Dict[str, List[float]], kept_epoch: Optional[int]) -> Dict[str, Any]:
    """What metrics.json (and MLflow) say about the epoch whose weights were exported."""
    values = history.get(PROXY_METRIC, [])
    if kept_epoch is None or not values:
        return {}
    seconds = sum(history.get(PROXY_SECONDS, []))
    return {"kept_epoch": int(kept_epoch), "kept_by": PROXY_METRIC,
            "kept_proxy_kid_x1e3": float(values[kept_epoch - 1]), "last_proxy_kid_x1e3": float(values[-1]),
            "proxy_seconds_total": float(seconds)}
