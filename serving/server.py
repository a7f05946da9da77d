"""The model server: exported SavedModels behind TF Serving's REST API, on Ray Serve.

    GET  /v1/models                      the models served: name, version, family
    GET  /v1/models/NAME[/metadata]      version, family, signatures (inputs/outputs: dtype, shape), limits
    POST /v1/models/NAME:predict         {"signature_name": S, "instances": [...]} | {"inputs": ...}
    POST /v1/models/NAME:generate        {"n": N, "seed": S, "steps": T, "format": "json" | "png"}
    POST /v1/models/NAME:detect          {"instances": [IMAGE, ...]} | {"inputs": IMAGES}: an autoencoder's
                                         {"scores": [...], "anomaly": [bool, ...], "threshold": t}
    POST /v1/models/NAME:interpolate     {"seeds": [A, B]} | {"images": [A, B]}, "frames": F: a strip
    POST /v1/models/NAME:arithmetic      {"a": X, "b": X, "c": X}: decode(code(A) - code(B) + code(C))
    GET  /, /ui/NAME, /ui/assets/FILE    the explorer page (serving/explorer.py, serving/assets/)
    GET  /-/healthz                      Ray Serve's own health check (200 once the proxy is up)

Every response from a model carries the version that computed it in the header `X-Model-Version`.
A model comes from the MLflow registry (NAME@ALIAS, default @champion, or NAME/VERSION) or from a directory: a
SavedModel, or as TF Serving and our Pusher lay them out, a base directory of numbered versions (the highest is
served). Aliases and base directories are followed: each replica polls them every `poll_interval_s` and, when
they point at another version, loads that version next to the current one and swaps them; requests already
running finish on the version they started with, so none is dropped.

Requests to batchable signatures (every input has a batch dimension) are stacked by Ray Serve's `serve.batch`
into one TensorFlow call per signature; a stacked call that one request's values make fail (the pixel range is
checked inside the graph) is re-run request by request, so only that request gets the 400.

Ray Serve is touched here; the cluster is joined through backends/ray_cluster.py and MLflow reached only through
backends/tracking.py.
"""
import asyncio
import base64
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ray import serve
from starlette.responses import JSONResponse, Response

from backends import storage
from serving import explorer
from serving.images import png_grid
from serving.model import RequestError, ServedModel, split_rows, stack_rows
from serving.settings import SETTINGS, Deployment, Limits, ServerOptions, server_settings  # noqa: F401

VERSION_HEADER = "X-Model-Version"
_DRAIN_FACTOR = 8
APP_NAME = "latentforge"
_log = logging.getLogger("latentforge.serving")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where one served model comes from: a SavedModel directory, or a registered MLflow model."""
    name: str  # the NAME in /v1/models/NAME
    saved_model_dir: Optional[str] = None
    registered_name: Optional[str] = None
    alias: Optional[str] = None  # followed: the server moves with it
    version: Optional[str] = None  # pinned
    tracking_uri: Optional[str] = None

    @property
    def followed(self) -> bool:
        if self.saved_model_dir:
            return not _is_saved_model(self.saved_model_dir)
        return self.version is None


def _is_saved_model(directory: str) -> bool:
    return storage.exists(storage.join(directory, "saved_model.pb"))  # a local directory or object storage


def latest_saved_model(directory: str) -> Tuple[str, str]:
    """(SavedModel directory, version) of `directory`: itself (version "0"; its name when that is a number), or
    the highest numbered SavedModel under it, as TF Serving and TFX's Pusher lay versions out."""
    if _is_saved_model(directory):
        base = os.path.basename(os.path.normpath(directory))
        return directory, base if base.isdigit() else "0"
    versions = sorted((int(v) for v in storage.listdir(directory) if v.isdigit()
                       and _is_saved_model(storage.join(directory, v))), reverse=True)
    if not versions:
        raise FileNotFoundError(f"{directory}: neither a SavedModel (no saved_model.pb) nor a directory of numbered "
                                "SavedModel versions; give the folder latentforge's Pusher writes "
                                "(RUN_DIR/PIPELINE/serving/MODEL) or a SavedModel")
    return storage.join(directory, str(versions[0])), str(versions[0])


def parse_model_reference(text: str) -> Tuple[str, Optional[str], Optional[str]]:
    """NAME@ALIAS | NAME/VERSION | NAME -> (name, alias, version); a bare NAME follows @champion."""
    if "@" in text:
        name, _, alias = text.partition("@")
        if not name or not alias:
            raise ValueError(f"{text!r}: expected NAME@ALIAS, e.g. mnist-autoencoder@champion")
        return name, alias, None
    if "/" in text:
        name, _, version = text.rpartition("/")
        if not name or not version.isdigit():
            raise ValueError(f"{text!r}: expected NAME/VERSION with a version number, e.g. mnist-vae/3")
        return name, None, version
    if not text:
        raise ValueError("empty model name")
    return text, "champion", None


def directory_source(text: str) -> ModelSource:
    """[NAME=]DIR -> a ModelSource; NAME defaults to the folder's name (its parent's for a version folder).
    FileNotFoundError, naming what was expected, when DIR holds no SavedModel."""
    name, sep, directory = text.partition("=")
    if not sep:
        directory = text
        base = os.path.basename(os.path.normpath(directory))
        name = os.path.basename(os.path.dirname(os.path.normpath(directory))) if base.isdigit() else base
    latest_saved_model(directory)
    return ModelSource(name=name, saved_model_dir=storage.absolute(directory))


def registry_source(text: str, tracking_uri: str) -> ModelSource:
    """NAME[@ALIAS|/VERSION] in the registry at `tracking_uri` -> a ModelSource served as NAME."""
    name, alias, version = parse_model_reference(text)
    return ModelSource(name=name, registered_name=name, alias=alias, version=version, tracking_uri=tracking_uri)


def _current_version(source: ModelSource) -> str:
    """The version `source` points at now: the registry alias's (or the pinned one), the directory's highest."""
    if source.saved_model_dir:
        return latest_saved_model(source.saved_model_dir)[1]
    from backends import tracking  # pylint: disable=import-outside-toplevel
    config = tracking.TrackingConfig(uri=source.tracking_uri, experiment="")
    return tracking.registry_version(config, source.registered_name, source.alias, source.version)


def _load(source: ModelSource, version: str, limits: Limits,
          download_root: str) -> Tuple[ServedModel, Optional[str]]:
    """(version `version` of the model `source` names, the directory it was downloaded to or None)."""
    if source.saved_model_dir:
        directory = source.saved_model_dir
        if not _is_saved_model(directory):
            directory = storage.join(directory, version)
        return ServedModel(directory, source.name, version, limits), None
    from backends import tracking  # pylint: disable=import-outside-toplevel
    config = tracking.TrackingConfig(uri=source.tracking_uri, experiment="")
    download = tempfile.mkdtemp(prefix=f"{source.name}-v{version}-", dir=download_root)
    try:
        directory = tracking.download_saved_model(config, source.registered_name, version, download)
        return ServedModel(directory, source.name, version, limits), download
    except BaseException:
        shutil.rmtree(download, ignore_errors=True)
        raise


def _describe(source: ModelSource) -> str:
    if source.saved_model_dir:
        return source.saved_model_dir
    return f"{source.registered_name}@{source.alias}" if source.followed else f"{source.registered_name}/{source.version}"


def _json_response(content: Dict[str, Any], status: int = 200, version: Optional[str] = None):
    return JSONResponse(content, status_code=status, headers={VERSION_HEADER: version} if version else None)


def _error(status: int, message: str, version: Optional[str] = None):
    return _json_response({"error": message}, status, version)


class ModelServer:
    """The Ray Serve deployment: one instance per replica, holding every served model."""

    def __init__(self, sources: List[ModelSource], options: ServerOptions = ServerOptions()):
        names = [s.name for s in sources]
        if not sources or len(set(names)) != len(names):
            raise ValueError(f"model names must be given and distinct; got {names}")
        self.options = options
        self.sources = {s.name: s for s in sources}
        self.class_examples = options.class_examples  # an explorer.ClassExamples, or None
        self._download_root = tempfile.mkdtemp(prefix="latentforge-serve-")
        self.models: Dict[str, ServedModel] = {}
        self._downloads: Dict[str, Optional[str]] = {}
        for source in sources:
            self.models[source.name], self._downloads[source.name] = _load(
                source, _current_version(source), options.limits, self._download_root)
        for model in self.models.values():
            _log.info("serving %s version %s (%s: %s)", model.name, model.version, model.family,
                      ", ".join(sorted(model.signatures)))
        self._batched_predict.set_max_batch_size(options.max_batch_size)
        self._batched_predict.set_batch_wait_timeout_s(options.batch_wait_timeout_s)
        self._stop = threading.Event()
        if options.poll_interval_s > 0 and any(s.followed for s in sources):
            threading.Thread(target=self._follow_registry, name="follow-registry", daemon=True).start()

    def __del__(self):  # Ray Serve calls it when the replica stops
        if hasattr(self, "_stop"):
            self._stop.set()
        if hasattr(self, "_download_root"):
            shutil.rmtree(self._download_root, ignore_errors=True)

    # ------------------------------------------------------------------ the registry's aliases
    def _follow_registry(self) -> None:
        while not self._stop.wait(self.options.poll_interval_s):
            for source in self.sources.values():
                if source.followed:
                    self.refresh(source.name)

    def refresh(self, name: str) -> bool:
        """Loads the version the alias (or base directory) points at now if it is not the served one; True when
        it swapped."""
        source, current = self.sources[name], self.models[name]
        try:
            version = _current_version(source)
            if version == current.version:
                return False
            replacement, download = _load(source, version, self.options.limits, self._download_root)
        except Exception as error:  # pylint: disable=broad-except
            # The registry being away must not take the model down: keep serving what is loaded.
            _log.warning("%s: cannot follow %s (%s); still serving version %s", name, _describe(source), error,
                         current.version)
            return False
        self.models[name] = replacement  # one reference swap: running requests keep the model they hold
        # The old version's variables are in memory: its files can go.
        old_download, self._downloads[name] = self._downloads[name], download
        if old_download:
            shutil.rmtree(old_download, ignore_errors=True)
        _log.info("%s: %s moved to version %s; now serving it (was %s)", name, _describe(source), version,
                  current.version)
        return True

    # ------------------------------------------------------------------ HTTP
    async def __call__(self, request):
        path, method = request.url.path.rstrip("/") or "/", request.method
        model: Optional[ServedModel] = None
        try:
            if path == "/" or path.startswith("/ui/"):
                return self._page(request, path, method)
            if path == "/v1/models":
                self._require(method, "GET", path)
                return _json_response({"models": [{"name": m.name, "version": m.version, "family": m.family}
                                                  for m in self.models.values()]})
            if not path.startswith("/v1/models/"):
                raise RequestError(f"no route {path}: the API is /v1/models/NAME[:VERB] (predict, generate, detect, "
                                   "interpolate, arithmetic); the explorer is / and /ui/NAME", status=404)
            name, _, verb = path[len("/v1/models/"):].partition(":")
            if name.endswith("/metadata") and not verb:  # TF Serving's metadata URL: the same answer
                name = name[:-len("/metadata")]
            resource = name.rpartition("/")[2] if "/" in name and not verb else ""
            if resource in ("examples", "projection"):  # the explorer's test images and their codings
                model = self._model(name[:-len(resource) - 1])
                self._require(method, "GET", path)
                if resource == "examples":
                    content = explorer.examples(model, self.class_examples, dict(request.query_params))
                else:
                    content = await asyncio.get_running_loop().run_in_executor(
                        None, explorer.projection, model, self.class_examples)
                return _json_response(content, version=model.version)
            model = self._model(name)
            if not verb:
                self._require(method, "GET", path)
                return _json_response(model.describe(), version=model.version)
            self._require(method, "POST", path)
            body = await self._json_body(request)
            if verb == "predict":
                signature = body.get("signature_name", "serving_default") if isinstance(body, dict) else ""
                body = explorer.with_uploads(body, model, signature)
                signature, inputs, row_format = model.parse_predict(body)
                outputs, model = await self._predict(model, signature, inputs)
                return _json_response(model.format_outputs(outputs, row_format), version=model.version)
            if verb == "generate":
                signature, inputs, as_png = model.parse_generate(body)
                outputs = await asyncio.get_running_loop().run_in_executor(None, model.run, signature, inputs)
                content = _images_content(outputs["images"], {"format": "png" if as_png else "json"})
                return _json_response(content, version=model.version)
            if verb == "detect":
                inputs, _ = model.parse_detect(explorer.with_uploads(body, model, "anomaly_score"))
                outputs, model = await self._predict(model, "anomaly_score", inputs)
                return _json_response(model.detection(outputs), version=model.version)
            if verb in ("interpolate", "arithmetic"):
                compute = explorer.interpolate if verb == "interpolate" else explorer.arithmetic
                images = await asyncio.get_running_loop().run_in_executor(None, compute, model, body,
                                                                          self.class_examples)
                return _json_response(_images_content(images, body, columns=len(images)), version=model.version)
            raise RequestError(f"unknown verb :{verb}: use :predict, :generate, :detect, :interpolate or "
                               ":arithmetic", status=404)
        except RequestError as error:
            return _error(error.status, str(error), model.version if model else None)
        except Exception as error:  # pylint: disable=broad-except
            _log.exception("request %s %s failed", method, path)
            return _error(500, f"internal error: {type(error).__name__}: {error}",
                          model.version if model else None)

    def _page(self, request, path: str, method: str):
        """The explorer: GET / (the models), /ui/NAME (one model's page), /ui/assets/FILE (its files only)."""
        self._require(method, "GET", path)
        if path.startswith("/ui/assets/"):
            # The path as sent (still percent-encoded), so that an encoded ../ is seen for what it is.
            raw = request.scope.get("raw_path", path.encode()).decode("latin-1").partition("?")[0]
            found = explorer.asset_file(raw[len("/ui/assets/"):])
            if found is None:
                raise RequestError(f"no file {path}", status=404)
            with open(found, "rb") as f:
                return Response(f.read(), media_type=explorer.content_type(found),
                                headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
        if path != "/":
            self._model(path[len("/ui/"):])  # 404 for a model this server does not serve
        with open(os.path.join(explorer.ASSETS_DIR, "index.html" if path == "/" else "explorer.html"), "rb") as f:
            return Response(f.read(), media_type="text/html; charset=utf-8",
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    @staticmethod
    def _require(method: str, expected: str, path: str) -> None:
        if method != expected:
            raise RequestError(f"{method} {path}: use {expected}", status=405)

    def _model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise RequestError(f"no model {name!r}; this server serves {sorted(self.models)}", status=404)
        return self.models[name]

    async def _json_body(self, request) -> Any:
        limit = self.options.limits.max_body_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > _DRAIN_FACTOR * limit:
                break
        # An oversized body is read to its end (and dropped) up to _DRAIN_FACTOR x the limit, so that a client
        # still sending it gets the 413 instead of a reset connection.
        if size > limit:
            raise RequestError(f"the body is over {limit} bytes (the server's --max-body-mb): send fewer "
                               "instances per request", status=413)
        if not size:
            raise RequestError("the body is empty: send a JSON object")
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as error:
            raise RequestError(f"malformed JSON: {error}") from None

    # ------------------------------------------------------------------ running signatures
    async def _predict(self, model: ServedModel, signature: str,
                       inputs: Dict[str, Any]) -> Tuple[Dict[str, Any], ServedModel]:
        if self.options.max_batch_size > 1 and model.batchable(signature):
            outcome = await self._batched_predict((model, signature, inputs))
        else:
            outcome = await asyncio.get_running_loop().run_in_executor(None, _run_one, model, signature, inputs)
        if isinstance(outcome, RequestError):
            raise outcome
        return outcome, model

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)  # set from the options in __init__
    async def _batched_predict(self, items: List[Tuple[ServedModel, str, Dict[str, Any]]]) -> List[Any]:
        """One stacked call per (model version, signature) among the waiting requests."""
        groups: Dict[Tuple[int, str], List[int]] = {}
        for index, (model, signature, _) in enumerate(items):
            groups.setdefault((id(model), signature), []).append(index)
        results: List[Any] = [None] * len(items)
        loop = asyncio.get_running_loop()
        for indices in groups.values():
            model, signature, _ = items[indices[0]]
            requests = [items[i][2] for i in indices]
            outcomes = await loop.run_in_executor(None, _run_stacked, model, signature, requests)
            for i, outcome in zip(indices, outcomes):
                results[i] = outcome
        return results


def _images_content(images, body: Any, columns: Optional[int] = None) -> Dict[str, Any]:
    """Images (N, H, W, C) in [0, 1] as an answer: one PNG grid (base64; `columns` wide, default square) when
    the body asked for "format": "png" (the default of :interpolate and :arithmetic), else the arrays."""
    as_png = not isinstance(body, dict) or body.get("format", "png") == "png"
    if isinstance(body, dict) and body.get("format", "png") not in ("png", "json"):
        raise RequestError(f"format {body['format']!r}: use \"json\" or \"png\"")
    if as_png:
        return {"format": "png", "n": len(images),
                "png_base64": base64.b64encode(png_grid(images, columns)).decode("ascii")}
    return {"format": "json", "n": len(images), "images": images.tolist()}


def _run_one(model: ServedModel, signature: str, inputs: Dict[str, Any]):
    try:
        return model.run(signature, inputs)
    except RequestError as error:
        return error


def _run_stacked(model: ServedModel, signature: str, requests: List[Dict[str, Any]]) -> List[Any]:
    """Outputs per request of one call on the stacked inputs; request by request when that call is refused."""
    if len(requests) == 1:
        return [_run_one(model, signature, requests[0])]
    stacked, counts = stack_rows(requests)
    try:
        return split_rows(model.run(signature, stacked), counts)
    except RequestError:
        return [_run_one(model, signature, r) for r in requests]


# ---------------------------------------------------------------------- starting it on Ray Serve

def application(sources: List[ModelSource], options: ServerOptions = ServerOptions(),
                deployment: Deployment = Deployment()):
    """The Ray Serve application (bound deployment); `serve run`-able."""
    return serve.deployment(ModelServer, name="ModelServer").options(**deployment.ray_options()).bind(
        sources, options)


def build_app(args: Dict[str, str]):
    """An application builder for Ray Serve's own CLI and config files:

        serve run serving.server:build_app saved_model=runs/latentforge/serving/stacked_ae
        serve run serving.server:build_app model=mnist-autoencoder@champion mlflow_uri=http://HOST:5000 \
            replicas=2 max_batch_size=32

    Keys: saved_model ([NAME=]DIR) and/or model (NAME[@ALIAS|/VERSION]), comma-separated for several;
    mlflow_uri (default MLFLOW_TRACKING_URI); and serving.settings.SETTINGS (replicas, max_batch_size,
    max_generated, ...: the same settings and defaults as `latentforge serve`'s flags)."""
    known = {"saved_model", "model", "mlflow_uri", *SETTINGS}
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}; known: {sorted(known)}")
    sources = [directory_source(text) for text in filter(None, args.get("saved_model", "").split(","))]
    uri = args.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    for text in filter(None, args.get("model", "").split(",")):
        if not uri:
            raise ValueError(f"model={text}: registry models need mlflow_uri=... (or MLFLOW_TRACKING_URI)")
        sources.append(registry_source(text, uri))
    if not sources:
        raise ValueError("give saved_model=DIR and/or model=NAME[@ALIAS|/VERSION]")
    options, deployment = server_settings({k: v for k, v in args.items() if k in SETTINGS})
    return application(sources, options, deployment)


def start(sources: List[ModelSource], options: ServerOptions = ServerOptions(),
          deployment: Deployment = Deployment(), *, host: str = "127.0.0.1", port: int = 8000,
          ray_address: Optional[str] = None, access_log: bool = False) -> str:
    """Connects to Ray (a cluster, or a local Ray in this process), deploys the server and returns its URL once
    every replica has loaded its models."""
    import backends  # pylint: disable=import-outside-toplevel
    from backends import ray_cluster  # pylint: disable=import-outside-toplevel
    ray_cluster.connect(ray_address)
    # Serve's driver-side INFO lines ("Started Serve", "Application ... is ready") and serve.run's warning that its
    # default HTTP options differ from the ones serve.start just applied: this command says it itself. Set before
    # and after serve.start, which configures Serve's logger.
    quiet = (lambda: logging.getLogger("ray.serve").setLevel(logging.ERROR)) if not backends.verbose() else (
        lambda: None)
    quiet()
    serve.start(http_options={"host": host, "port": port})
    quiet()
    started = time.monotonic()
    serve.run(application(sources, options, deployment), name=APP_NAME, route_prefix="/",
              logging_config={"enable_access_log": access_log})
    _log.info("serving %s on http://%s:%d (ready in %.0f s)", ", ".join(s.name for s in sources), host, port,
              time.monotonic() - started)
    return f"http://{host}:{port}"


def stop() -> None:
    """Deletes the application and shuts Ray Serve down."""
    serve.shutdown()
