"""Two pipelines, one champion: models evaluated against the same (old) champion register into one MLflow model;
@champion ends on the better one whichever registers last (the registrar re-reads it under a lock)."""
import threading

import numpy as np
import pytest

from backends import tracking
from components.registrar.executor import _still_beats
from trainers import export
from tests.test_export import SHAPE, build

pytestmark = pytest.mark.slow  # MLflow logs four SavedModels


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("model") / "ae")
    entry, model = build("stacked_ae")
    export.export_model(entry.family, model, SHAPE, directory, entry.pixel_range)
    return directory


def _register(config, name, saved_model, test_mse):
    """One pipeline's registrar: its Evaluator found no champion and blessed its model (test_mse lower is better)."""
    blessing = {"blessed": True, "metric": "test_mse", "higher_is_better": False, "candidate": test_mse,
                "champion": None, "champion_version": None, "margin": 0.01, "reason": "no champion yet"}
    metrics = {"test_mse": test_mse}
    return tracking.log_pipeline_run(
        config, pipeline="p", pipeline_run_id=f"run-{test_mse}", registered_name=name, saved_model_dir=saved_model,
        input_example=np.zeros((1, *SHAPE), np.float32), blessed=True, key_metric="test_mse",
        key_metric_value=test_mse, trainer=tracking.ChildRun("Trainer"),
        evaluator=tracking.ChildRun("Evaluator", metrics=metrics), version_tags={}, parent_tags={},
        still_beats=lambda champion: _still_beats(blessing, metrics, champion))


def test_the_better_model_keeps_the_champion_whichever_registers_last(saved_model, tmp_path):
    config = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="race",
                                     artifact_location=f"file://{tmp_path}/artifacts")
    # One after the other: the worse model, blessed against no champion, registers last and leaves @champion.
    better = _register(config, "sequential", saved_model, 0.02)
    worse = _register(config, "sequential", saved_model, 0.05)
    assert better.champion and not worse.champion
    assert tracking.registry_version(config, "sequential") == better.version
    # At the same time, from two threads (two pipelines on one machine share the store's lock).
    outcomes, start = {}, threading.Barrier(2)

    def register(test_mse):
        start.wait()
        outcomes[test_mse] = _register(config, "concurrent", saved_model, test_mse)

    threads = [threading.Thread(target=register, args=(mse,)) for mse in (0.05, 0.02)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert tracking.registry_version(config, "concurrent") == outcomes[0.02].version
    assert outcomes[0.02].champion
