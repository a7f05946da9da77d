"""The `latentforge` command.

    latentforge run [--source SOURCE] [--model MODEL] [--epochs N] ...   run the pipeline (training on Ray)
    latentforge compile --target kubeflow-v2 --pipeline-root gs://B/R ...   write it as a Kubeflow Pipelines v2 spec
    latentforge submit --address http://HEAD:8265 -- run ...           run it as a job on a Ray cluster
    latentforge gc --keep N                                            delete old runs nothing needs any more
    latentforge serve --model NAME[@ALIAS|/VERSION] | --saved-model DIR  serve models over HTTP on Ray Serve
    latentforge predict --model NAME (--input FILE | --generate N)      call a running server
    latentforge models                                                 list the models --model takes
    latentforge inspect [--source SOURCE]                              probe a source: splits, shape, classes

Exit codes: 0 ok; 2 bad input (flags, source, model config); 3 data validation failed; 4 training diverged;
5 infrastructure: the Ray cluster cannot run it (unreachable, or lacks the resources asked for) or the MLflow
server does not answer; 6 another run holds the same run directory and pipeline (nothing was done: try later);
1 anything else.
"""
import argparse
import logging
import os
import sys
import time
from typing import List, Optional

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_DATA_INVALID, EXIT_DIVERGED, EXIT_CLUSTER, EXIT_BUSY = 0, 1, 2, 3, 4, 5, 6
DEFAULT_SEED = 42
DEFAULT_SOURCE = "idx:" + os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                       "data", "mnist-sample")


class CliError(Exception):
    """A problem with what the user asked for; printed without a stack trace."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _setting(text: str):
    """FIELD=VALUE -> (field, value); VALUE parsed as JSON when it is JSON (numbers, lists, true), else a string."""
    import json  # pylint: disable=import-outside-toplevel
    field, sep, value = text.partition("=")
    if not sep or not field.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE, e.g. beta=4")
    try:
        return field.strip(), json.loads(value)
    except ValueError:
        return field.strip(), value


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help="tfds:NAME | idx:DIR | folder:DIR | npz:FILE (default: the bundled MNIST sample)")
    parser.add_argument("--data-dir", help="TFDS data directory (tfds: sources)")
    parser.add_argument("--manual-dir", help="folder with a TFDS dataset's downloaded files, for offline use")


def _add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """What the pipeline is made of: shared by `run` and `compile`."""
    _add_source_flags(parser)
    parser.add_argument("--model", default="stacked_ae", help="model to train (see `latentforge models`)")
    parser.add_argument("--epochs", type=_positive_int, help="training epochs (default: the model's)")
    parser.add_argument("--batch-size", type=_positive_int, help="global batch size (default: the model's)")
    parser.add_argument("--learning-rate", type=float, help="optimizer learning rate (default: the model's)")
    parser.add_argument("--seed", type=int, help=f"seed for training and the few-label choice (default {DEFAULT_SEED})")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                     type=_setting, help="any field of the model's config (repeatable; VALUE is JSON or a word), "
                     "e.g. --set beta=4 --set hidden_units=[150,100]")
    parser.add_argument("--pretrain", default="stacked_ae", metavar="MODEL",
                     help="--model classifier: the autoencoder or VAE whose encoder it fine-tunes (default stacked_ae)")
    parser.add_argument("--pretrain-epochs", type=_positive_int, help="--model classifier: epochs of the pretraining")
    parser.add_argument("--labels-per-class", type=_positive_int,
                     help="keep labels for only K examples per class (default: all)")
    parser.add_argument("--eval-percent", type=int, default=10,
                     help="share of train carved into eval when the source has no eval split (default 10)")
    parser.add_argument("--schema", help="a schema.pbtxt to validate against instead of the inferred one")
    parser.add_argument("--pipeline-name", default="latentforge", help="pipeline name (cache and metadata scope)")
    parser.add_argument("--no-cache", action="store_true", help="re-run every component, ignoring the TFX cache")
    scoring = parser.add_argument_group("evaluation and MLflow")
    scoring.add_argument("--mlflow-uri", help="MLflow tracking/registry server or store (default: MLFLOW_TRACKING_URI, "
                         "else a SQLite store under the run directory)")
    scoring.add_argument("--bless-margin", type=_non_negative_float, default=0.01,
                         help="relative improvement over the champion's key metric a model needs to be blessed "
                         "(default 0.01: 1 %% better)")
    scoring.add_argument("--eval-samples", type=_positive_int, default=1000,
                         help="generated images scored by FID, KID and mode coverage (default 1000)")
    scoring.add_argument("--anomaly-class", type=int,
                         help="autoencoders: keep this class out of training and report the AUROC of detecting it")
    scoring.add_argument("--metric-network-epochs", type=_positive_int, default=3,
                         help="epochs of the metric network (trained once per dataset; default 3)")
    ray = parser.add_argument_group("training on Ray Train")
    ray.add_argument("--trainer", choices=("ray", "in-process"), default="ray",
                     help="ray (default): Ray Train workers; in-process: TFX's own Trainer in this process")
    ray.add_argument("--workers", type=_positive_int, default=1, help="Ray Train workers (default 1)")
    ray.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    ray.add_argument("--cpus-per-worker", type=float,
                     help="CPUs per worker (default: a local Ray's cores shared among the workers; 1 on a cluster)")
    ray.add_argument("--gpus-per-worker", type=_non_negative_float, default=0.0,
                     help="GPUs per worker (default 0: CPU training)")
    ray.add_argument("--max-failures", type=int, default=1,
                     help="times a failed worker group restarts from its last checkpoint (default 1; -1: forever)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentforge", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show TFX/Beam logs")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline: ingest, validate, transform, train, push")
    _add_pipeline_flags(run)
    run.add_argument("--run-dir", default="runs", help="where runs write everything (default ./runs)")
    run.add_argument("--if-busy", choices=("exit", "wait"), default="exit",
                     help="when another run holds this run directory + pipeline: exit at once with code 6 "
                     "(default) or wait for it")
    run.add_argument("--lock-timeout", type=_non_negative_float, metavar="SECONDS",
                     help="--if-busy wait: give up (exit code 6) after this long (default: wait as long as it takes)")

    compile_ = commands.add_parser("compile", help="compile the pipeline for an orchestrator (Kubeflow Pipelines v2 "
                                   "/ Vertex AI Pipelines) instead of running it")
    _add_pipeline_flags(compile_)
    compile_.add_argument("--target", choices=("kubeflow-v2",), default="kubeflow-v2")
    compile_.add_argument("--out", default="pipeline.json", help="the pipeline spec to write (default pipeline.json)")
    compile_.add_argument("--image", default="latentforge:latest",
                          help="the container image every step runs in: this project installed with its lock")
    compile_.add_argument("--pipeline-root", required=True,
                          help="where the steps write their artifacts, seen by every step (e.g. gs://BUCKET/latentforge)")
    compile_.add_argument("--serving-dir", help="where the Pusher writes blessed SavedModels (default "
                          "PIPELINE_ROOT/serving)")

    submit = commands.add_parser("submit", help="submit a command (e.g. run ...) as a job to a Ray cluster",
                                 usage="latentforge submit --address http://HEAD:8265 [--wait|--no-wait] -- run [FLAGS]")
    submit.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                        help="the Ray Jobs API, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)")
    submit.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="--wait (default): follow the job's logs to its end and exit with its exit code; "
                        "--no-wait: print the job id and its status and return (for schedulers)")
    submit.add_argument("--python", default="python", help="the cluster's Python for the job (default: python)")
    submit.add_argument("--submission-id", help="the job's id (default: one Ray chooses)")
    submit.add_argument("job_args", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the latentforge command the job runs, e.g. -- run --model vae --epochs 5")

    gc = commands.add_parser("gc", help="delete old pipeline runs' artifacts that no kept run and no registered "
                             "model version needs")
    gc.add_argument("--keep", type=_positive_int, required=True, help="keep the newest N pipeline runs")
    gc.add_argument("--run-dir", default="runs")
    gc.add_argument("--pipeline-name", default="latentforge")
    gc.add_argument("--mlflow-uri", help="the registry (default: MLFLOW_TRACKING_URI, else the embedded store)")
    gc.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    gc.add_argument("--if-busy", choices=("exit", "wait"), default="exit",
                    help="when a run holds the run directory: exit with code 6 (default) or wait")
    _add_serve_parser(commands)
    _add_predict_parser(commands)
    commands.add_parser("models", help="list the models --model takes")
    inspect = commands.add_parser("inspect", help="probe a source: its splits, image shape and classes")
    _add_source_flags(inspect)
    return parser


def _add_serve_parser(commands) -> None:
    serve = commands.add_parser("serve", help="serve models over HTTP (TF Serving's REST API) on Ray Serve",
                                description="Serves registered models (following their alias: a new @champion is "
                                "picked up without dropping requests) or SavedModel directories until Ctrl-C.")
    serve.add_argument("--model", dest="models", action="append", default=[], metavar="NAME[@ALIAS|/VERSION]",
                       help="a registered MLflow model (repeatable); NAME alone follows @champion")
    serve.add_argument("--saved-model", dest="saved_models", action="append", default=[], metavar="[NAME=]DIR",
                       help="a SavedModel, or a folder of numbered versions as the Pusher writes them "
                       "(RUN_DIR/PIPELINE/serving/MODEL: the highest is served and followed); repeatable")
    serve.add_argument("--mlflow-uri", help="the registry (default: MLFLOW_TRACKING_URI, else the embedded store "
                       "of --run-dir/--pipeline-name)")
    serve.add_argument("--run-dir", default="runs", help="where `latentforge run` wrote (embedded registry)")
    serve.add_argument("--pipeline-name", default="latentforge")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--ray-address", help="deploy on this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    serve.add_argument("--detach", action="store_true",
                       help="return once deployed (with --ray-address: the server stays on the cluster)")
    scaling = serve.add_argument_group("replicas and batching (passed to Ray Serve)")
    scaling.add_argument("--replicas", type=_positive_int, default=1, help="replicas (autoscaling: the minimum)")
    scaling.add_argument("--max-replicas", type=_positive_int, help="autoscale between --replicas and this")
    scaling.add_argument("--target-ongoing-requests", type=float, default=4.0,
                         help="autoscaling: requests in flight per replica it aims at (default 4)")
    scaling.add_argument("--cpus-per-replica", type=float, default=1.0)
    scaling.add_argument("--max-batch-size", type=_positive_int, default=16,
                         help="requests stacked into one TensorFlow call (default 16; 1: no batching)")
    scaling.add_argument("--batch-wait-ms", type=_non_negative_float, default=5.0,
                         help="how long a batch waits to fill (default 5 ms)")
    scaling.add_argument("--poll-interval", type=_non_negative_float, default=30.0,
                         help="seconds between checks of the registry alias / version folder (default 30; 0: never)")
    limits = serve.add_argument_group("request limits (beyond them: 400, or 413 for the body)")
    limits.add_argument("--max-generated", type=_positive_int, default=64, help="images per :generate (default 64)")
    limits.add_argument("--max-steps", type=_positive_int, default=1000, help="DDPM steps per :generate")
    limits.add_argument("--max-instances", type=_positive_int, default=1024, help="rows per :predict")
    limits.add_argument("--max-body-mb", type=float, default=16.0, help="request body size (default 16 MiB)")
    serve.add_argument("--access-log", action="store_true", help="log every request (Ray Serve's access log)")


def _add_predict_parser(commands) -> None:
    predict = commands.add_parser("predict", help="call a running model server (latentforge serve)")
    predict.add_argument("--url", default="http://127.0.0.1:8000")
    predict.add_argument("--model", required=True, help="the served model's NAME")
    what = predict.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", help="images to send: .npy, .npz (its one array) or .png (one image)")
    what.add_argument("--generate", type=_positive_int, metavar="N", help="generate N images")
    what.add_argument("--info", action="store_true", help="print the model's version and signatures")
    predict.add_argument("--signature", default="serving_default", help="with --input (default serving_default)")
    predict.add_argument("--seed", type=int, default=0, help="with --generate")
    predict.add_argument("--steps", type=_positive_int, help="with --generate, DDPM: sampling steps")
    predict.add_argument("--output", help="write the result: .png (images as a grid), .npy (one output) or .npz")


class _ProgressOnly(logging.Filter):
    """Lets through the runner's per-component progress lines and real errors, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return record.levelno >= logging.ERROR or (
            message.startswith("Component ") and message.endswith(("is running.", "is finished.")))


def _configure_logs(verbose: bool) -> None:
    """Verbose: everything TFX, Beam and TF log. Otherwise: component progress, Keras epochs and errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    absl_logging.set_verbosity(absl_logging.INFO)
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
        return
    import warnings  # pylint: disable=import-outside-toplevel
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("tensorflow", "apache_beam"):
        logging.getLogger(name).setLevel(logging.ERROR)
    absl_logger = logging.getLogger("absl")
    absl_logger.setLevel(logging.INFO)
    # main() may run several times in one process (tests, notebooks): one filter is enough.
    if not any(isinstance(f, _ProgressOnly) for f in absl_logger.filters):
        absl_logger.addFilter(_ProgressOnly())


def _probe(args):
    from components.image_example_gen import sources  # pylint: disable=import-outside-toplevel
    return sources.probe(sources.parse_source(args.source, args.data_dir, args.manual_dir))


def cmd_inspect(args) -> int:
    info = _probe(args)
    print(f"source       {info.spec.uri}")
    print(f"image shape  {'x'.join(map(str, info.image_shape))}")
    print(f"classes      {info.num_classes}: {', '.join(info.class_names) or '(no labels)'}")
    print(f"splits       {', '.join(s.name for s in info.splits)}"
          f"{'' if any(s.name == 'eval' for s in info.splits) else ' (eval will be carved from train)'}")
    return EXIT_OK


def cmd_models(args) -> int:
    del args
    from trainers import registry  # pylint: disable=import-outside-toplevel
    # Families with a base model after the others, as this list always ended with the classifier.
    for name, entry in sorted(registry.MODELS.items(), key=lambda item: (item[1].family.needs_base_model, item[0])):
        family = entry.family
        print(f"{name:16s} {family.name:12s} {family.description or 'pixels ' + str(family.pixel_range)}")
    return EXIT_OK


def _checked_request(args):
    """(source info, the model's full config, its overrides, pretraining) from the flags, every one checked."""
    from pipelines import pipeline  # pylint: disable=import-outside-toplevel
    from trainers import registry  # pylint: disable=import-outside-toplevel
    overrides = _model_overrides(args)
    if args.schema and not os.path.isfile(args.schema):
        raise CliError(f"--schema {args.schema}: no such file")
    if not 1 <= args.eval_percent <= 50:
        raise CliError(f"--eval-percent {args.eval_percent}: must be between 1 and 50")
    if args.model not in registry.MODELS:
        raise CliError(f"--model {args.model!r} is unknown; choose one of: {', '.join(sorted(registry.MODELS))}")
    family = registry.get_model(args.model).family
    info = _probe(args)
    pretraining = None
    if family.supervised:
        overrides.setdefault("num_classes", info.num_classes)
    if family.needs_base_model:
        pretrain_config = {"epochs": args.pretrain_epochs, "seed": args.seed}
        pretraining = (args.pretrain, {k: v for k, v in pretrain_config.items() if v is not None})
    model_config = {k: v for k, v in overrides.items() if v is not None}
    try:
        config = pipeline.check_model(args.model, model_config, info, pretraining)
    except (ValueError, TypeError) as e:
        raise CliError(str(e)) from e
    _check_anomaly_class(args, info)
    return info, config, model_config, pretraining


# Flags that set a field of the model's config, which --set can name too.
_CONFIG_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "learning_rate": "--learning-rate",
                 "seed": "--seed"}


def _model_overrides(args) -> dict:
    """The model's config overrides: every --set FIELD=VALUE, and the fields --epochs, --batch-size,
    --learning-rate and --seed name. Naming one field both ways with different values is refused. Resolves
    args.seed (also the few-label choice's and the Evaluator's seed) to what the model trains with."""
    settings = dict(args.settings)
    for field, flag in _CONFIG_FLAGS.items():
        value = getattr(args, field)
        if value is not None and field in settings and settings[field] != value:
            raise CliError(f"{flag} {value} and --set {field}={settings[field]} disagree: give the value once")
    overrides = {**settings, **{f: getattr(args, f) for f in _CONFIG_FLAGS if getattr(args, f) is not None}}
    overrides.setdefault("seed", DEFAULT_SEED)
    if isinstance(overrides["seed"], int) and not isinstance(overrides["seed"], bool):
        args.seed = overrides["seed"]
    return overrides


def cmd_run(args) -> int:
    from pipelines import local_runner, run_lock  # pylint: disable=import-outside-toplevel
    info, config, model_config, pretraining = _checked_request(args)
    paths = local_runner.run_paths(args.run_dir, args.pipeline_name)
    wait_s = 0.0 if args.if_busy == "exit" else args.lock_timeout
    command = f"latentforge run --model {args.model} --source {args.source}"
    started = time.time()
    try:
        with run_lock.pipeline_lock(paths.root, wait_s, command):
            summary = _run_pipeline(args, paths, info, config, model_config, pretraining)
    except Exception as error:  # pylint: disable=broad-except
        explained = _explain(error)
        code = explained[1] if explained else EXIT_ERROR
        summary = {"status": "busy" if code == EXIT_BUSY else "failed", "exit_code": code,
                   "error": (explained[0] if explained else f"{type(error).__name__}: {error}")[:500]}
        _write_summary(paths.root, args, summary, started, append=code != EXIT_BUSY)
        raise
    _write_summary(paths.root, args, summary, started)
    return EXIT_OK


RUNS_LOG = "runs.jsonl"


def _write_summary(root: str, args, summary: dict, started: float, append: bool = True) -> None:
    """The run's one summary line (JSON, for a scheduler's logs), also appended to RUN_DIR/PIPELINE/runs.jsonl
    (not for a run that found the root busy: that is the other run's log)."""
    import json  # pylint: disable=import-outside-toplevel
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)), "model": args.model,
              "source": args.source, "pipeline": args.pipeline_name, **summary,
              "wall_s": round(time.time() - started, 1)}
    line = json.dumps(record, sort_keys=False)
    print(f"latentforge: summary {line}", flush=True)
    if append:
        with open(os.path.join(root, RUNS_LOG), "a") as f:
            f.write(line + "\n")


def _run_pipeline(args, paths, info, config, model_config, pretraining) -> dict:
    """Runs the pipeline (the caller holds the root's lock); prints what ran and returns the run's summary."""
    from pipelines import local_runner, metadata, pipeline  # pylint: disable=import-outside-toplevel
    evaluation_settings = _evaluation_settings(args, paths)
    ray = _ray_training(args, paths)
    print(f"latentforge: {info.spec.uri} ({'x'.join(map(str, info.image_shape))}, {info.num_classes} classes) "
          f"-> {args.model} {config}", flush=True)
    print(f"latentforge: outputs under {paths.root}", flush=True)
    tfx_pipeline = pipeline.create_pipeline(
        pipeline_name=args.pipeline_name, pipeline_root=paths.pipeline_root, metadata_path=paths.metadata_path,
        source_info=info, model_name=args.model, model_config=model_config, serving_dir=paths.serving_dir,
        eval_percent=args.eval_percent, labels_per_class=args.labels_per_class, seed=args.seed,
        schema_path=args.schema, enable_cache=not args.no_cache, ray=ray, pretraining=pretraining,
        evaluation_settings=evaluation_settings)
    start = time.time()
    local_runner.run(tfx_pipeline)
    elapsed = time.time() - start
    nodes = metadata.latest_run(paths.metadata_path, args.pipeline_name)
    for node in nodes:
        key = next((k for k in _MAIN_OUTPUTS if k in node.outputs), min(node.outputs, default=None))
        shown = f"{key} -> {os.path.relpath(node.outputs[key], paths.root)}" if key else ""
        print(f"  {node.node:24s} {node.state.lower():9s} {shown}")
    cached = [n.node for n in nodes if n.state == "CACHED"]
    print(f"latentforge: pipeline finished in {elapsed:.0f} s ({len(nodes) - len(cached)} ran, {len(cached)} from "
          "cache)")
    results = _print_results(nodes)
    return {"status": "ok", "exit_code": EXIT_OK, "pipeline_s": round(elapsed, 1),
            "ran": [n.node for n in nodes if n.state != "CACHED"], "cached": cached, **results}


_MAIN_OUTPUTS = ("transformed_examples", "model", "pushed_model", "curated_schema", "evaluation", "registration")


def _check_anomaly_class(args, info) -> None:
    if args.anomaly_class is None:
        return
    from pipelines import pipeline  # pylint: disable=import-outside-toplevel
    family = pipeline.family_of(args.model)
    if not family.detects_anomalies:
        raise CliError(f"--anomaly-class is for autoencoders (reconstruction error as the anomaly score); "
                       f"{args.model} is a {family.name}")
    if not 0 <= args.anomaly_class < info.num_classes:
        raise CliError(f"--anomaly-class {args.anomaly_class}: {info.spec.uri} has classes 0..{info.num_classes - 1}"
                       if info.num_classes else f"--anomaly-class needs labelled data; {info.spec.uri} has no labels")


def _evaluation_settings(args, paths):
    """Where MLflow is (checked now: a server that does not answer fails the run before any work) and how the
    Evaluator scores and blesses."""
    from backends import tracking  # pylint: disable=import-outside-toplevel
    config = tracking.resolve(args.mlflow_uri, paths.root, args.pipeline_name)
    tracking.check_reachable(config)
    print(f"latentforge: MLflow at {config.uri}", flush=True)
    return _scoring(args, config)


def _scoring(args, tracking_config):
    from pipelines import pipeline  # pylint: disable=import-outside-toplevel
    return pipeline.EvaluationSettings(tracking=tracking_config, margin=args.bless_margin,
                                       num_samples=args.eval_samples, anomaly_class=args.anomaly_class,
                                       metric_network_epochs=args.metric_network_epochs, seed=args.seed)


def _ray_settings(args):
    from components.trainer import ray_train  # pylint: disable=import-outside-toplevel
    try:
        return ray_train.RaySettings(address=args.ray_address, workers=args.workers,
                                     cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                                     max_failures=args.max_failures)
    except ValueError as e:
        raise CliError(str(e)) from e


def _ray_training(args, paths):
    """The Trainer's Ray settings, checked against the cluster now: a run asking for GPUs the cluster does not
    have fails here, not after the data stages, and not by waiting for resources forever."""
    if args.trainer == "in-process":
        return None
    from pipelines import pipeline  # pylint: disable=import-outside-toplevel
    from backends import ray_cluster  # pylint: disable=import-outside-toplevel
    from components.trainer import ray_train  # pylint: disable=import-outside-toplevel
    settings = _ray_settings(args)
    ray_cluster.connect(settings.address)
    resources = ray_train.worker_resources(settings)
    print(f"latentforge: training on Ray: {args.workers} worker(s) x {resources}", flush=True)
    fields = {k: v for k, v in vars(settings).items() if v is not None}
    return pipeline.RayTraining(settings=fields, storage_path=paths.ray_storage)


def cmd_compile(args) -> int:
    """The same pipeline as `run`, written as a Kubeflow Pipelines v2 spec by TFX's KubeflowV2DagRunner."""
    from backends import tracking  # pylint: disable=import-outside-toplevel
    from pipelines import kubeflow, pipeline  # pylint: disable=import-outside-toplevel
    info, config, model_config, pretraining = _checked_request(args)
    if not args.mlflow_uri:
        raise CliError("compile needs --mlflow-uri http://HOST:5000: steps on a cluster cannot share the embedded "
                       "SQLite store")
    ray = None
    if args.trainer == "ray":
        if not args.ray_address:
            raise CliError("compile with --trainer ray needs --ray-address (the cluster the Trainer step joins), "
                           "or use --trainer in-process (the Trainer trains inside its step)")
        fields = {k: v for k, v in vars(_ray_settings(args)).items() if v is not None}
        ray = pipeline.RayTraining(settings=fields, storage_path=args.pipeline_root.rstrip("/") + "/ray")
    tfx_pipeline = pipeline.create_pipeline(
        pipeline_name=args.pipeline_name, pipeline_root=args.pipeline_root, metadata_path=None,
        source_info=info, model_name=args.model, model_config=model_config,
        serving_dir=args.serving_dir or args.pipeline_root.rstrip("/") + "/serving",
        eval_percent=args.eval_percent, labels_per_class=args.labels_per_class, seed=args.seed,
        schema_path=args.schema, enable_cache=not args.no_cache, ray=ray, pretraining=pretraining,
        evaluation_settings=_scoring(args, tracking.TrackingConfig(uri=args.mlflow_uri,
                                                                   experiment=args.pipeline_name)))
    path = kubeflow.compile_v2(tfx_pipeline, args.image, args.out)
    print(f"latentforge: {args.model} {config} -> {path} (Kubeflow Pipelines v2; image {args.image}, "
          f"pipeline root {args.pipeline_root})", flush=True)
    return EXIT_OK


def cmd_gc(args) -> int:
    from backends import tracking  # pylint: disable=import-outside-toplevel
    from pipelines import gc, local_runner, run_lock  # pylint: disable=import-outside-toplevel
    paths = local_runner.RunPaths(os.path.abspath(os.path.join(args.run_dir, args.pipeline_name)))
    if not os.path.exists(paths.metadata_path):
        raise CliError(f"no pipeline runs under {paths.root} (no {os.path.basename(paths.metadata_path)}): check "
                       "--run-dir and --pipeline-name")
    config = tracking.resolve(args.mlflow_uri, paths.root, args.pipeline_name)
    if not tracking.store_exists(config):
        config = None  # no embedded store: nothing was ever registered here
    with run_lock.pipeline_lock(paths.root, 0.0 if args.if_busy == "exit" else None,
                                f"latentforge gc --keep {args.keep}"):
        result = gc.collect(paths.metadata_path, args.pipeline_name, args.keep, config, args.dry_run)
    print("latentforge: gc " + gc.describe(result, args.dry_run).replace("\n", "\n  "), flush=True)
    return EXIT_OK


def cmd_submit(args) -> int:
    from pipelines import ray_jobs  # pylint: disable=import-outside-toplevel
    job_args = args.job_args[1:] if args.job_args[:1] == ["--"] else args.job_args
    if not args.address:
        raise CliError("submit needs --address http://HEAD:8265 (the Ray head's dashboard) or RAY_API_SERVER_ADDRESS")
    if not job_args:
        raise CliError("submit needs the command to run after --, e.g. latentforge submit --address URL -- run")
    if job_args[0] == "run" and "--run-dir" not in job_args:
        print("latentforge: note: without --run-dir the job writes under its working directory on the cluster; "
              "pass an absolute path every node shares to keep the outputs", file=sys.stderr)
    job_id = ray_jobs.submit(args.address, job_args, python=args.python, submission_id=args.submission_id)
    print(f"latentforge: submitted Ray job {job_id} to {args.address}", flush=True)
    if not args.wait:
        print(f"latentforge: Ray job {job_id} {ray_jobs.status(args.address, job_id)}; follow it with `ray job logs "
              f"--address {args.address} --follow {job_id}`", flush=True)
        return EXIT_OK
    code = ray_jobs.follow(args.address, job_id)
    print(f"latentforge: Ray job {job_id} {ray_jobs.status(args.address, job_id)} (exit code {code})", flush=True)
    return code


def _serve_sources(args):
    """ModelSources for --model / --saved-model; a registry that does not answer, or lacks a model, fails here."""
    from backends import tracking  # pylint: disable=import-outside-toplevel
    from serving import server  # pylint: disable=import-outside-toplevel
    if not args.models and not args.saved_models:
        raise CliError("serve needs --model NAME[@ALIAS|/VERSION] (a registered model) or --saved-model DIR")
    sources = []
    for text in args.saved_models:
        try:
            source = server.directory_source(text)
        except FileNotFoundError as e:
            raise CliError(f"--saved-model {text}: {e}") from e
        sources.append(source)
        print(f"latentforge: {source.name}: {source.saved_model_dir} (version "
              f"{server.latest_saved_model(source.saved_model_dir)[1]})", flush=True)
    if args.models:
        root = os.path.abspath(os.path.join(args.run_dir, args.pipeline_name))
        config = tracking.resolve(args.mlflow_uri, root, args.pipeline_name)
        if not tracking.store_exists(config):
            raise CliError(f"no MLflow registry at {config.uri}: run `latentforge run` first (it registers every "
                           "model), or point --mlflow-uri / MLFLOW_TRACKING_URI at your server")
        for text in args.models:
            try:
                source = server.registry_source(text, config.uri)
            except ValueError as e:
                raise CliError(f"--model {e}") from e
            resolved = tracking.registry_version(config, source.registered_name, source.alias, source.version)
            print(f"latentforge: {source.name}: MLflow {config.uri}, "
                  f"{'@' + source.alias if source.alias else 'pinned'} -> version {resolved}", flush=True)
            sources.append(source)
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise CliError(f"two models share a name in {names}: name them, --saved-model NAME=DIR")
    return sources


def cmd_serve(args) -> int:
    from serving import model, server  # pylint: disable=import-outside-toplevel
    if args.detach and not (args.ray_address or os.environ.get("RAY_ADDRESS")):
        raise CliError("--detach leaves the server on a Ray cluster: give --ray-address (a local Ray ends with "
                       "this command)")
    sources = _serve_sources(args)
    try:
        limits = model.Limits(max_generated=args.max_generated, max_steps=args.max_steps,
                              max_instances=args.max_instances, max_body_bytes=int(args.max_body_mb * 1024 ** 2))
        options = server.ServerOptions(limits=limits, max_batch_size=args.max_batch_size,
                                       batch_wait_timeout_s=args.batch_wait_ms / 1000.0,
                                       poll_interval_s=args.poll_interval)
        deployment = server.Deployment(replicas=args.replicas, max_replicas=args.max_replicas,
                                       target_ongoing_requests=args.target_ongoing_requests,
                                       cpus_per_replica=args.cpus_per_replica)
        deployment.ray_options()
    except ValueError as e:
        raise CliError(str(e)) from e
    url = server.start(sources, options, deployment, host=args.host, port=args.port,
                       ray_address=args.ray_address, access_log=args.access_log)
    first = sources[0].name
    print(f"latentforge: serving {', '.join(s.name for s in sources)} at {url}\n"
          f"  curl {url}/v1/models/{first}\n"
          f"  latentforge predict --url {url} --model {first} --info", flush=True)
    if args.detach:
        return EXIT_OK
    print("latentforge: Ctrl-C stops the server", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("latentforge: stopping the server", flush=True)
        server.stop()
    return EXIT_OK


def _read_images(path: str):
    import numpy as np  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(path):
        raise CliError(f"--input {path}: no such file")
    if path.endswith(".png"):
        from PIL import Image  # pylint: disable=import-outside-toplevel
        image = np.asarray(Image.open(path), np.float32) / 255.0
        return (image[..., None] if image.ndim == 2 else image)[None]
    if path.endswith((".npy", ".npz")):
        data = np.load(path)
        if path.endswith(".npz"):
            if len(data.files) != 1:
                raise CliError(f"--input {path}: holds {data.files}; give an .npz with one array (or an .npy)")
            data = data[data.files[0]]
        return data
    raise CliError(f"--input {path}: expected .npy, .npz or .png")


def cmd_predict(args) -> int:
    import json  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from serving.client import Client, ServingError  # pylint: disable=import-outside-toplevel
    from serving.images import png_grid  # pylint: disable=import-outside-toplevel
    client = Client(args.url)
    try:
        if args.info:
            print(json.dumps(client.metadata(args.model), indent=1))
            return EXIT_OK
        if args.generate:
            reply = client.generate(args.model, args.generate, args.seed, args.steps)
        else:
            reply = client.predict(args.model, _read_images(args.input), args.signature)
    except ServingError as e:
        raise CliError(f"the server refused it: {e.message}", EXIT_BAD_INPUT if e.status < 500 else EXIT_ERROR) from e
    except OSError as e:
        raise CliError(f"no server answers at {args.url} ({e}); start one with `latentforge serve`",
                       EXIT_CLUSTER) from e
    outputs = reply.outputs if isinstance(reply.outputs, dict) else {"output": reply.outputs}
    print(f"latentforge: {args.model} version {reply.version}: " +
          ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in outputs.items()))
    if args.output:
        if args.output.endswith(".png"):
            images = next((v for v in outputs.values() if v.ndim == 4), None)
            if images is None:
                raise CliError(f"--output {args.output}: the outputs are not images; use .npy or .npz")
            low = -1.0 if images.min() < -1e-3 else 0.0  # a symmetric-range autoencoder's reconstructions
            with open(args.output, "wb") as f:
                f.write(png_grid((images - low) / (1.0 - low)))
        elif args.output.endswith(".npz"):
            np.savez(args.output, **outputs)
        else:
            np.save(args.output, next(iter(outputs.values())))
        print(f"latentforge: wrote {args.output}")
    return EXIT_OK


def _print_results(nodes) -> dict:
    """Prints the last epoch's losses (from the Trainer's metrics file), its pictures, the evaluation, the
    registered version and where the SavedModel went; returns them for the run's summary."""
    from components import artifacts  # pylint: disable=import-outside-toplevel
    by_name, results = {n.node: n for n in nodes}, {}
    model_run = by_name.get("Trainer") and by_name["Trainer"].outputs.get("model_run")
    if model_run and os.path.exists(os.path.join(model_run, artifacts.METRICS_FILE)):
        history = artifacts.TrainerMetrics.read(model_run).history
        print("latentforge: last epoch " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in sorted(history.items())))
        results["last_epoch"] = {k: round(v[-1], 6) for k, v in sorted(history.items())}
        pictures = sorted(f for f in os.listdir(model_run) if f.endswith(".png"))
        if pictures:
            print(f"latentforge: pictures in {model_run}: {', '.join(pictures)}")
    evaluator = by_name.get("ModelEvaluator")
    if evaluator and os.path.exists(os.path.join(evaluator.outputs.get("evaluation", ""), artifacts.EVALUATION_FILE)):
        evaluated = artifacts.Evaluation.read(evaluator.outputs["evaluation"])
        scalars = evaluated.scalars
        print("latentforge: evaluation " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(scalars.items())))
        results.update(metrics={k: round(v, 6) for k, v in sorted(scalars.items())},
                       blessed=bool(evaluated.blessing["blessed"]))
        print(f"latentforge: {'blessed' if evaluated.blessing['blessed'] else 'not blessed'}: "
              f"{evaluated.blessing['reason']}")
    registrar = by_name.get("MlflowRegistrar")
    registration = registrar and registrar.properties.get("registration", {})
    if registration:
        champion = registration.get("champion") == "1"
        print(f"latentforge: MLflow model {registration['name']} version {registration['version']}"
              f"{' (now @champion)' if champion else ''}")
        results.update(registered=f"{registration['name']}/{registration['version']}", champion=champion)
    pushed = by_name.get("Pusher") and by_name["Pusher"].properties.get("pushed_model", {})
    if pushed and pushed.get("pushed_destination"):
        print(f"latentforge: SavedModel at {pushed['pushed_destination']}")
        results["pushed"] = pushed["pushed_destination"]
    return results


def _explain(error: BaseException) -> Optional[tuple]:
    """(message, exit code) for errors that are the user's to fix, searched along the cause chain."""
    from components.image_example_gen.sources import SourceError  # pylint: disable=import-outside-toplevel
    from components.strict_example_validator.executor import DataValidationError  # pylint: disable=import-outside-toplevel
    from pipelines.ray_jobs import JobSubmissionError  # pylint: disable=import-outside-toplevel
    from pipelines.run_lock import PipelineBusy  # pylint: disable=import-outside-toplevel
    from backends.tracking import RegistryLookupError, TrackingError  # pylint: disable=import-outside-toplevel
    from trainers.common import TrainingDiverged  # pylint: disable=import-outside-toplevel
    from backends.ray_cluster import RayClusterError  # pylint: disable=import-outside-toplevel
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, CliError):
            return str(error), error.exit_code
        if isinstance(error, SourceError):
            return str(error).split(" [while running")[0], EXIT_BAD_INPUT
        if isinstance(error, DataValidationError):
            return str(error).split(" [while running")[0], EXIT_DATA_INVALID
        if isinstance(error, PipelineBusy):
            return str(error), EXIT_BUSY
        if isinstance(error, RegistryLookupError):
            return str(error), EXIT_BAD_INPUT
        if isinstance(error, TrainingDiverged):
            return str(error), EXIT_DIVERGED
        if isinstance(error, (RayClusterError, JobSubmissionError, TrackingError)):
            return str(error), EXIT_CLUSTER
        error = error.__cause__ or error.__context__
    return None


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logs(args.verbose)
    handlers = {"run": cmd_run, "compile": cmd_compile, "gc": cmd_gc, "submit": cmd_submit, "serve": cmd_serve, "predict": cmd_predict,
                "models": cmd_models, "inspect": cmd_inspect}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("latentforge: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # pylint: disable=broad-except
        explained = _explain(e)
        if explained is None:
            raise
        message, code = explained
        print(f"latentforge: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
