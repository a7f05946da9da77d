"""A small Python client for the model server's HTTP API (serving/server.py); standard library and NumPy only.

    from serving.client import Client
    client = Client("http://127.0.0.1:8000")
    client.metadata("mnist-autoencoder")["signatures"]
    reply = client.predict("mnist-autoencoder", images, signature="encode")   # images: (N, 28, 28, 1) in [0, 1]
    reply.outputs, reply.version                                             # codings (N, 30), "3"
    client.generate("mnist-gan", n=16, seed=0).outputs                       # (16, 28, 28, 1) in [0, 1]
    client.generate_png("mnist-ddpm", n=16, steps=50)                        # PNG bytes of a 4x4 grid
    client.detect("mnist-autoencoder", images)    # {"scores", "anomaly" (above the model's threshold), "threshold"}
    client.interpolate("mnist-gan", seeds=[3, 5]).outputs                    # (8, 28, 28, 1): a strip
    client.arithmetic("mnist-autoencoder", 7, 1, 4).outputs                  # a, b, c, decode(a - b + c)
    client.examples("mnist-autoencoder")     # the server's test images (--class-examples): index, class, image
    client.interpolate("mnist-autoencoder", examples=[0, 5]).outputs         # between two of them
    client.projection("mnist-autoencoder")["x"]   # their codings on two principal components (x, y, labels)
"""
import base64
import dataclasses
import json
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Union

import numpy as np

VERSION_HEADER = "X-Model-Version"


class ServingError(RuntimeError):
    """The server refused a request (`status` 4xx) or failed; the message is the server's."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


@dataclasses.dataclass
class Reply:
    outputs: Union[np.ndarray, Dict[str, np.ndarray]]  # one array, or {output name: array}
    version: str  # the model version that computed it


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 60.0):
        self.url, self.timeout = url.rstrip("/"), timeout

    def request(self, method: str, path: str, body: Optional[Any] = None):
        """(status, headers, decoded JSON or text); raises ServingError for a non-2xx answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.headers, _decode(response.read())
        except urllib.error.HTTPError as error:
            content = _decode(error.read())
            message = content.get("error", content) if isinstance(content, dict) else content
            raise ServingError(error.code, str(message)) from None

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/-/healthz")[0] == 200
        except (ServingError, OSError):
            return False

    def models(self):
        return self.request("GET", "/v1/models")[2]["models"]

    def metadata(self, name: str) -> Dict[str, Any]:
        return self.request("GET", f"/v1/models/{name}")[2]

    def predict(self, name: str, inputs: Union[np.ndarray, Dict[str, Any]],
                signature: str = "serving_default") -> Reply:
        """Calls a signature with batched `inputs` (an array for a one-input signature, else {input: value}),
        sent columnar; outputs as arrays."""
        inputs = {k: np.asarray(v).tolist() for k, v in inputs.items()} if isinstance(inputs, dict) else \
            np.asarray(inputs).tolist()
        _, headers, content = self.request("POST", f"/v1/models/{name}:predict",
                                           {"signature_name": signature, "inputs": inputs})
        outputs = content["outputs"]
        arrays = {k: _array(v) for k, v in outputs.items()} if isinstance(outputs, dict) else _array(outputs)
        return Reply(arrays, headers.get(VERSION_HEADER))

    def detect(self, name: str, images: np.ndarray) -> Dict[str, Any]:
        """An autoencoder's anomaly decisions for `images` (N, H, W, C) in its pixel range: {"scores": (N,),
        "anomaly": (N,) bool, "threshold": the model's, "version": the version that computed them}."""
        _, headers, content = self.request("POST", f"/v1/models/{name}:detect",
                                           {"inputs": np.asarray(images).tolist()})
        return {"scores": _array(content["scores"]), "anomaly": np.asarray(content["anomaly"], bool),
                "threshold": float(content["threshold"]), "version": headers.get(VERSION_HEADER)}

    def interpolate(self, name: str, seeds=None, images=None, classes=None, examples=None, frames: int = 8) -> Reply:
        """A strip of `frames` images (frames, H, W, C) in [0, 1]: a generator's (or VAE's) between two `seeds`; an
        autoencoder's or VAE's between two `images` (in its pixel range), two `classes` (their mean codings) or two
        `examples` (indices of the server's test images: see `examples`)."""
        ends = {"seeds": seeds, "images": None if images is None else np.asarray(images).tolist(), "classes": classes,
                "examples": examples}
        given = {k: v for k, v in ends.items() if v is not None}
        if len(given) != 1:
            raise ValueError("give exactly one of seeds, images, classes and examples")
        _, headers, content = self.request("POST", f"/v1/models/{name}:interpolate",
                                           {**given, "frames": int(frames), "format": "json"})
        return Reply(np.asarray(content["images"], np.float32), headers.get(VERSION_HEADER))

    def arithmetic(self, name: str, a, b, c) -> Reply:
        """decode(code(a) - code(b) + code(c)) and a, b, c decoded: (4, H, W, C) in [0, 1]; each operand is a
        class id or name (str / int), an image (H, W, C) in the model's pixel range, or an operand as the API
        takes it ({"example": index} for one of the server's test images)."""
        def operand(value):
            if isinstance(value, dict):
                return value
            return {"class": value} if isinstance(value, (str, int)) else {"image": np.asarray(value).tolist()}
        _, headers, content = self.request("POST", f"/v1/models/{name}:arithmetic", {
            "a": operand(a), "b": operand(b), "c": operand(c), "format": "json"})
        return Reply(np.asarray(content["images"], np.float32), headers.get(VERSION_HEADER))

    def examples(self, name: str, per_class: int = 2) -> List[Dict[str, Any]]:
        """The server's test images (its --class-examples) that `examples` / {"example": i} name: the first
        `per_class` of each class, each {"index", "label", "class", "image" (H, W, C) in [0, 1]}."""
        content = self.request("GET", f"/v1/models/{name}/examples?per_class={int(per_class)}&format=json")[2]
        return [{**entry, "image": np.asarray(entry["image"], np.float32)} for entry in content["examples"]]

    def projection(self, name: str) -> Dict[str, Any]:
        """The server's test images' codings on their first two principal components: {"x", "y", "labels"
        (NumPy arrays, one per test image), "class_names", "explained_variance"}."""
        content = self.request("GET", f"/v1/models/{name}/projection")[2]
        return {**content, **{k: np.asarray(content[k]) for k in ("x", "y", "labels")}}

    def generate(self, name: str, n: int, seed: int = 0, steps: Optional[int] = None) -> Reply:
        """n generated images (n, H, W, C) in [0, 1]."""
        _, headers, content = self.request("POST", f"/v1/models/{name}:generate", _generate_body(n, seed, steps))
        return Reply(np.asarray(content["images"], np.float32), headers.get(VERSION_HEADER))

    def generate_png(self, name: str, n: int, seed: int = 0, steps: Optional[int] = None) -> bytes:
        """n generated images as one PNG grid."""
        body = {**_generate_body(n, seed, steps), "format": "png"}
        return base64.b64decode(self.request("POST", f"/v1/models/{name}:generate", body)[2]["png_base64"])


def _generate_body(n: int, seed: int, steps: Optional[int]) -> Dict[str, int]:
    return {"n": int(n), "seed": int(seed), **({"steps": int(steps)} if steps is not None else {})}


def _array(value) -> np.ndarray:
    """JSON numbers as the model's dtypes: floats float32 (what the SavedModel computed), integers int64."""
    array = np.asarray(value)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def _decode(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
