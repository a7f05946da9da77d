"""The `latentforge` command.

    latentforge run [--source SOURCE] [--model MODEL] [--epochs N] ...   run the pipeline locally
    latentforge models                                                 list the models --model takes
    latentforge inspect [--source SOURCE]                              probe a source: splits, shape, classes

Exit codes: 0 ok; 2 bad input (flags, source, model config); 3 data validation failed; 1 anything else.
"""
import argparse
import logging
import os
import sys
import time
from typing import List, Optional

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_DATA_INVALID, EXIT_DIVERGED = 0, 1, 2, 3, 4
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentforge", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show TFX/Beam logs")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline: ingest, validate, transform, train, push")
    _add_source_flags(run)
    run.add_argument("--model", default="stacked_ae", help="model to train (see `latentforge models`)")
    run.add_argument("--epochs", type=_positive_int, help="training epochs (default: the model's)")
    run.add_argument("--batch-size", type=_positive_int, help="global batch size (default: the model's)")
    run.add_argument("--learning-rate", type=float, help="optimizer learning rate (default: the model's)")
    run.add_argument("--seed", type=int, default=42, help="seed for training and the few-label choice")
    run.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                     type=_setting, help="any field of the model's config (repeatable; VALUE is JSON or a word), "
                     "e.g. --set beta=4 --set hidden_units=[150,100]")
    run.add_argument("--labels-per-class", type=_positive_int,
                     help="keep labels for only K examples per class (default: all)")
    run.add_argument("--eval-percent", type=int, default=10,
                     help="share of train carved into eval when the source has no eval split (default 10)")
    run.add_argument("--schema", help="a schema.pbtxt to validate against instead of the inferred one")
    run.add_argument("--run-dir", default="runs", help="where runs write everything (default ./runs)")
    run.add_argument("--pipeline-name", default="latentforge", help="pipeline name (cache and metadata scope)")
    run.add_argument("--no-cache", action="store_true", help="re-run every component, ignoring the TFX cache")

    commands.add_parser("models", help="list the models --model takes")
    inspect = commands.add_parser("inspect", help="probe a source: its splits, image shape and classes")
    _add_source_flags(inspect)
    return parser


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
    for name, entry in sorted(registry.MODELS.items()):
        print(f"{name:16s} {entry.family:12s} pixels {entry.pixel_range}")
    return EXIT_OK


def cmd_run(args) -> int:
    from pipelines import local_runner, metadata, pipeline  # pylint: disable=import-outside-toplevel
    from trainers import registry  # pylint: disable=import-outside-toplevel

    overrides = {**dict(args.settings), "epochs": args.epochs, "batch_size": args.batch_size,
                 "learning_rate": args.learning_rate, "seed": args.seed}
    try:
        config = registry.make_config(args.model, overrides)
    except (ValueError, TypeError) as e:
        raise CliError(str(e)) from e
    if args.schema and not os.path.isfile(args.schema):
        raise CliError(f"--schema {args.schema}: no such file")
    if not 1 <= args.eval_percent <= 50:
        raise CliError(f"--eval-percent {args.eval_percent}: must be between 1 and 50")
    info = _probe(args)
    paths = local_runner.run_paths(args.run_dir, args.pipeline_name)
    model_config = {k: v for k, v in overrides.items() if v is not None}
    print(f"latentforge: {info.spec.uri} ({'x'.join(map(str, info.image_shape))}, {info.num_classes} classes) "
          f"-> {args.model} {config}", flush=True)
    print(f"latentforge: outputs under {paths.root}", flush=True)
    tfx_pipeline = pipeline.create_pipeline(
        pipeline_name=args.pipeline_name, pipeline_root=paths.pipeline_root, metadata_path=paths.metadata_path,
        source_info=info, model_name=args.model, model_config=model_config, serving_dir=paths.serving_dir,
        eval_percent=args.eval_percent, labels_per_class=args.labels_per_class, seed=args.seed,
        schema_path=args.schema, enable_cache=not args.no_cache)
    start = time.time()
    local_runner.run(tfx_pipeline)
    elapsed = time.time() - start
    nodes = metadata.latest_run(paths.metadata_path, args.pipeline_name)
    for node in nodes:
        key = next((k for k in _MAIN_OUTPUTS if k in node.outputs), min(node.outputs, default=None))
        shown = f"{key} -> {os.path.relpath(node.outputs[key], paths.root)}" if key else ""
        print(f"  {node.node:24s} {node.state.lower():9s} {shown}")
    cached = sum(n.state == "CACHED" for n in nodes)
    print(f"latentforge: pipeline finished in {elapsed:.0f} s ({len(nodes) - cached} ran, {cached} from cache)")
    _print_results(nodes)
    return EXIT_OK


_MAIN_OUTPUTS = ("transformed_examples", "model", "pushed_model", "curated_schema")


def _print_results(nodes) -> None:
    """The last epoch's losses (from the Trainer's metrics file), its pictures and where the SavedModel went."""
    import json  # pylint: disable=import-outside-toplevel
    from components.trainer.run_fn import METRICS_FILE  # pylint: disable=import-outside-toplevel
    by_name = {n.node: n for n in nodes}
    model_run = by_name.get("Trainer") and by_name["Trainer"].outputs.get("model_run")
    if model_run and os.path.exists(os.path.join(model_run, METRICS_FILE)):
        with open(os.path.join(model_run, METRICS_FILE)) as f:
            history = json.load(f)["history"]
        print("latentforge: last epoch " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in sorted(history.items())))
        pictures = sorted(f for f in os.listdir(model_run) if f.endswith(".png"))
        if pictures:
            print(f"latentforge: pictures in {model_run}: {', '.join(pictures)}")
    pushed = by_name.get("Pusher") and by_name["Pusher"].properties.get("pushed_model", {})
    if pushed and pushed.get("pushed_destination"):
        print(f"latentforge: SavedModel at {pushed['pushed_destination']}")


def _explain(error: BaseException) -> Optional[tuple]:
    """(message, exit code) for errors that are the user's to fix, searched along the cause chain."""
    from components.image_example_gen.sources import SourceError  # pylint: disable=import-outside-toplevel
    from components.strict_example_validator.executor import DataValidationError  # pylint: disable=import-outside-toplevel
    from trainers.common import TrainingDiverged  # pylint: disable=import-outside-toplevel
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, CliError):
            return str(error), error.exit_code
        if isinstance(error, SourceError):
            return str(error).split(" [while running")[0], EXIT_BAD_INPUT
        if isinstance(error, DataValidationError):
            return str(error).split(" [while running")[0], EXIT_DATA_INVALID
        if isinstance(error, TrainingDiverged):
            return str(error), EXIT_DIVERGED
        error = error.__cause__ or error.__context__
    return None


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logs(args.verbose)
    handlers = {"run": cmd_run, "models": cmd_models, "inspect": cmd_inspect}
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
