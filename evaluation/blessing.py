"""Blessing: whether a candidate's key metric beats the champion's by the margin, with the reason in words."""
import dataclasses
import json
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np



@dataclasses.dataclass(frozen=True)
class Blessing:
    blessed: bool
    metric: str
    higher_is_better: bool
    candidate: Optional[float]
    champion: Optional[float]  # None: no champion to beat
    champion_version: Optional[str]
    margin: float
    reason: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def finite_metrics(metrics: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """(metrics without the values that could not be computed, their names): a NaN or infinite scalar is dropped,
    a NaN or infinite entry of a list (a class with too few images for its FID) becomes None. Nothing non-finite
    goes on to ML Metadata, MLflow or the blessing."""
    def clean(value):
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    kept, dropped = {}, []
    for name, value in metrics.items():
        if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
            dropped.append(name)
        else:
            kept[name] = clean(value)
    return kept, dropped


def decide_blessing(key_metric: Tuple[str, bool], metrics: Dict[str, Any],
                    champion: Optional[Tuple[str, Dict[str, float]]], margin: float,
                    unmeasured_because: str = "") -> Blessing:
    """Blessed when the key metric (name, True when higher is better: the family's) beats the champion's by
    `margin` (relative: 0.01 = 1 % better), or when there is no champion. `champion`: (version, its metrics) or
    None.

    A key metric that could not be measured (absent or non-finite; `unmeasured_because` says why) is no evidence
    either way: such a model is blessed only when there is no champion (the first model of its name, so nothing
    is replaced and the pipeline still pushes and registers it), never in place of a champion."""
    metric, higher = key_metric
    candidate = metrics.get(metric)
    if candidate is not None and not math.isfinite(candidate):
        candidate, unmeasured_because = None, unmeasured_because or f"it came out {candidate}"
    common = dict(metric=metric, higher_is_better=higher, candidate=candidate, margin=margin)
    if candidate is None:
        why = f"{metric} could not be measured" + (f" ({unmeasured_because})" if unmeasured_because else "")
        if champion is None:
            return Blessing(True, champion=None, champion_version=None,
                            reason=f"{why}; no champion yet, so blessed unscored (nothing is replaced)", **common)
        return Blessing(False, champion=None, champion_version=champion[0],
                        reason=f"{why}; not blessed: an unscored model never replaces champion version "
                               f"{champion[0]}", **common)
    if champion is None:
        return Blessing(True, champion=None, champion_version=None,
                        reason=f"no champion yet: blessed with {metric} {candidate:.6g}", **common)
    version, champion_metrics = champion
    best = champion_metrics.get(metric)
    if best is None:
        return Blessing(True, champion=None, champion_version=version,
                        reason=f"champion version {version} has no {metric}: blessed", **common)
    needed = best * (1 + margin) if higher else best * (1 - margin)
    better = candidate > needed if higher else candidate < needed
    relation = ("above" if higher else "below")
    reason = (f"{metric} {candidate:.6g} vs champion version {version}'s {best:.6g}: "
              f"{'beats' if better else 'does not beat'} it by the margin {margin:g} (needs {relation} {needed:.6g})")
    return Blessing(better, champion=best, champion_version=version, reason=reason, **common)
