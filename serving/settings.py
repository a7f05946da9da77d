"""How the model server runs, in one place: request limits, batching and polling, Ray Serve replicas.

Pure Python (no TensorFlow, no Ray): `latentforge serve`'s flags, Ray Serve's `serve run serving.server:build_app
KEY=VALUE` and the server itself all read their defaults from these dataclasses, through SETTINGS (flat names,
as flags and build_app keys spell them) and `server_settings`.
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond it a request gets a 400 (a 413 for the body)."""
    max_generated: int = 64  # images per :generate call
    max_steps: int = 1000  # DDPM sampling steps per call
    max_instances: int = 1024  # rows per :predict call
    max_body_bytes: int = 16 * 1024 ** 2

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"{field.name}={getattr(self, field.name)}: must be at least 1")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    limits: Limits = Limits()
    max_batch_size: int = 16  # requests stacked into one call; 1 turns batching off
    batch_wait_timeout_s: float = 0.005  # how long a batch waits to fill
    poll_interval_s: float = 30.0  # registry aliases; 0: never re-read
    # The explorer's class operands: a serving.explorer.ClassExamples (labelled images whose mean codings stand
    # for each class in latent arithmetic and interpolation); None: uploaded images only.
    class_examples: Optional[Any] = None

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size={self.max_batch_size}: must be at least 1 (1: no batching)")
        if self.batch_wait_timeout_s < 0 or self.poll_interval_s < 0:
            raise ValueError("batch_wait_timeout_s and poll_interval_s must be >= 0")


@dataclasses.dataclass(frozen=True)
class Deployment:
    """How Ray Serve runs the server: replicas (fixed, or autoscaled up to max_replicas) and their resources."""
    replicas: int = 1
    max_replicas: Optional[int] = None  # autoscale between `replicas` and this
    target_ongoing_requests: float = 4.0
    cpus_per_replica: float = 1.0
    max_ongoing_requests: int = 64  # per replica; more wait in the proxy

    def ray_options(self) -> Dict[str, Any]:
        options: Dict[str, Any] = {"ray_actor_options": {"num_cpus": self.cpus_per_replica},
                                   "max_ongoing_requests": self.max_ongoing_requests}
        if self.max_replicas:
            if self.max_replicas < self.replicas:
                raise ValueError(f"max_replicas={self.max_replicas} is below replicas={self.replicas}")
            options["autoscaling_config"] = {"min_replicas": self.replicas, "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing_requests}
        else:
            options["num_replicas"] = self.replicas
        return options


@dataclasses.dataclass(frozen=True)
class Setting:
    """One flat server setting: its type, default and help (the flag `--NAME-WITH-DASHES`, the build_app key)."""
    kind: type
    default: Any
    help: str


SETTINGS: Dict[str, Setting] = {
    "replicas": Setting(int, Deployment.replicas, "replicas (autoscaling: the minimum)"),
    "max_replicas": Setting(int, Deployment.max_replicas, "autoscale between --replicas and this"),
    "target_ongoing_requests": Setting(float, Deployment.target_ongoing_requests,
                                       "autoscaling: requests in flight per replica it aims at"),
    "cpus_per_replica": Setting(float, Deployment.cpus_per_replica, "CPUs per replica"),
    "max_batch_size": Setting(int, ServerOptions.max_batch_size,
                              "requests stacked into one TensorFlow call (1: no batching)"),
    "batch_wait_ms": Setting(float, ServerOptions.batch_wait_timeout_s * 1000.0, "how long a batch waits to fill"),
    "poll_interval": Setting(float, ServerOptions.poll_interval_s,
                             "seconds between checks of the registry alias / version folder (0: never)"),
    "max_generated": Setting(int, Limits.max_generated, "images per :generate"),
    "max_steps": Setting(int, Limits.max_steps, "DDPM steps per :generate"),
    "max_instances": Setting(int, Limits.max_instances, "rows per :predict"),
    "max_body_mb": Setting(float, Limits.max_body_bytes / 1024 ** 2, "request body size in MiB"),
}


def server_settings(values: Mapping[str, Any]) -> Tuple[ServerOptions, Deployment]:
    """(ServerOptions, Deployment) from flat settings (strings are fine: build_app's come from a command line);
    a missing or None value takes the default. ValueError names a value that is not of its type or out of range."""
    flat: Dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        value = values.get(name)
        if value is None:
            flat[name] = setting.default
            continue
        try:
            flat[name] = setting.kind(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}={value!r}: expected {'an integer' if setting.kind is int else 'a number'}") from e
    limits = Limits(max_generated=flat["max_generated"], max_steps=flat["max_steps"],
                    max_instances=flat["max_instances"], max_body_bytes=int(flat["max_body_mb"] * 1024 ** 2))
    options = ServerOptions(limits=limits, max_batch_size=flat["max_batch_size"],
                            batch_wait_timeout_s=flat["batch_wait_ms"] / 1000.0, poll_interval_s=flat["poll_interval"])
    deployment = Deployment(replicas=flat["replicas"], max_replicas=flat["max_replicas"] or None,
                            target_ongoing_requests=flat["target_ongoing_requests"],
                            cpus_per_replica=flat["cpus_per_replica"])
    deployment.ray_options()  # checks max_replicas >= replicas
    return options, deployment
