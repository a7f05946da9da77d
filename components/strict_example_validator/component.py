"""StrictExampleValidator: TFX's ExampleValidator whose executor stops the pipeline on any anomaly.

The standard component only records anomalies; a pipeline then trains on bad data unless something
reads them. This subclass keeps the standard spec and outputs and raises DataValidationError, naming
each anomaly, when a split is not blessed. Downstream components are ordered after it.
"""
from tfx.components import ExampleValidator
from tfx.dsl.components.base import executor_spec

from components.strict_example_validator import executor


class StrictExampleValidator(ExampleValidator):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
