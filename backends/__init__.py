"""The services latentforge talks to, each in one module everything else imports downward:

    ray_cluster   connect to (or start) a Ray cluster: for Ray Train, `latentforge submit` and Ray Serve
    tracking      MLflow: runs, the model registry, aliases

Nothing here knows TFX or the models.
"""
