"""`latentforge run --tune`: a RayTuner searches the model's config on Ray Tune (trials are Ray Train runs, ASHA
stops poor ones) before the Trainer, which trains with the best values; the search is recorded, drawn and logged
to MLflow. A bad space stops the run before any work."""
import glob
import json
import subprocess
import sys

import pytest

from pipelines import cli
from tests.conftest import REPO_ROOT


def test_a_bad_space_stops_the_run_before_any_work(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {loguniform: [1e-4, 1e-3]}\nbeta: {uniform: [0.5, 2]}\n")
    code = cli.main(["run", "--model", "stacked_ae", "--tune", str(space), "--run-dir", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_BAD_INPUT
    assert f"{space}, line 2: stacked_ae has no setting 'beta'" in err
    assert "ImageExampleGen" not in out and not (tmp_path / "runs" / "latentforge" / "tfx").exists()
    assert cli.main(["run", "--model", "stacked_ae", "--tune", "default", "--trainer", "in-process",
                     "--run-dir", str(tmp_path / "runs")]) == cli.EXIT_BAD_INPUT
    assert "--tune runs its trials on Ray Train" in capsys.readouterr().err


@pytest.mark.slow
def test_a_search_picks_values_the_trainer_then_trains_with(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {loguniform: [1.0e-4, 3.0e-2]}\nbatch_size: {choice: [16, 64]}\n")
    run_dir = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--model", "stacked_ae", "--epochs", "2", "--tune", str(space),
         "--tune-trials", "3", "--cpus-per-worker", "1", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "latentforge: tune trial 3/3" in result.stdout
    root = run_dir / "latentforge"
    search = json.loads(open(glob.glob(str(root / "tfx" / "RayTuner" / "tuner_results" / "*" / "search.json"))[0]).read())
    trials = search["trials"]
    assert len(trials) == 3 and search["metric"] == "val_loss" and search["mode"] == "min"
    for trial in trials:
        assert 1e-4 <= trial["config"]["learning_rate"] <= 3e-2 and trial["config"]["batch_size"] in (16, 64)
        assert trial["status"] in ("finished", "stopped") and 1 <= len(trial["curve"]) <= 2
        assert trial["best"] == min(trial["curve"])
    # The best trial is the one with the lowest validation loss, and what ASHA saved adds up from the trials.
    best = min(trials, key=lambda t: t["best"])
    assert search["best_trial"] == best["trial_id"] and search["best_config"] == best["config"]
    assert search["epochs_saved"] == sum(2 - len(t["curve"]) for t in trials if t["status"] == "stopped")
    assert glob.glob(str(root / "tfx" / "RayTuner" / "tuner_results" / "*" / "search.png"))
    # TFX's Tuner -> Trainer wiring: the Trainer trained with the best values.
    hyperparameters = json.loads(open(glob.glob(str(
        root / "tfx" / "RayTuner" / "best_hyperparameters" / "*" / "best_hyperparameters.txt"))[0]).read())
    assert hyperparameters["values"] == best["config"]
    metrics = json.loads(open(glob.glob(str(root / "tfx" / "Trainer" / "model_run" / "*" / "metrics.json"))[0]).read())
    assert {k: metrics["config"][k] for k in best["config"]} == best["config"]
    # MLflow: the search's run under the pipeline run, a child per trial, the best tagged.
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("latentforge")
    tuner_run, = client.search_runs([experiment.experiment_id], "attributes.run_name = 'RayTuner'")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{tuner_run.info.run_id}'")
    assert len(children) == 3 and [c.data.tags["best"] for c in children].count("true") == 1
    assert all(len(client.get_metric_history(c.info.run_id, "val_loss")) >= 1 for c in children)
