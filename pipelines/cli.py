"""The `latentforge` command: parsing and dispatch. A local run is pipelines/local_run.py, the request it checks
pipelines/run_request.py, what it prints back pipelines/report.py, exit codes pipelines/cli_common.py, serve and
predict pipelines/serve_commands.py.

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
import gc
import os
import sys
from typing import List, Optional

from backends import storage  # first: its exit handler must run after the others (backends/storage.py)
from pipelines import console, run_request
from pipelines.cli_common import (EXIT_BAD_INPUT, EXIT_BUSY, EXIT_CLUSTER, EXIT_DATA_INVALID, EXIT_DIVERGED,
                                  EXIT_ERROR, EXIT_OK, CliError, explain, non_negative_float, open_unit_float,
                                  positive_float, positive_int)
from pipelines.run_request import DEFAULT_SEED, DEFAULT_SOURCE
from pipelines import serve_commands as serving_commands

# The exit codes are part of this command's interface (schedulers and tests read them here).
__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_ERROR", "EXIT_BAD_INPUT", "EXIT_DATA_INVALID", "EXIT_DIVERGED",
           "EXIT_CLUSTER", "EXIT_BUSY"]


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


def _labels_per_class(text: str):
    """K, or K1,K2,... (the label-efficiency curve's points)."""
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or not all(v.isdigit() and int(v) >= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer or a comma-separated list of them, "
                                         "e.g. 10 or 1,5,10,50,100")
    numbers = sorted({int(v) for v in values})
    return numbers[0] if len(numbers) == 1 and "," not in text else numbers


def _fid_features(text: str) -> str:
    """auto | classifier | self-supervised | inception:PATH (PATH made absolute; the file is checked with the request)."""
    if text in ("auto", "classifier", "self-supervised"):
        return text
    kind, sep, path = text.partition(":")
    if kind == "inception" and sep and path:
        return "inception:" + os.path.abspath(os.path.expanduser(path))
    raise argparse.ArgumentTypeError(f"{text!r}: expected auto, classifier, self-supervised or inception:PATH (the FID "
                                     "Inception graph file, classify_image_graph_def.pb)")


def _beam_arg(text: str) -> str:
    """One Beam pipeline option as Beam's own parser takes it (--name=value or --flag); unknown names are refused
    here, where Beam would only log "Discarding unparseable args" and run without them."""
    if not text.startswith("--") or len(text) < 3:
        raise argparse.ArgumentTypeError(f"{text!r}: a Beam option starts with -- (e.g. --direct_num_workers=2); "
                                         "write it as --beam-arg=--NAME=VALUE")
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
    name = text[2:].split("=", 1)[0]
    if name not in PipelineOptions([]).get_all_options():  # every runner's options: Direct, Flink, Spark, Dataflow
        raise argparse.ArgumentTypeError(f"{text!r}: {name} is not an Apache Beam pipeline option (Beam spells "
                                         "them with underscores, e.g. --direct_num_workers=2)")
    return text


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help="tfds:NAME | idx:DIR | folder:DIR | npz:FILE (default: the bundled MNIST sample)")
    parser.add_argument("--data-dir", help="TFDS data directory (tfds: sources)")
    parser.add_argument("--manual-dir", help="folder with a TFDS dataset's downloaded files, for offline use")
    parser.add_argument("--ignore-labels", action="store_true",
                        help="read the source as unlabelled images: no classes (a folder's sub-folders are then not "
                        "classes and its images are read from every depth); a folder with its images directly in it "
                        "is unlabelled without this flag")


def _add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """What the pipeline is made of: shared by `run` and `compile`."""
    _add_source_flags(parser)
    parser.add_argument("--model", default="stacked_ae", help="model to train (see `latentforge models`)")
    parser.add_argument("--epochs", type=positive_int, help="training epochs (default: the model's)")
    parser.add_argument("--batch-size", type=positive_int, help="global batch size (default: the model's)")
    parser.add_argument("--learning-rate", type=float, help="optimizer learning rate (default: the model's)")
    parser.add_argument("--seed", type=int, help=f"seed for training and the few-label choice (default {DEFAULT_SEED})")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                     type=_setting, help="any field of the model's config (repeatable; VALUE is JSON or a word), "
                     "e.g. --set beta=4 --set hidden_units=[150,100]")
    parser.add_argument("--pretrain", default="stacked_ae", metavar="MODEL",
                     help="--model classifier: the autoencoder or VAE whose encoder it fine-tunes (default stacked_ae)")
    parser.add_argument("--pretrain-epochs", type=positive_int, help="--model classifier: epochs of the pretraining")
    parser.add_argument("--labels-per-class", type=_labels_per_class, metavar="K[,K...]",
                     help="keep labels for only K examples per class (default: all); with --model classifier, "
                     "a list (e.g. 1,5,10,50,100, or 10, for one point) draws the label-efficiency curve instead of training "
                     "one model")
    few = parser.add_argument_group("generated training data and the label-efficiency curve (--model classifier)")
    few.add_argument("--augment-with", metavar="MODEL",
                     help="a class-conditional generator (cvae, dcgan_cond, wgan_gp_cond, ddpm_cond) trained with the "
                     "classifier's K labels per class draws images the classifier trains on beside the real ones")
    few.add_argument("--synthetic-per-class", type=positive_int, default=100,
                     help="--augment-with: images drawn per class (default 100)")
    few.add_argument("--augment-set", dest="augment_settings", action="append", default=[], metavar="FIELD=VALUE",
                     type=_setting, help="--augment-with: a field of the generator's config (repeatable), e.g. "
                     "--augment-set epochs=20")
    few.add_argument("--semi-supervised", metavar="MODEL",
                     help="label-efficiency curve: also train this semi-supervised classifier (ssgan) for each K, on "
                     "the K labels per class and every other training image unlabelled (a GAN per K: minutes each)")
    few.add_argument("--semi-supervised-set", dest="semi_supervised_settings", action="append", default=[],
                     metavar="FIELD=VALUE", type=_setting,
                     help="--semi-supervised: a field of its config (repeatable), e.g. --semi-supervised-set epochs=10")
    few.add_argument("--examples-per-phase", type=positive_int, default=3000,
                     help="label-efficiency curve: each training phase sees at least this many examples (few "
                     "labels get more epochs; default 3000)")
    parser.add_argument("--eval-percent", type=int, default=10,
                     help="share of train carved into eval when the source has no eval split (default 10)")
    parser.add_argument("--schema", help="a schema.pbtxt to validate against instead of the inferred one")
    parser.add_argument("--pipeline-name", default="latentforge", help="pipeline name (cache and metadata scope)")
    parser.add_argument("--no-cache", action="store_true", help="re-run every component, ignoring the TFX cache")
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[], metavar="--FLAG=VALUE",
                        type=_beam_arg, help="an Apache Beam pipeline option for ExampleGen, StatisticsGen and "
                        "Transform (repeatable; default: DirectRunner in memory, one worker), e.g. "
                        "--beam-arg=--direct_running_mode=multi_processing --beam-arg=--direct_num_workers=2")
    scoring = parser.add_argument_group("evaluation and MLflow")
    scoring.add_argument("--mlflow-uri", help="MLflow tracking/registry server or store (default: MLFLOW_TRACKING_URI, "
                         "else a SQLite store under the run directory)")
    scoring.add_argument("--bless-margin", type=non_negative_float, default=0.01,
                         help="relative improvement over the champion's key metric a model needs to be blessed "
                         "(default 0.01: 1 %% better)")
    scoring.add_argument("--eval-samples", type=positive_int, default=1000,
                         help="generated images scored by FID, KID and mode coverage (default 1000)")
    scoring.add_argument("--anomaly-class", type=int,
                         help="autoencoders: keep this class out of training and report the AUROC of detecting it")
    scoring.add_argument("--anomaly-fpr", type=open_unit_float,
                         help="autoencoders: the share of normal (eval) images the exported anomaly threshold calls "
                         "anomalous (default 0.01); the server's :detect applies it")
    scoring.add_argument("--metric-network-epochs", type=positive_int,
                         help="epochs of the metric network (trained once per dataset; default 3 for the classifier, "
                         "10 for the self-supervised encoder)")
    scoring.add_argument("--keep-last-epoch", action="store_true",
                         help="generative models: export the last epoch (default: the epoch whose samples score best "
                         "by KID on a few hundred samples, measured after every epoch)")
    scoring.add_argument("--fid-features", type=_fid_features, default="auto",
                         metavar="auto|classifier|self-supervised|inception:PATH",
                         help="the feature space of FID, KID and precision/recall: a classifier trained on the "
                         "source's labels, a self-supervised (contrastive) encoder trained on its images alone, or "
                         "the standard FID Inception-v3 from its frozen graph file (TTUR's "
                         "classify_image_graph_def.pb); auto (default): the classifier when the source has labels")
    ray = parser.add_argument_group("training on Ray Train")
    ray.add_argument("--trainer", choices=("ray", "in-process"), default="ray",
                     help="ray (default): Ray Train workers; in-process: TFX's own Trainer in this process")
    ray.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers (default 1)")
    ray.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    ray.add_argument("--cpus-per-worker", type=float,
                     help="CPUs per worker (default: a local Ray's cores shared among the workers; 1 on a cluster)")
    ray.add_argument("--gpus-per-worker", type=non_negative_float, default=0.0,
                     help="GPUs per worker (default 0: CPU training)")
    ray.add_argument("--max-failures", type=int, default=1,
                     help="times a failed worker group restarts from its last checkpoint (default 1; -1: forever)")
    tune = parser.add_argument_group("hyperparameter search (Ray Tune) before the Trainer")
    tune.add_argument("--tune", metavar="SPACE.yaml|default",
                      help="search the model's config first and train with the best values: a YAML or JSON file "
                      "of FIELD: {choice|uniform|loguniform|randint: [...]}, or the family's default space")
    tune.add_argument("--tune-trials", type=positive_int, default=12, help="trials to sample (default 12)")
    tune.add_argument("--tune-budget-minutes", type=positive_float,
                      help="stop the search after this long (default: when every trial has ended)")
    tune.add_argument("--tune-scheduler", choices=("asha", "fifo"), default="asha",
                      help="asha (default): stop poor trials at its rungs; fifo: every trial to its last epoch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentforge", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show everything: TFX, Beam, TensorFlow, MLflow and Ray logs, Ray workers' output")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline: ingest, validate, transform, train, push")
    _add_pipeline_flags(run)
    run.add_argument("--run-dir", default="runs", help="where runs write everything (default ./runs)")
    run.add_argument("--metadata-uri", metavar="mysql://USER@HOST[:PORT]/DB",
                     help="a shared ML Metadata on MySQL (default: LATENTFORGE_METADATA_URI, else SQLite in the "
                     "run's state directory); the password in the URI or LATENTFORGE_METADATA_PASSWORD")
    run.add_argument("--if-busy", choices=("exit", "wait"), default="exit",
                     help="when another run holds this run directory + pipeline: exit at once with code 6 "
                     "(default) or wait for it")
    run.add_argument("--lock-timeout", type=non_negative_float, metavar="SECONDS",
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
    gc.add_argument("--keep", type=positive_int, required=True, help="keep the newest N pipeline runs")
    gc.add_argument("--run-dir", default="runs")
    gc.add_argument("--metadata-uri", metavar="mysql://USER@HOST[:PORT]/DB", help="as for run")
    gc.add_argument("--pipeline-name", default="latentforge")
    gc.add_argument("--mlflow-uri", help="the registry (default: MLFLOW_TRACKING_URI, else the embedded store)")
    gc.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    gc.add_argument("--if-busy", choices=("exit", "wait"), default="exit",
                    help="when a run holds the run directory: exit with code 6 (default) or wait")
    serving_commands.add_serve_parser(commands)
    serving_commands.add_predict_parser(commands)
    commands.add_parser("models", help="list the models --model takes")
    inspect = commands.add_parser("inspect", help="probe a source: its splits, image shape and classes")
    _add_source_flags(inspect)
    # -v after the command as well (`latentforge run ... -v`, as docs/commands.md writes it); SUPPRESS keeps the
    # top-level value when a command's own -v is not given.
    for command in commands.choices.values():
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="show everything (as latentforge -v)")
    return parser


def cmd_inspect(args) -> int:
    info = run_request.probe(args)
    print(f"source       {info.spec.uri}")
    print(f"image shape  {'x'.join(map(str, info.image_shape))}")
    unlabelled = "(labels ignored)" if info.spec.ignore_labels else "(no labels)"
    print(f"classes      {info.num_classes}: {', '.join(info.class_names) or unlabelled}")
    print(f"splits       {', '.join(s.name for s in info.splits)}"
          f"{'' if any(s.name == 'eval' for s in info.splits) else ' (eval will be carved from train)'}")
    return EXIT_OK


def cmd_models(args) -> int:
    del args
    from trainers import registry  # pylint: disable=import-outside-toplevel
    # Families with a base model after the others, as this list always ended with the classifier.
    models = sorted(registry.MODELS.items(), key=lambda item: (item[1].family.needs_base_model, item[0]))
    width = max(len(entry.family.name) for _, entry in models)
    for name, entry in models:
        family = entry.family
        print(f"{name:16s} {family.name:{width}s} {family.description or 'pixels ' + str(family.pixel_range)}")
    return EXIT_OK


def cmd_run(args) -> int:
    from pipelines import local_run  # pylint: disable=import-outside-toplevel  (TFX: only when a run starts)
    return local_run.run(args)


def cmd_compile(args) -> int:
    """The same pipeline as `run`, written as a Kubeflow Pipelines v2 spec by TFX's KubeflowV2DagRunner."""
    from backends import tracking  # pylint: disable=import-outside-toplevel
    from pipelines import kubeflow, pipeline  # pylint: disable=import-outside-toplevel
    request = run_request.checked_request(args)
    config = request.config
    if args.augment_with:
        # TFX 1.16's Kubeflow V2 step builder takes one channel per input ("Only single Channel is supported"), and
        # the Trainer (or the curve) reads the union of the real and the synthetic Examples.
        raise CliError("--augment-with cannot be compiled for Kubeflow Pipelines v2: TFX's compiler takes one "
                       "channel per input, and generated data reaches the classifier as a union of two; run it with "
                       "`latentforge run`, or on a Ray cluster with `latentforge submit -- run ...`")
    if not args.mlflow_uri:
        raise CliError("compile needs --mlflow-uri http://HOST:5000: steps on a cluster cannot share the embedded "
                       "SQLite store")
    ray = None
    if args.trainer == "ray":
        if not args.ray_address:
            raise CliError("compile with --trainer ray needs --ray-address (the cluster the Trainer step joins), "
                           "or use --trainer in-process (the Trainer trains inside its step)")
        fields = {k: v for k, v in vars(run_request.ray_settings(args)).items() if v is not None}
        ray = pipeline.RayTraining(settings=fields, storage_path=args.pipeline_root.rstrip("/") + "/ray")
    target = pipeline.PipelineTarget(args.pipeline_name, args.pipeline_root, None,
                                     args.serving_dir or args.pipeline_root.rstrip("/") + "/serving",
                                     enable_cache=not args.no_cache, beam_pipeline_args=args.beam_args or None)
    settings = run_request.evaluation_settings(args, tracking.TrackingConfig(uri=args.mlflow_uri,
                                                                            experiment=args.pipeline_name))
    tfx_pipeline = run_request.tfx_pipeline(args, request, target, ray, settings)
    path = kubeflow.compile_v2(tfx_pipeline, args.image, args.out)
    print(f"latentforge: {args.model} {config} -> {path} (Kubeflow Pipelines v2; image {args.image}, "
          f"pipeline root {args.pipeline_root})", flush=True)
    return EXIT_OK


def cmd_gc(args) -> int:
    from backends import tracking  # pylint: disable=import-outside-toplevel
    from pipelines import gc, local_runner, metadata, run_lock  # pylint: disable=import-outside-toplevel
    paths = local_runner.paths_for(args.run_dir, args.pipeline_name, args.metadata_uri)
    metadata.check(paths.metadata_path)
    if not metadata.is_mysql(paths.metadata_path) and not os.path.exists(paths.metadata_path):
        raise CliError(f"no pipeline runs under {paths.root} (no {paths.metadata_path}): check --run-dir and "
                       "--pipeline-name")
    if paths.remote:
        storage.enable_tensorflow(paths.root)  # gc deletes artifacts in the bucket through TFX's filesystem
    config = tracking.resolve(args.mlflow_uri, paths.state, args.pipeline_name, paths.root if paths.remote else None)
    if not tracking.store_exists(config):
        config = None  # no embedded store: nothing was ever registered here
    with run_lock.pipeline_lock(paths.state, 0.0 if args.if_busy == "exit" else None,
                                f"latentforge gc --keep {args.keep}"):
        result = gc.collect(paths.metadata_path, args.pipeline_name, args.keep, config, args.dry_run)
    print("latentforge: gc " + gc.describe(result, args.dry_run).replace("\n", "\n  "), flush=True)
    return EXIT_OK


def _space_inside_the_upload(job_args: List[str]) -> List[str]:
    """A job runs in the uploaded project directory (its working_dir), not where the user typed the command: a
    `--tune SPACE.yaml` is passed relative to that directory, and one outside it, which the job would never see,
    is refused before submitting."""
    from backends.ray_cluster import PROJECT_ROOT  # pylint: disable=import-outside-toplevel
    rewritten = list(job_args)
    for i, arg in enumerate(job_args):
        value = job_args[i + 1] if arg == "--tune" and i + 1 < len(job_args) else (
            arg.split("=", 1)[1] if arg.startswith("--tune=") else None)
        if value is None or value == "default":
            continue
        path = os.path.abspath(value)
        if os.path.commonpath([path, PROJECT_ROOT]) != PROJECT_ROOT:
            raise CliError(f"--tune {value}: the job runs in the project directory it uploads ({PROJECT_ROOT}), "
                           "which does not hold this file; put the space file inside it")
        relative = os.path.relpath(path, PROJECT_ROOT)
        if arg == "--tune":
            rewritten[i + 1] = relative
        else:
            rewritten[i] = f"--tune={relative}"
    return rewritten


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
    job_args = _space_inside_the_upload(job_args)
    job_id = ray_jobs.submit(args.address, job_args, python=args.python, submission_id=args.submission_id)
    print(f"latentforge: submitted Ray job {job_id} to {args.address}", flush=True)
    if not args.wait:
        print(f"latentforge: Ray job {job_id} {ray_jobs.status(args.address, job_id)}; follow it with `ray job logs "
              f"--address {args.address} --follow {job_id}`", flush=True)
        return EXIT_OK
    code = ray_jobs.follow(args.address, job_id)
    print(f"latentforge: Ray job {job_id} {ray_jobs.status(args.address, job_id)} (exit code {code})", flush=True)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:
        # TFX's Beam executors parse sys.argv with absl's flags (base_beam_executor: FLAGS(sys.argv + beam args,
        # known_only=True)): our `-v run` read as absl's `-v`/--verbosity=run and failed every run. Our flags are
        # parsed; absl must see none of them.
        sys.argv = sys.argv[:1]
    console.configure(args.verbose)
    code = 1
    try:
        code = _run_command(args)
        return code
    finally:
        storage.set_exit_code(code)
        if argv is None:
            # The command is done; what is left is the interpreter's shutdown, which clears ~8,000 modules (TF, TFX,
            # Beam, Ray, MLflow) with cyclic collections over their whole heap: 2 s, a third of a cached `run`.
            # Frozen objects are skipped by those collections (refcounting, atexit handlers and files' flushes
            # still run); only cyclic garbage left at exit goes unfinalized, as it may anyway at shutdown.
            gc.freeze()


def _run_command(args) -> int:
    handlers = {"run": cmd_run, "compile": cmd_compile, "gc": cmd_gc, "submit": cmd_submit,
                "serve": serving_commands.cmd_serve, "predict": serving_commands.cmd_predict, "models": cmd_models,
                "inspect": cmd_inspect}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("latentforge: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # pylint: disable=broad-except
        explained = explain(e)
        if explained is None:
            raise
        message, code = explained
        print(f"latentforge: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
