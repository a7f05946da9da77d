"""`latentforge serve` and `latentforge predict`: their flags and what they do, beside the server and client
they drive. The settings' defaults come from serving/settings.py, as Ray Serve's `serve run
serving.server:build_app` takes them."""
import dataclasses
import os
import signal
import sys
import threading
import time

from pipelines.cli_common import (EXIT_BAD_INPUT, EXIT_CLUSTER, EXIT_ERROR, EXIT_OK, CliError, non_negative_float,
                                  positive_int)
from serving import settings
from serving.settings import SETTINGS


STOP_TIMEOUT_S = 45.0  # how long Ctrl-C waits for Ray Serve to shut down before the process leaves


def add_serve_parser(commands) -> None:
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
    limits = serve.add_argument_group("request limits (beyond them: 400, or 413 for the body)")
    for name, setting in SETTINGS.items():
        group = limits if name.startswith("max_") and name not in ("max_replicas", "max_batch_size") else scaling
        kind = positive_int if setting.kind is int else non_negative_float
        default = "" if setting.default is None else f" (default {setting.default:g})"
        group.add_argument("--" + name.replace("_", "-"), type=kind, metavar="N" if setting.kind is int else "X",
                           help=setting.help + default)
    serve.add_argument("--access-log", action="store_true", help="log every request (Ray Serve's access log)")
    serve.add_argument("--class-examples", metavar="SOURCE",
                       help="the explorer's latent arithmetic by class: a labelled source (e.g. idx:data/mnist-sample) "
                       "whose test split's mean codings stand for each class")


def add_predict_parser(commands) -> None:
    predict = commands.add_parser("predict", help="call a running model server (latentforge serve)")
    predict.add_argument("--url", default="http://127.0.0.1:8000")
    predict.add_argument("--model", required=True, help="the served model's NAME")
    what = predict.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", help="images to send: .npy, .npz (its one array) or .png (one image)")
    what.add_argument("--generate", type=positive_int, metavar="N", help="generate N images")
    what.add_argument("--info", action="store_true", help="print the model's version and signatures")
    predict.add_argument("--signature", default="serving_default", help="with --input (default serving_default)")
    predict.add_argument("--seed", type=int, default=0, help="with --generate")
    predict.add_argument("--steps", type=positive_int, help="with --generate, DDPM: sampling steps")
    predict.add_argument("--output", help="write the result: .png (images as a grid), .npy (one output) or .npz")


def _serve_sources(args):
    """ModelSources for --model / --saved-model; a registry that does not answer, or lacks a model, fails here."""
    from backends import storage, tracking  # pylint: disable=import-outside-toplevel
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
        if storage.is_uri(args.run_dir):  # the registry is in the run directory's local state (backends/storage.py)
            root = storage.join(storage.absolute(args.run_dir), args.pipeline_name)
            config = tracking.resolve(args.mlflow_uri, storage.local_state_dir(root), args.pipeline_name, root)
        else:
            config = tracking.resolve(args.mlflow_uri, os.path.abspath(os.path.join(args.run_dir, args.pipeline_name)),
                                      args.pipeline_name)
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


def read_class_examples(source: str, per_class: int = 200):
    """The explorer's ClassExamples: the test split (else the last split) of a labelled source, at most
    `per_class` images per class, as (N, H, W, C) in [0, 1]."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from components.image_example_gen import sources  # pylint: disable=import-outside-toplevel
    from serving import explorer  # pylint: disable=import-outside-toplevel
    info = sources.probe(sources.parse_source(source))
    if sources.kind_of(info.spec).read_split is None:
        raise ValueError(f"--class-examples {source}: give the images as files (idx:DIR, folder:DIR or npz:FILE); "
                         "TFDS datasets are read by the pipeline's Beam components only")
    if not info.num_classes:
        raise ValueError(f"--class-examples {source}: the source has no labels (classes)")
    names = [s.name for s in info.splits]
    split = "test" if "test" in names else names[-1]
    images, labels, counts = [], [], {}
    for image, label in sources.read_split(info, split):
        if counts.get(label, 0) < per_class:
            counts[label] = counts.get(label, 0) + 1
            images.append(image)
            labels.append(label)
        if len(counts) == info.num_classes and min(counts.values()) >= per_class:
            break
    pixels = np.stack(images).astype(np.float32).reshape(len(images), *info.image_shape) / 255.0
    return explorer.ClassExamples(pixels, np.asarray(labels, np.int64), info.class_names)


def cmd_serve(args) -> int:
    from backends import ray_cluster  # pylint: disable=import-outside-toplevel
    from serving import server  # pylint: disable=import-outside-toplevel
    if args.detach and not ray_cluster.cluster_address(args.ray_address):
        raise CliError("--detach leaves the server on a Ray cluster: give --ray-address (a local Ray ends with "
                       "this command)")
    sources = _serve_sources(args)
    try:
        options, deployment = settings.server_settings({name: getattr(args, name) for name in SETTINGS})
    except ValueError as e:
        raise CliError(str(e)) from e
    if args.class_examples:
        try:  # read here, once: the replicas get the images with their options
            examples = read_class_examples(args.class_examples)
        except (ValueError, OSError) as e:
            message = str(e)
            raise CliError(message if message.startswith("--class-examples") else
                           f"--class-examples {args.class_examples}: {message}") from e
        options = dataclasses.replace(options, class_examples=examples)
    url = server.start(sources, options, deployment, host=args.host, port=args.port,
                       ray_address=args.ray_address, access_log=args.access_log)
    first = sources[0].name
    print(f"latentforge: serving {', '.join(s.name for s in sources)} at {url}\n"
          f"  explorer: {url}/ui/{first} (every model: {url}/)\n"
          f"  curl {url}/v1/models/{first}\n"
          f"  latentforge predict --url {url} --model {first} --info", flush=True)
    if args.detach:
        return EXIT_OK
    print("latentforge: Ctrl-C stops the server", flush=True)
    # Python runs a signal's handler in the main thread, when that thread next executes: a SIGINT the kernel hands
    # to one of Ray's threads (libraries block signals in the main thread while they start theirs) left a main
    # thread in a long sleep deaf to Ctrl-C for its whole length. Short sleeps, and SIGINT unblocked here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("latentforge: stopping the server", flush=True)
        # Bounded: under load Ray Serve's shutdown has kept a Ctrl-C'd server alive for minutes, and Ray's own exit
        # hook (ray.shutdown) then waits on the stuck call. Past the bound the local Ray this process started is
        # stopped (killed if it must be) and the process leaves without running the exit hooks.
        stopper = threading.Thread(target=_stop_serving, name="latentforge-serve-stop", daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT_S)
        if stopper.is_alive():
            print(f"latentforge: Ray Serve did not stop within {STOP_TIMEOUT_S:.0f} s; stopping the local Ray and "
                  "leaving", flush=True)
            ray_cluster.stop_local_head()
            sys.stderr.flush()
            os._exit(EXIT_OK)  # pylint: disable=protected-access
    return EXIT_OK


def _stop_serving() -> None:
    """Ray Serve, the driver's connection and the local Ray this process started (if any), in that order."""
    from backends import ray_cluster  # pylint: disable=import-outside-toplevel
    from serving import server  # pylint: disable=import-outside-toplevel
    server.stop()
    ray_cluster.shutdown()


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
