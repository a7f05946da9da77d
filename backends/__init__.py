"""The services latentforge talks to, each in one module everything else imports downward:

    ray_cluster   connect to (or start) a Ray cluster: for Ray Train, `latentforge submit` and Ray Serve
    local_ray     the local Ray head ray_cluster starts on first use, in a process of its own
    tracking      MLflow: runs, the model registry, aliases

Nothing here knows TFX or the models.
"""
import os

# `latentforge -v` (pipelines/console.py) sets it; the services' own chatter (MLflow's "Created version...", Ray
# workers' output) is shown only then. An environment variable, so Ray workers and Beam workers see it too.
VERBOSE_ENV = "LATENTFORGE_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")
