"""The latentforge command: bad input is one clear line and exit code 2, before any pipeline work."""
import os
import subprocess
import sys

import pytest

from pipelines import cli, run_request
from tests.conftest import SAMPLE_DIR


@pytest.mark.parametrize("argv, expected", [
    (["run", "--model", "gan9000"], "--model 'gan9000' is unknown"),
    (["run", "--source", "idx:/nonexistent/mnist"], "no such directory"),
    (["run", "--source", "mnist"], "not of the form KIND:LOCATION"),
    (["run", "--eval-percent", "80"], "--eval-percent 80"),
    (["run", "--schema", "/nonexistent/schema.pbtxt"], "no such file"),
    (["run", "--source", f"idx:{SAMPLE_DIR}", "--data-dir", "/tmp"], "TFDS options"),
    (["run", "--model", "vae", "--set", "beta=-2"], "beta=-2: must be >= 0"),
    (["run", "--model", "dcgan", "--set", "dropout_rate=0.3"], "dcgan has no setting(s) ['dropout_rate']"),
    (["run", "--model", "vae", "--anomaly-class", "3"], "--anomaly-class is for autoencoders"),
    (["run", "--anomaly-class", "10"], "--anomaly-class 10: idx:"),
    # --set reaches every field, those with a flag of their own too; a wrong type names the field and the type.
    (["run", "--model", "dcgan", "--set", "epochs=-1"], "epochs=-1: must be at least 1"),
    (["run", "--set", "batch_size=0"], "batch_size=0: must be at least 1"),
    (["run", "--set", "learning_rate=-1"], "learning_rate=-1: must be positive"),
    (["run", "--model", "vae", "--set", "beta=abc"], "vae: beta='abc' is not a number"),
    (["run", "--set", "hidden_units=[100,true]"], "hidden_units=True is not an integer"),
    (["run", "--set", "seed=x"], "seed='x' is not an integer"),
    (["run", "--epochs", "3", "--set", "epochs=4"], "--epochs 3 and --set epochs=4 disagree"),
    (["run", "--model", "ddpm", "--set", "ema_decay=1"], "ema_decay=1: must be in [0, 1)"),
    (["run", "--model", "dcgan", "--set", "ema_decay=-0.5"], "ema_decay=-0.5: must be in [0, 1)"),
    (["run", "--model", "ddpm", "--set", "prediction=x0"], "prediction='x0': must be one of ('epsilon', 'v')"),
    (["run", "--model", "ddpm", "--set", "loss_weighting=p2"], "loss_weighting='p2': must be one of"),
    (["run", "--set", "precision=fp8"], "precision='fp8': must be one of"),
    (["run", "--model", "dcgan", "--anomaly-fpr", "0.05"], "--anomaly-fpr sets an autoencoder's anomaly threshold"),
])
def test_bad_input_exits_2_with_a_named_problem(argv, expected, capsys, tmp_path):
    assert cli.main(argv + ["--run-dir", str(tmp_path)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_asking_for_gpus_on_a_cpu_only_ray_fails_before_any_pipeline_work(capsys, tmp_path):
    from backends import ray_cluster
    if ray_cluster.local_resources()["GPU"]:
        pytest.skip("this machine has GPUs")
    was_running = ray_cluster.local_ray_running()
    code = cli.main(["run", "--gpus-per-worker", "1", "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_CLUSTER
    assert "need 1 GPUs, but the Ray cluster (local Ray) has 0" in err and "drop --gpus-per-worker" in err
    assert not os.path.exists(tmp_path / "latentforge" / "tfx")  # nothing ran
    assert ray_cluster.local_ray_running() == was_running  # ... and no local Ray was started to find it out


@pytest.mark.parametrize("argv, expected", [
    (["submit", "--", "run"], "submit needs --address"),
    (["submit", "--address", "http://127.0.0.1:1"], "submit needs the command to run after --"),
    (["run", "--model", "classifier", "--pretrain", "dcgan"], "cannot pretrain the classifier's encoder with dcgan"),
])
def test_bad_ray_and_classifier_requests_exit_2(argv, expected, capsys):
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert expected in capsys.readouterr().err


def test_argparse_rejects_non_positive_epochs(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--epochs", "0"])
    assert exited.value.code == 2 and "not a positive integer" in capsys.readouterr().err


def test_set_takes_json_values_for_any_config_field():
    assert cli._setting("hidden_units=[150, 100]") == ("hidden_units", [150, 100])
    assert cli._setting("spectral_norm=true") == ("spectral_norm", True)
    assert cli._setting("schedule=linear") == ("schedule", "linear")
    with pytest.raises(SystemExit):
        cli.main(["run", "--set", "beta"])


def test_set_reaches_the_fields_that_have_flags_and_the_seed_follows_it():
    args = cli.build_parser().parse_args(["run", "--model", "dcgan", "--set", "epochs=2", "--set", "batch_size=7",
                                          "--set", "learning_rate=0.01", "--set", "seed=5", "--set", "beta_1=0.4"])
    request = run_request.checked_request(args)
    config, overrides = request.config, request.model_config
    assert (config.epochs, config.batch_size, config.learning_rate, config.seed, config.beta_1) == (2, 7, 0.01, 5, 0.4)
    assert args.seed == 5 and overrides["seed"] == 5  # the few-label choice and the Evaluator use it too
    args = cli.build_parser().parse_args(["run", "--epochs", "3", "--set", "epochs=3"])
    assert run_request.checked_request(args).config.epochs == 3  # the same value both ways is fine
    args = cli.build_parser().parse_args(["run"])
    assert run_request.checked_request(args).config.seed == 42 == args.seed  # the default seed


def test_inspect_describes_the_bundled_sample(capsys):
    assert cli.main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert "28x28x1" in out and "10: 0, 1, 2" in out and "train, test (eval will be carved from train)" in out


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "latentforge")
    result = subprocess.run([script, "models"], capture_output=True, text=True, timeout=120, check=True)
    assert "stacked_ae" in result.stdout


@pytest.mark.parametrize("argv, expected", [
    (["run", "--anomaly-fpr", "1.5"], "not strictly between 0 and 1"),
    (["run", "--beam-arg", "direct_num_workers=2"], "a Beam option starts with --"),
    (["run", "--beam-arg=--direct_workers=2"], "direct_workers is not an Apache Beam pipeline option"),
])
def test_flag_values_argparse_refuses_exit_2_naming_the_flag(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and expected in capsys.readouterr().err


def test_beam_args_reach_the_pipeline_that_runs_the_beam_components(tmp_path, monkeypatch):
    """--beam-arg goes to TFX's beam_pipeline_args, which the orchestrator hands to every Beam-based component
    (ExampleGen, StatisticsGen, Transform); without it, none: Beam's own default (the in-memory DirectRunner, one
    worker), and the Beam executors do not package TFX for remote workers (50 MB left in the temp directory and
    ~2 s, per component)."""
    from tfx.components.statistics_gen import executor as statistics_gen
    from tfx.dsl.components.base import base_beam_executor
    from tfx.utils import dependency_utils
    from components.image_example_gen import sources
    from pipelines import pipeline
    args = cli.build_parser().parse_args(["run", "--beam-arg=--direct_running_mode=multi_processing",
                                          "--beam-arg=--direct_num_workers=2"])
    assert args.beam_args == ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    info = sources.probe(sources.parse_source(f"idx:{SAMPLE_DIR}"))
    made = {flags: pipeline.training_pipeline(pipeline.PipelineTarget("p", str(tmp_path), None, str(tmp_path),
                                                                      beam_pipeline_args=list(flags) or None),
                                             info, "stacked_ae", {})
            for flags in (tuple(args.beam_args), ())}
    assert made[tuple(args.beam_args)].beam_pipeline_args == args.beam_args
    assert made[()].beam_pipeline_args == []

    packaged = []
    monkeypatch.setattr(dependency_utils, "build_ephemeral_package", lambda: packaged.append(1) or "tfx.tar.gz")
    for flags, packages in ((made[()].beam_pipeline_args, []), (made[tuple(args.beam_args)].beam_pipeline_args, [1])):
        statistics_gen.Executor(base_beam_executor.BaseBeamExecutor.Context(
            beam_pipeline_args=list(flags), tmp_dir=str(tmp_path)))
        assert packaged == packages


@pytest.mark.parametrize("argv", [["-v", "run"], ["run", "-v"], ["models", "-v"]])
def test_verbose_goes_before_or_after_the_command(argv):
    assert cli.build_parser().parse_args(argv).verbose is True
    assert cli.build_parser().parse_args(argv[:1] if argv[0] != "-v" else argv[1:]).verbose is False


def test_verbose_run_reaches_the_beam_components(tmp_path):
    """TFX's Beam executors parse sys.argv with absl's flags, whose -v is --verbosity: `latentforge -v run ...`
    failed in ImageExampleGen ("--verbosity=run: invalid literal for int()"). Here a real command line: the run
    gets through ExampleGen and StatisticsGen and stops, as it should, at validation (test labels unseen in
    training), exit code 3."""
    import numpy as np
    from tests.conftest import random_images
    x = random_images(200, (8, 8), seed=5)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(200) % 3, x_test=x[:20], y_test=np.arange(20) % 3 + 4)
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "-v", "run", "--source", f"npz:{tmp_path / 'd.npz'}",
                             "--run-dir", str(tmp_path / "runs"), "--epochs", "1", "--trainer", "in-process"],
                            capture_output=True, text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == cli.EXIT_DATA_INVALID, result.stderr[-3000:]
    assert "Out-of-range" in result.stderr and "verbosity" not in result.stderr


@pytest.mark.parametrize("flags, expected", [
    (["--model", "dcgan_cond"], "--model dcgan_cond is class-conditional"),
    (["--model", "ddpm_cond"], "so it needs a labelled source with at least 2 classes; npz:"),
    (["--model", "classifier"], "--model classifier learns to predict labels"),
    (["--model", "dcgan", "--labels-per-class", "10"], "--labels-per-class 10 keeps the labels of K examples"),
    (["--model", "ddpm", "--fid-features", "classifier"], "--fid-features classifier trains the feature network"),
    (["--model", "conv_ae", "--anomaly-class", "1"], "--anomaly-class needs labelled data"),
])
def test_an_unlabelled_source_refuses_what_needs_labels_before_any_work(flags, expected, capsys, tmp_path):
    import numpy as np
    np.savez(tmp_path / "faces.npz", x=np.zeros((20, 8, 8, 3), np.uint8))
    argv = ["run", "--source", f"npz:{tmp_path / 'faces.npz'}", *flags, "--run-dir", str(tmp_path / "runs")]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "latentforge" / "tfx").exists()


def test_ignore_labels_makes_a_labelled_source_unlabelled_for_the_whole_request(capsys):
    assert cli.main(["inspect", "--source", f"idx:{SAMPLE_DIR}", "--ignore-labels"]) == cli.EXIT_OK
    assert "classes      0: (labels ignored)" in capsys.readouterr().out
    assert cli.main(["run", "--source", f"idx:{SAMPLE_DIR}", "--ignore-labels", "--model", "cvae"]) == cli.EXIT_BAD_INPUT
    assert "is read without its labels (--ignore-labels)" in capsys.readouterr().err


@pytest.mark.parametrize("flag, expected", [
    ("inception:/nonexistent/classify_image_graph_def.pb", "no such file; download it with: curl -L"),
    ("inception:{tmp}/README", "not a TensorFlow GraphDef"),
    ("inceptionv3", "expected auto, classifier, self-supervised or inception:PATH"),
])
def test_fid_features_pointing_at_a_missing_or_wrong_file_exits_2_naming_the_flag(flag, expected, capsys, tmp_path):
    (tmp_path / "README").write_bytes(b"\x00\xffnot protobuf\x12\x99")
    argv = ["run", "--model", "dcgan", "--fid-features", flag.format(tmp=tmp_path), "--run-dir", str(tmp_path)]
    try:
        code = cli.main(argv)
    except SystemExit as exited:  # argparse's own refusal of the flag's form
        code = exited.code
    assert code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert expected in err and "--fid-features" in err and "Traceback" not in err


def test_a_64_pixel_source_gets_sized_networks_in_the_request_and_set_wins(tmp_path):
    import numpy as np
    np.savez(tmp_path / "faces.npz", x=np.zeros((20, 64, 64, 3), np.uint8))
    parse = lambda *flags: cli.build_parser().parse_args(["run", "--source", f"npz:{tmp_path / 'faces.npz'}", *flags])
    request = run_request.checked_request(parse("--model", "dcgan"))
    assert request.sized == {"conv_filters": (64, 128, 256)} and request.model_config["conv_filters"] == [64, 128, 256]
    assert request.config.conv_filters == (64, 128, 256)  # what the run trains and records (MLflow's params)
    request = run_request.checked_request(parse("--model", "dcgan", "--set", "conv_filters=[32,64]"))
    assert request.sized == {} and request.config.conv_filters == (32, 64)
