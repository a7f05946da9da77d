"""A SavedModel as the server sees it: its family and signatures, and requests checked before TensorFlow runs.

No Ray, no MLflow, no HTTP here: `ServedModel` turns the JSON a client sent (TF Serving's REST shapes) into
arrays, runs a signature and turns the outputs back into JSON; every problem with a request is a `RequestError`
with the HTTP status and a message naming the input and what was expected.

    row format      {"signature_name": "encode", "instances": [IMAGE, IMAGE, ...]}     -> {"predictions": [...]}
                    (an instance is a dict {input: value} when the signature has several inputs)
    columnar        {"signature_name": "generate", "inputs": {"n": 4, "seed": 0}}      -> {"outputs": {...}}
                    (or "inputs": VALUE for a one-input signature)

These are TF Serving's own answers: rows come back as "predictions" (one entry per instance; a dict when the
signature has several outputs), columnar requests as "outputs".
"""
import dataclasses
import json
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from backends import storage
from serving.settings import Limits  # noqa: F401  (what a ServedModel checks requests against)

DEFAULT_SAMPLE_STEPS = 50  # DDIM steps of a DDPM exported before its SavedModel carried `metadata`


class RequestError(ValueError):
    """A request the server refuses: `status` is the HTTP status (4xx), the message says what to change."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# What the exports from before the SavedModel's `metadata` (or before its `latent_signature`) were, told by a
# signature only their family had then: (signature, what the metadata says now). A frozen record of those exports;
# every family's export now writes its own description into the metadata (trainers/export.py).
_OLDER_EXPORTS = (
    ("generate_from_noise", {"family": "diffusion", "latent_signature": "generate_from_noise"}),
    ("generate_from_codings", {"family": "gan", "latent_signature": "generate_from_codings"}),
    ("sample", {"family": "vae", "latent_signature": "decode"}),
    ("reconstruct", {"family": "autoencoder"}),
    ("classify", {"family": "classifier"}),
)


def _older_export(names) -> Optional[Dict[str, Any]]:
    names = set(names)
    return next((dict(metadata) for signature, metadata in _OLDER_EXPORTS if signature in names), None)


def read_metadata(loaded) -> Dict[str, Any]:
    """The exporter's metadata (trainers/export.py), also from inside MLflow's wrapper module (`.saved`); for an
    older export, what its signatures tell."""
    older = _older_export(loaded.signatures)
    for holder in (loaded, getattr(loaded, "saved", None)):
        variable = getattr(holder, "metadata", None)
        if variable is not None:
            metadata = json.loads(variable.numpy().decode())
            return {**older, **metadata} if older and older["family"] == metadata.get("family") else metadata
    if older is None:
        raise ValueError(f"not a latentforge SavedModel: its signatures {sorted(loaded.signatures)} match no model "
                         "family")
    return older


def _spec_json(spec: tf.TensorSpec) -> Dict[str, Any]:
    return {"dtype": spec.dtype.name, "shape": [-1 if d is None else int(d) for d in spec.shape.as_list()]}


def _assertion_message(error: tf.errors.InvalidArgumentError) -> str:
    """The exporter's own check message out of TensorFlow's error text."""
    for line in error.message.splitlines():
        if "assertion failed:" in line:
            text = line.split("assertion failed:", 1)[1].strip()
            # "[images: every value ...] [got min] [-0.5] [max] [1]" -> "images: every value ... got min -0.5 max 1"
            text = text.replace("\\'", "'")
            return " ".join(part.strip(" []") for part in text.split("] [")).strip()
    return error.message.splitlines()[0]


class ServedModel:
    """One loaded version of a model: `name`, `version`, `family`, `signatures`, `metadata`."""

    def __init__(self, directory: str, name: str, version: str, limits: Limits = Limits()):
        self.directory, self.name, self.version, self.limits = directory, name, str(version), limits
        storage.enable_tensorflow(directory)  # a SavedModel on object storage is read where it is
        self.loaded = tf.saved_model.load(directory)
        self.signatures = {k: v for k, v in self.loaded.signatures.items()}
        self.metadata = read_metadata(self.loaded)
        self.family = self.metadata["family"]
        self.inputs = {k: f.structured_input_signature[1] for k, f in self.signatures.items()}
        self.outputs = {k: f.structured_outputs for k, f in self.signatures.items()}

    # What GET /v1/models/NAME answers.
    def describe(self) -> Dict[str, Any]:
        signatures = {name: {"inputs": {k: _spec_json(s) for k, s in sorted(self.inputs[name].items())},
                             "outputs": {k: _spec_json(s) for k, s in sorted(self.outputs[name].items())}}
                      for name in sorted(self.signatures)}
        return {"name": self.name, "version": self.version, "family": self.family, "signatures": signatures,
                "generative": self.generative, "metadata": self.metadata,
                "limits": dataclasses.asdict(self.limits)}

    @property
    def generate_signature(self) -> str:
        """The signature :generate calls (n, seed, ...): the exporter names it; older exports had generate or
        sample. "" when the model does not generate."""
        name = self.metadata.get("generate_signature")
        if name is None:
            name = next((n for n in ("generate", "sample") if n in self.signatures), "")
        return name if name in self.signatures else ""

    @property
    def generative(self) -> bool:
        return bool(self.generate_signature)

    def generate_defaults(self) -> Dict[str, int]:
        """Values of the generating signature's inputs besides n and seed (a DDPM's steps) when a request leaves
        them out: the exporter's `generate_defaults`; a DDPM exported before those: its sample_steps."""
        defaults = dict(self.metadata.get("generate_defaults", {}))
        if "steps" in self.inputs[self.generate_signature] and "steps" not in defaults:
            defaults["steps"] = self.metadata.get("sample_steps", DEFAULT_SAMPLE_STEPS)
        return defaults

    def batchable(self, signature: str) -> bool:
        """Whether requests to `signature` can be stacked into one call: every input has a batch dimension."""
        return all(spec.shape.rank and spec.shape[0] is None for spec in self.inputs[signature].values())

    # :predict
    def parse_predict(self, body: Any) -> Tuple[str, Dict[str, np.ndarray], bool]:
        """(signature, inputs as arrays, whether the request was row format) from a :predict body."""
        if not isinstance(body, dict):
            raise RequestError('the body must be a JSON object: {"signature_name": ..., "instances": [...]} or '
                               '{"inputs": ...}')
        signature = body.get("signature_name", "serving_default")
        if signature not in self.signatures:
            raise RequestError(f"unknown signature_name {signature!r}: {self.name} has "
                               f"{sorted(self.signatures)}", status=400)
        unknown = set(body) - {"signature_name", "instances", "inputs"}
        if unknown:
            raise RequestError(f"unknown field(s) {sorted(unknown)}: a :predict body has signature_name and "
                               "either instances (row format) or inputs (columnar)")
        if ("instances" in body) == ("inputs" in body):
            raise RequestError('give exactly one of "instances" (row format) and "inputs" (columnar)')
        specs = self.inputs[signature]
        if "instances" in body:
            instances = body["instances"]
            if not self.batchable(signature):
                raise RequestError(f"signature {signature!r} takes scalar inputs {sorted(specs)}: send them "
                                   'columnar, {"inputs": {...}}' + (", or use :generate" if self.generative else ""))
            if not isinstance(instances, list) or not instances:
                raise RequestError('"instances" must be a non-empty list')
            if len(instances) > self.limits.max_instances:
                raise RequestError(f"{len(instances)} instances: at most {self.limits.max_instances} per request")
            if len(specs) == 1:
                (input_name,) = specs
                columns = {input_name: [i[input_name] if isinstance(i, dict) and set(i) == {input_name} else i
                                        for i in instances]}
            else:
                if not all(isinstance(i, dict) and set(i) == set(specs) for i in instances):
                    raise RequestError(f"signature {signature!r} has inputs {sorted(specs)}: each instance must "
                                       "be an object with exactly those keys")
                columns = {k: [i[k] for i in instances] for k in specs}
        else:
            given = body["inputs"]
            if len(specs) == 1 and not (isinstance(given, dict) and set(given) == set(specs)):
                given = {next(iter(specs)): given}
            if not isinstance(given, dict) or set(given) != set(specs):
                raise RequestError(f"signature {signature!r} takes inputs {sorted(specs)}; got "
                                   f"{sorted(given) if isinstance(given, dict) else type(given).__name__}")
            columns = given
        arrays = {k: self._array(signature, k, v) for k, v in columns.items()}
        rows = [len(a) for a in arrays.values() if a.ndim]
        if rows and max(rows) > self.limits.max_instances:
            raise RequestError(f"{max(rows)} rows: at most {self.limits.max_instances} per request")
        if "n" in arrays:  # generate/sample called by :predict: the same limits as :generate
            self._check_n(int(arrays["n"]))
        if "steps" in arrays:
            self._check_steps(int(arrays["steps"]))
        return signature, arrays, "instances" in body

    def _check_n(self, n: int) -> None:
        if not 1 <= n <= self.limits.max_generated:
            raise RequestError(f"n={n}: must be between 1 and {self.limits.max_generated} (the server's "
                               "--max-generated)")

    def _check_steps(self, steps: int) -> None:
        limit = min(self.limits.max_steps, self.metadata.get("timesteps", self.limits.max_steps))
        if not 1 <= steps <= limit:
            raise RequestError(f"steps={steps}: must be between 1 and {limit} (the model's T and the server's "
                               "--max-steps)")

    def _array(self, signature: str, name: str, value: Any) -> np.ndarray:
        spec = self.inputs[signature][name]
        expected = f"{spec.dtype.name} of shape {tuple(-1 if d is None else d for d in spec.shape.as_list())}"
        try:
            array = np.asarray(value)
        except ValueError:
            array = np.asarray(value, dtype=object)
        where = f"signature {signature!r} input {name!r}"
        if array.dtype == object:
            raise RequestError(f"{where}: not a rectangular array (rows of different lengths?); expected {expected}")
        if spec.dtype.is_floating and array.dtype.kind not in "iuf":
            raise RequestError(f"{where}: expected numbers ({expected}); got {array.dtype.kind!r} values "
                               f"({_kind_name(array)})")
        if spec.dtype.is_integer:
            if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
                array = array.astype(np.int64)
            if array.dtype.kind not in "iu":
                raise RequestError(f"{where}: expected integers ({expected}); got {_kind_name(array)}")
            info = np.iinfo(spec.dtype.as_numpy_dtype)
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise RequestError(f"{where}: values outside {spec.dtype.name}")
        if not spec.shape.is_compatible_with(array.shape):
            raise RequestError(f"{where}: expected {expected}; got shape {array.shape}")
        return array.astype(spec.dtype.as_numpy_dtype)

    def run(self, signature: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Calls the signature; the exporter's in-graph checks (pixel range, n, steps) become RequestErrors."""
        try:
            outputs = self.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.InvalidArgumentError as error:
            raise RequestError(f"signature {signature!r}: {_assertion_message(error)}") from None
        return {k: v.numpy() for k, v in outputs.items()}

    @staticmethod
    def format_outputs(outputs: Dict[str, np.ndarray], row_format: bool) -> Dict[str, Any]:
        """TF Serving's response: rows -> {"predictions": [...]}, columnar -> {"outputs": ...}."""
        if not row_format:
            values = {k: v.tolist() for k, v in outputs.items()}
            return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values())).tolist()}
        columns = {k: v.tolist() for k, v in outputs.items()}
        count = len(next(iter(columns.values())))
        return {"predictions": [{k: column[i] for k, column in columns.items()} for i in range(count)]}

    # :detect
    @property
    def anomaly_threshold(self) -> Optional[float]:
        """The anomaly score above which :detect calls an image anomalous (the Trainer calibrated it on the eval
        split for a target false-positive rate); None when the SavedModel carries none."""
        calibration = self.metadata.get("anomaly")
        return float(calibration["threshold"]) if calibration and "anomaly_score" in self.signatures else None

    def parse_detect(self, body: Any) -> Tuple[Dict[str, np.ndarray], bool]:
        """(images, whether the request was row format) from a :detect body: {"instances": [IMAGE, ...]} or
        {"inputs": IMAGES}, images in the model's pixel range as for :predict's anomaly_score."""
        if self.anomaly_threshold is None:
            raise RequestError(f"{self.name} has no anomaly threshold: :detect needs an autoencoder whose "
                               "SavedModel carries one (`latentforge run` calibrates it; --anomaly-fpr sets the "
                               f"rate); {self.name} is a {self.family}" + (", exported without one"
                                                                         if "anomaly_score" in self.signatures
                                                                         else ""))
        if isinstance(body, dict) and "signature_name" in body:
            raise RequestError(":detect always runs anomaly_score: leave out signature_name")
        _, inputs, row_format = self.parse_predict({**body, "signature_name": "anomaly_score"}
                                                   if isinstance(body, dict) else body)
        return inputs, row_format

    def detection(self, outputs: Dict[str, np.ndarray]) -> Dict[str, Any]:
        """:detect's answer: each image's score, whether it is above the threshold, and the threshold."""
        scores, threshold = outputs["scores"], self.anomaly_threshold
        return {"scores": scores.tolist(), "anomaly": (scores > threshold).tolist(), "threshold": threshold}

    # :generate
    def parse_generate(self, body: Any) -> Tuple[str, Dict[str, np.ndarray], bool]:
        """(signature, inputs, as_png) from a :generate body {"n": N, "seed": S, "steps": T, "format": "png"} (a
        conditional model's also "labels": ids or class names; a conditional DDPM's "guidance": w; a StyleGAN's
        "truncation": psi)."""
        if not self.generative:
            raise RequestError(f"{self.name} ({self.family}) does not generate; use :predict")
        if not isinstance(body, dict):
            raise RequestError('the body must be a JSON object, e.g. {"n": 16, "seed": 0}')
        signature = self.generate_signature
        allowed = {"n", "seed", "format"} | set(self.inputs[signature])
        unknown = set(body) - allowed
        if unknown:
            raise RequestError(f"unknown field(s) {sorted(unknown)}: {self.family} :generate takes {sorted(allowed)}")
        fmt = body.get("format", "json")
        if fmt not in ("json", "png"):
            raise RequestError(f'format {fmt!r}: "json" (the images as arrays) or "png" (a base64 PNG grid)')
        n = _integer(body.get("n", 1), "n")
        self._check_n(n)
        inputs = {"n": np.int32(n), "seed": np.int32(_integer(body.get("seed", 0), "seed"))}
        defaults = self.generate_defaults()
        for name in sorted(set(self.inputs[signature]) - {"n", "seed"}):
            if name not in body and name not in defaults:
                raise RequestError(f"{name}: {self.name} :generate needs it")
            value = body.get(name, defaults.get(name))
            if name == "labels":
                inputs[name] = self._labels(value)
            elif name == "guidance":
                inputs[name] = np.float32(_guidance(value))
            elif name == "truncation":
                inputs[name] = np.float32(_truncation(value))
            else:
                value = _integer(value, name)
                if name == "steps":
                    self._check_steps(value)
                inputs[name] = np.int32(value)
        return signature, inputs, fmt == "png"

    def _labels(self, value: Any) -> np.ndarray:
        """A conditional model's labels: a class id or name, or a list of them (repeated over the n images)."""
        names = list(self.metadata.get("class_names", []))
        count = int(self.metadata.get("num_classes", len(names)))
        values = value if isinstance(value, list) else [value]
        if not values:
            raise RequestError("labels: give at least one class id or name")
        ids = []
        for item in values:
            if isinstance(item, str):
                if item not in names:
                    raise RequestError(f"labels: unknown class name {item!r}; the classes are "
                                       f"{names or list(range(count))}")
                ids.append(names.index(item))
            else:
                label = _integer(item, "labels")
                if not 0 <= label < count:
                    raise RequestError(f"labels: class id {label} is out of range: [0, {count - 1}]"
                                       + (f" ({', '.join(names)})" if names else ""))
                ids.append(label)
        return np.asarray(ids, np.int32)


def _truncation(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise RequestError(f"truncation: expected psi in [0, 1] (1: none, 0: the average image), got "
                           f"{json.dumps(value)}")
    return float(value)


def _guidance(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise RequestError(f"guidance: expected a number >= 0 (0: unconditional, 1: conditional, more: guided), got "
                           f"{json.dumps(value)}")
    return float(value)


def _kind_name(array: np.ndarray) -> str:
    return {"U": "strings", "S": "bytes", "b": "booleans", "f": "floats", "O": "objects"}.get(array.dtype.kind,
                                                                                           str(array.dtype))


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and
                                                                           not value.is_integer()):
        raise RequestError(f"{name}: expected an integer, got {json.dumps(value)}")
    if abs(value) > 2 ** 31 - 1:
        raise RequestError(f"{name}={value}: outside int32")
    return int(value)


def split_rows(outputs: Dict[str, np.ndarray], counts: List[int]) -> List[Dict[str, np.ndarray]]:
    """The outputs of one stacked call, cut back into each request's rows."""
    bounds = np.cumsum([0] + counts)
    return [{k: v[bounds[i]:bounds[i + 1]] for k, v in outputs.items()} for i in range(len(counts))]


def stack_rows(requests: List[Dict[str, np.ndarray]]) -> Tuple[Dict[str, np.ndarray], List[int]]:
    """Several requests' inputs stacked along the batch dimension, and each request's row count."""
    counts = [len(next(iter(r.values()))) for r in requests]
    return {k: np.concatenate([r[k] for r in requests]) for k in requests[0]}, counts
