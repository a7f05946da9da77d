"""`latentforge run` on this machine: the run directory's lock, the pipeline built from a checked request and run
by TFX's LocalDagRunner, what ran read back from ML Metadata, and one JSON summary line per run (printed, and
appended to RUN_DIR/PIPELINE/runs.jsonl)."""
import json
import os
import time

import backends
from pipelines import local_runner, report, run_lock, run_request
from pipelines.cli_common import EXIT_BUSY, EXIT_ERROR, EXIT_OK, explain

RUNS_LOG = "runs.jsonl"


def run(args) -> int:
    """Checks the request, takes the lock, runs the pipeline; the summary line is written whatever happens."""
    request = run_request.checked_request(args)
    paths = local_runner.run_paths(args.run_dir, args.pipeline_name, getattr(args, "metadata_uri", None))
    wait_s = 0.0 if args.if_busy == "exit" else args.lock_timeout
    command = f"latentforge run --model {args.model} --source {args.source}"
    started = time.time()
    try:
        with run_lock.pipeline_lock(paths.state, wait_s, command):
            summary = _run_pipeline(args, paths, request)
    except Exception as error:  # pylint: disable=broad-except
        explained = explain(error)
        code = explained[1] if explained else EXIT_ERROR
        summary = {"status": "busy" if code == EXIT_BUSY else "failed", "exit_code": code,
                   "error": (explained[0] if explained else f"{type(error).__name__}: {error}")[:500]}
        write_summary(paths.state, args, summary, started, append=code != EXIT_BUSY)
        raise
    write_summary(paths.state, args, summary, started)
    return EXIT_OK


def write_summary(root: str, args, summary: dict, started: float, append: bool = True) -> None:
    """The run's one summary line (JSON, for a scheduler's logs), also appended to RUN_DIR/PIPELINE/runs.jsonl
    (not for a run that found the root busy: that is the other run's log)."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)), "model": args.model,
              "source": args.source, "pipeline": args.pipeline_name, **summary,
              "wall_s": round(time.time() - started, 1)}
    line = json.dumps(record, sort_keys=False)
    print(f"latentforge: summary {line}", flush=True)
    if append:
        with open(os.path.join(root, RUNS_LOG), "a") as f:
            f.write(line + "\n")


def _run_pipeline(args, paths, request: run_request.PipelineRequest) -> dict:
    """Runs the pipeline (the caller holds the root's lock); prints what ran and returns the run's summary."""
    from pipelines import console, metadata, pipeline  # pylint: disable=import-outside-toplevel
    from backends import ray_cluster  # pylint: disable=import-outside-toplevel
    info, config = request.info, request.config
    evaluation_settings = _evaluation_settings(args, paths)
    ray = _ray_training(args, paths)
    where = f"on Ray: {args.workers} worker(s) x {ray.resources}" if ray else "in process"
    classes = (f"{info.num_classes} classes" if info.num_classes else
               "labels ignored" if info.spec.ignore_labels else "unlabelled")
    print(f"latentforge: {info.spec.uri} ({'x'.join(map(str, info.image_shape))}, {classes}) "
          f"-> {args.model} {config}, training {where}", flush=True)
    if request.sized:
        print(f"latentforge: sized for {'x'.join(map(str, info.image_shape))} images (--set overrides): "
              + ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in request.sized.items()),
              flush=True)
    if backends.verbose():  # by default the run ends with where to look
        print(f"latentforge: outputs under {paths.root}", flush=True)
    target = pipeline.PipelineTarget(args.pipeline_name, paths.pipeline_root, paths.metadata_path, paths.serving_dir,
                                     enable_cache=not args.no_cache, beam_pipeline_args=args.beam_args or None)
    tfx_pipeline = run_request.tfx_pipeline(args, request, target, ray, evaluation_settings,
                                            _tuning(request, args, info, evaluation_settings))
    ray_before = ray_cluster.local_ray_running()
    start = time.time()
    with console.ComponentProgress(len(tfx_pipeline.components)):
        local_runner.run(tfx_pipeline)
    elapsed = time.time() - start
    nodes = metadata.latest_run(paths.metadata_path, args.pipeline_name)
    if backends.verbose():
        report.print_nodes(nodes, paths.root)
    cached = [n.node for n in nodes if n.state == "CACHED"]
    print(f"latentforge: pipeline finished in {elapsed:.0f} s ({len(nodes) - len(cached)} ran, {len(cached)} from "
          "cache)")
    results = report.print_results(nodes)
    report.print_where_to_look(nodes, evaluation_settings.tracking.uri, paths, args)
    return {"status": "ok", "exit_code": EXIT_OK, "pipeline_s": round(elapsed, 1),
            "ran": [n.node for n in nodes if n.state != "CACHED"], "cached": cached,
            # Whether this run started a local Ray (only a Trainer that executes on Ray does).
            "started_ray": ray_cluster.local_ray_running() and not ray_before, **results}


def _tuning(request, args, info, evaluation_settings):
    """The RayTuner's settings for --tune (None without): the checked space and search, and where MLflow is."""
    if request.tuning is None:
        return None
    import dataclasses  # pylint: disable=import-outside-toplevel
    from components import artifacts  # pylint: disable=import-outside-toplevel
    from pipelines import pipeline  # pylint: disable=import-outside-toplevel
    space, search = request.tuning
    tracking = dataclasses.asdict(evaluation_settings.tracking) if evaluation_settings else None
    return pipeline.Tuning(artifacts.TunerConfig(space=space, search=search, tracking=tracking,
                                                 pipeline=args.pipeline_name, dataset=info.dataset_name))


def _evaluation_settings(args, paths):
    """Where MLflow is (checked now: a server that does not answer fails the run before any work) and how the
    Evaluator scores and blesses."""
    from backends import tracking  # pylint: disable=import-outside-toplevel
    config = tracking.resolve(args.mlflow_uri, paths.state, args.pipeline_name,
                              paths.root if paths.remote else None)
    tracking.check_reachable(config)
    if backends.verbose():
        print(f"latentforge: MLflow at {config.uri}", flush=True)
    return run_request.evaluation_settings(args, config)


def _ray_training(args, paths):
    """The Trainer's Ray settings, checked now: a run asking for GPUs the cluster does not have fails here, not
    after the data stages, and not by waiting for resources forever. A cluster (--ray-address, RAY_ADDRESS) is
    joined now; a local Ray is only sized now and started when a Trainer executes (backends/local_ray.py), so a
    run whose Trainer comes from the TFX cache starts none."""
    if args.trainer == "in-process":
        return None
    from pipelines import pipeline  # pylint: disable=import-outside-toplevel
    from components.trainer import ray_train  # pylint: disable=import-outside-toplevel
    from backends import ray_cluster  # pylint: disable=import-outside-toplevel
    settings = run_request.ray_settings(args)
    if ray_cluster.cluster_address(settings.address):
        ray_cluster.connect(settings.address)
        resources = ray_train.worker_resources(settings)
    else:
        resources = ray_train.worker_resources(settings, ray_cluster.local_resources())
    fields = {k: v for k, v in vars(settings).items() if v is not None}
    return pipeline.RayTraining(settings=fields, storage_path=paths.ray_storage, resources=resources)
