"""`latentforge run --tune`: a RayTuner searches the model's config on Ray Tune (trials are Ray Train runs, ASHA
stops poor ones) before the Trainer, which trains with the best values; the search is recorded, drawn and logged
to MLflow. A bad space stops the run before any work."""
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from pipelines import cli
from tests.conftest import REPO_ROOT, sample_digits, write_feature_network


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
    assert cli.main(["run", "--model", "classifier", "--labels-per-class", "5,10", "--tune", "default",
                     "--run-dir", str(tmp_path / "runs")]) == cli.EXIT_BAD_INPUT
    assert "--tune tunes one model's Trainer: not a label-efficiency curve" in capsys.readouterr().err


@pytest.mark.slow
def test_a_search_picks_values_the_trainer_then_trains_with(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {loguniform: [1.0e-4, 3.0e-2]}\nbatch_size: {choice: [16, 64]}\n")
    run_dir = tmp_path / "runs"
    killed = []

    def kill_a_trial_worker():  # the first Ray Train worker of this search's own Ray (its descendants), once
        deadline = time.time() + 600
        while not killed and time.time() < deadline and search.poll() is None:
            try:
                found = [p for p in psutil.Process(search.pid).children(recursive=True)
                         if "RayTrainWorker" in " ".join(p.cmdline())]
            except psutil.Error:  # a process that ended while being looked at
                found = []
            if found:
                time.sleep(3)  # into its first epoch
                os.kill(found[0].pid, signal.SIGKILL)
                killed.append(found[0].pid)
            time.sleep(0.5)

    search = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--model", "stacked_ae", "--epochs", "2", "--tune", str(space),
         "--tune-trials", "3", "--cpus-per-worker", "1", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    killer = threading.Thread(target=kill_a_trial_worker, daemon=True)
    killer.start()
    stdout, stderr = search.communicate(timeout=900)
    result = subprocess.CompletedProcess(search.args, search.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert killed, "no Ray Train worker of the search was seen to kill"
    assert "latentforge: tune trial 3/3" in result.stdout
    root = run_dir / "latentforge"
    record = json.loads(open(glob.glob(str(root / "tfx" / "RayTuner" / "tuner_results" / "*" / "search.json"))[0]).read())
    trials = record["trials"]
    # The trial whose worker was killed is retried (Tune's FailureConfig) or reported failed, never dropped.
    assert len(trials) == 3 and record["metric"] == "val_loss" and record["mode"] == "min"
    for trial in trials:
        assert 1e-4 <= trial["config"]["learning_rate"] <= 3e-2 and trial["config"]["batch_size"] in (16, 64)
        if trial["status"] == "failed":
            assert trial["error"] and not trial["curve"]
            continue
        assert trial["status"] in ("finished", "stopped") and 1 <= len(trial["curve"]) <= 2
        assert trial["best"] == min(trial["curve"])
    # Two single-CPU trials at a time on this 2-CPU Ray (the search's concurrency), never all three at once.
    spans = [(t["started"], t["ended"]) for t in trials if t["started"] is not None]
    assert len(spans) >= 2 and max(sum(s <= start + 1 < e for s, e in spans) for start, _ in spans) <= 2, spans
    # The best trial is the one with the lowest validation loss, and what ASHA saved adds up from the trials.
    best = min((t for t in trials if t["best"] is not None), key=lambda t: t["best"])
    assert record["best_trial"] == best["trial_id"] and record["best_config"] == best["config"]
    assert record["epochs_saved"] == sum(2 - len(t["curve"]) for t in trials if t["status"] == "stopped")
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
    assert all(len(client.get_metric_history(c.info.run_id, "val_loss")) >= 1 for c in children
               if c.data.tags["status"] != "failed")
    # The registered version says it was tuned: the values, the trial and the metric it won by.
    version, = client.search_model_versions()
    assert json.loads(version.tags["tuned.values"]) == best["config"]
    assert version.tags["tuned.trial"] == best["trial_id"] and version.tags["tuned.metric"] == "val_loss"


def test_a_generative_search_s_winner_is_the_finalist_with_the_best_full_score(tmp_path, monkeypatch):
    """The proxy (KID of a few hundred samples) stops trials; the finalists that trained every epoch are scored in
    full (FID of 2,000 samples from each one's kept checkpoint) and the lowest FID wins, whatever the proxy said."""
    import numpy as np
    import tensorflow as tf
    from components.trainer import ray_train
    from components.tuner import executor, ray_tune
    from trainers import job as training

    monkeypatch.setattr(executor, "FINAL_SAMPLES", 500)  # the rule, not the figure (2,000 in a search)
    features = write_feature_network(str(tmp_path / "features"))
    job = training.TrainingJob("dcgan", {"coding_size": 16, "batch_size": 32, "epochs": 3, "seed": 0}, (28, 28, 1),
                               (), (), {}, feature_network=f"{features}/saved_model", feature_reference=features)
    model = training.build_model(job, job.make_config())
    data = tf.data.Dataset.from_tensor_slices(sample_digits(512) * 2 - 1).batch(32)
    job.family.fit(model, job.make_config(), data, None, [], 0)
    runs = tmp_path / "ray"

    def kept(trial_id):  # what a trial's Ray Train run leaves: its checkpoints (Tune ends it before any marker)
        for epoch, proxy in ((1, [9.0]), (2, [9.0, 5.0]), (3, [9.0, 5.0, 7.0])):
            directory = runs / ray_tune.trial_run_name("search", trial_id) / f"checkpoint_00000{epoch}"
            training.save_state(model, str(directory), job, epoch, {"proxy_kid_x1e3": proxy})
        assert ray_train.kept_checkpoint(str(runs), ray_tune.trial_run_name("search", trial_id)).endswith(
            "checkpoint_000002")  # the best epoch by the proxy

    kept("trained")
    model.set_weights([w * 3.0 + 0.5 if w.ndim > 1 else w for w in model.get_weights()])
    kept("ruined")
    trials = [ray_tune.TrialRecord("ruined", {"learning_rate": 1e-3}, "finished", [5.0, 1.0], [1, 1], 1.0),
              ray_tune.TrialRecord("trained", {"learning_rate": 2e-4}, "finished", [6.0, 2.0], [1, 1], 2.0),
              ray_tune.TrialRecord("stopped", {"learning_rate": 5e-5}, "stopped", [9.0], [1], 9.0)]
    outcome = ray_tune.SearchOutcome("proxy_kid_x1e3", "min", 2, trials, trials[0], 10.0, "proxy_kid_x1e3")
    executor._rank_finalists(job, outcome, str(runs), "search")
    ruined, trained, stopped = trials
    assert ruined.final["samples"] == trained.final["samples"] == executor.FINAL_SAMPLES
    assert trained.final["fid"] < ruined.final["fid"] and np.isfinite(trained.final["fid"])
    assert outcome.best is trained and outcome.ranked_by.startswith("fid of 500 samples")
    assert stopped.final == {}  # it did not train every epoch: not a finalist
