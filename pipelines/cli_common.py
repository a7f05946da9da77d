"""What every latentforge command shares: exit codes, CliError, the explanation of errors the user can fix,
argument types. `latentforge`'s commands live in pipelines/cli.py (parsing and dispatch), pipelines/local_run.py
(a local run) and pipelines/serve_commands.py (serve, predict).

Exit codes: 0 ok; 2 bad input (flags, source, model config); 3 data validation failed; 4 training diverged;
5 infrastructure: the Ray cluster cannot run it (unreachable, or lacks the resources asked for) or the MLflow
server does not answer; 6 another run holds the same run directory and pipeline (nothing was done: try later);
1 anything else.
"""
import argparse
from typing import Optional, Tuple

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_DATA_INVALID, EXIT_DIVERGED, EXIT_CLUSTER, EXIT_BUSY = 0, 1, 2, 3, 4, 5, 6


class CliError(Exception):
    """A problem with what the user asked for; printed without a stack trace."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def open_unit_float(text: str) -> float:
    """A rate strictly between 0 and 1 (0.01 is 1 %)."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not strictly between 0 and 1 (a rate: 0.01 is 1 %)")
    return value


def explain(error: BaseException) -> Optional[Tuple[str, int]]:
    """(message, exit code) for errors that are the user's to fix, searched along the cause chain."""
    from components.image_example_gen.sources import SourceError  # pylint: disable=import-outside-toplevel
    from components.strict_example_validator.executor import DataValidationError  # pylint: disable=import-outside-toplevel
    from pipelines.ray_jobs import JobSubmissionError  # pylint: disable=import-outside-toplevel
    from pipelines.run_lock import PipelineBusy  # pylint: disable=import-outside-toplevel
    from backends.tracking import RegistryLookupError, TrackingError  # pylint: disable=import-outside-toplevel
    from trainers.common import TrainingDiverged  # pylint: disable=import-outside-toplevel
    from backends.ray_cluster import RayClusterError  # pylint: disable=import-outside-toplevel
    from backends.storage import StorageError  # pylint: disable=import-outside-toplevel
    from pipelines.metadata import MetadataError, MetadataUnavailable  # pylint: disable=import-outside-toplevel
    from components.tuner.ray_tune import SearchBudgetTooSmall  # pylint: disable=import-outside-toplevel
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
        if isinstance(error, (RegistryLookupError, StorageError, MetadataError, SearchBudgetTooSmall)):
            return str(error), EXIT_BAD_INPUT
        if isinstance(error, TrainingDiverged):
            return str(error), EXIT_DIVERGED
        if isinstance(error, (RayClusterError, JobSubmissionError, TrackingError, MetadataUnavailable)):
            return str(error), EXIT_CLUSTER
        error = error.__cause__ or error.__context__
    return None
