"""What `latentforge` prints: quiet by default, everything with -v.

Quiet means: TensorFlow's C++ start-up lines (CUDA plugin "errors" on a CPU-only machine, oneDNN notes), Google
libraries' FutureWarnings, Beam's, TFX's, MLflow's and Ray's INFO logs and Ray workers' output stay out of the
default output of `run`, `serve` and `submit`; the run's own lines, the pipeline's progress (component i of N,
elapsed), training progress (trainers/progress.py) and every error stay. The environment is set before
TensorFlow or Ray start, so child processes (a local Ray head, Beam workers) inherit it, and Ray workers get it
through their runtime_env (backends/ray_cluster.worker_env).
"""
import logging
import os
import sys
import time
import warnings

import backends

_PROGRESS_MESSAGES = ("Component %s is running.", "Component %s is finished.")
# Loggers whose INFO lines are not the run's business by default.
_QUIET_LOGGERS = ("tensorflow", "apache_beam", "mlflow", "ray", "alembic", "urllib3", "py.warnings")


def configure(verbose: bool) -> None:
    """Sets the environment and Python's loggers for this process and the processes it starts."""
    os.environ[backends.VERBOSE_ENV] = "1" if verbose else "0"
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    absl_logging.set_verbosity(absl_logging.INFO)
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        logging.getLogger().setLevel(logging.INFO)
        return
    # 3: TF's C++ ERROR lines too ("Unable to register cuFFT factory..." on every start of a CPU-only machine);
    # TF's real errors are Python exceptions, shown.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    # MLflow sets its loggers' level when it is imported (after this): its own variable keeps them quiet.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    absl_logger = logging.getLogger("absl")
    absl_logger.setLevel(logging.INFO)
    # configure() may run several times in one process (tests, notebooks): one filter is enough.
    if not any(isinstance(f, _ErrorsOnly) for f in absl_logger.filters):
        absl_logger.addFilter(_ErrorsOnly())


class _ErrorsOnly(logging.Filter):
    """absl's (TFX's) INFO and WARNING lines are not shown by default; its errors are."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


class ComponentProgress(logging.Filter):
    """Turns TFX's "Component X is running." log records into `[i/N] X (elapsed)` lines on `stream`.

        with ComponentProgress(len(pipeline.components)):
            LocalDagRunner().run(pipeline)

    It sits on the absl logger (TFX logs through absl) ahead of the quiet filter, and swallows the records it
    turns into lines, so -v shows the same lines once."""

    def __init__(self, total: int, stream=None):
        super().__init__()
        self.total, self.stream = total, stream or sys.stdout
        self.started = time.time()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in _PROGRESS_MESSAGES or not record.args:
            return True
        if record.msg == _PROGRESS_MESSAGES[0]:
            self.count += 1
            print(f"latentforge: [{self.count:>{len(str(self.total))}}/{self.total}] {record.args[0]} "
                  f"({time.time() - self.started:.0f} s)", file=self.stream, flush=True)
        return False

    def __enter__(self):
        logging.getLogger("absl").filters.insert(0, self)
        return self

    def __exit__(self, *exc_info):
        logging.getLogger("absl").removeFilter(self)
