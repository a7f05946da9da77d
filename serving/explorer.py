"""The latent-space explorer's server side: the page's files, uploads, interpolation and latent arithmetic.

The page (serving/assets/explorer.html, .js, .css: no CDN, nothing fetched from the internet) is served by the
model server itself and calls the same REST API a program does:

    GET  /                                the models served, each a link to its explorer
    GET  /ui/NAME                         the explorer of one model (whatever version the server serves now)
    GET  /ui/assets/FILE                  the page's own files, from serving/assets/ only
    POST /v1/models/NAME:interpolate      generators: {"seeds": [A, B], "frames": 8, "steps": T}
                                          autoencoders, VAEs: {"images": [IMG, IMG]}, {"png_base64": [P, P]}
                                          or {"classes": [A, B]} (their mean codings)
                                          -> {"format": "png", "png_base64": the strip} ("format": "json": images)
    POST /v1/models/NAME:arithmetic       {"a": X, "b": X, "c": X} -> decode(code(A) - code(B) + code(C)); X is
                                          {"class": id or name} (the class's mean coding over the server's
                                          --class-examples), {"png_base64": P} or {"image": IMG}
    POST /v1/models/NAME:detect, :predict, ... also take uploads: {"png_base64": [P, ...]} instead of images

An upload is a base64 image file (PNG, JPEG, ...) decoded in memory by Pillow, never written to disk; it must
have the model's size (the page resizes drawings itself), and becomes grey or RGB as the model's channels.
Generators' seeds pick the same latent points as :generate's first image for that seed (the GAN families: the
same stateless draw), interpolated along the great circle (slerp: Gaussian latents keep their norm); encoded
images are interpolated linearly.
"""
import base64
import binascii
import io
import os
import urllib.parse
from typing import Any, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from serving.model import RequestError, ServedModel

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
MAX_UPLOAD_BYTES = 1024 ** 2  # one uploaded file, before decoding (a 28x28 PNG is under 1 KB)
MAX_UPLOAD_PIXELS = 4096 * 4096  # Pillow's decompression-bomb guard, tighter than its default
MAX_FRAMES = 32
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


# ------------------------------------------------------------------------------------------ the page's files

def asset_file(raw_path: str) -> Optional[str]:
    """The file under ASSETS_DIR that `raw_path` (relative, as the URL gave it, percent-encoded or not) names, or
    None: a `..`, an absolute path, an encoded separator, a hidden file or a symlink out of the folder is not
    served (the server answers 404 as for a missing file)."""
    decoded = urllib.parse.unquote(raw_path)
    if decoded != urllib.parse.unquote(decoded) or "\\" in decoded or "\x00" in decoded:
        return None  # double-encoded, Windows separators, NUL: never a name of ours
    parts = decoded.split("/")
    if not decoded or decoded.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    root = os.path.realpath(ASSETS_DIR)
    path = os.path.realpath(os.path.join(root, *parts))  # symlinks resolved: one pointing out lands outside
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return None
    if os.path.splitext(path)[1] not in CONTENT_TYPES:
        return None
    return path


def content_type(path: str) -> str:
    return CONTENT_TYPES[os.path.splitext(path)[1]]


# ------------------------------------------------------------------------------------------------ uploads

def decode_uploads(values: Any, model: ServedModel, field: str = "png_base64", invert: bool = False) -> np.ndarray:
    """Base64 image files -> (N, H, W, C) float32 in the model's pixel range, decoded in memory. `invert`: dark
    strokes on a light background (a photo of a written digit) made light on dark, as MNIST is."""
    from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise RequestError(f"{field}: expected a list of base64-encoded image files")
    if len(values) > model.limits.max_instances:
        raise RequestError(f"{field}: {len(values)} images; at most {model.limits.max_instances} per request")
    height, width, channels = model.metadata.get("image_shape", [None, None, None])
    images = []
    for index, text in enumerate(values):
        where = f"{field}[{index}]"
        if text.startswith("data:"):  # a data URL, as a browser's FileReader gives it
            text = text.partition(",")[2]
        if len(text) * 3 // 4 > MAX_UPLOAD_BYTES:
            raise RequestError(f"{where}: the file is over {MAX_UPLOAD_BYTES // 1024 ** 2} MiB; send a "
                               f"{height}x{width} image", status=413)
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}: not base64 (send the file's bytes base64-encoded)") from None
        try:
            with Image.open(io.BytesIO(raw)) as image:  # reads the header only
                size = (image.height, image.width)
                if image.width * image.height <= MAX_UPLOAD_PIXELS:
                    image.load()
                    converted = image.convert("L" if channels == 1 else "RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            raise RequestError(f"{where}: not an image file Pillow can read (PNG, JPEG, GIF, BMP, WebP...)") from None
        if size[0] * size[1] > MAX_UPLOAD_PIXELS:
            raise RequestError(f"{where}: {size[1]}x{size[0]} pixels is too large; send a {width}x{height} image",
                               status=413)
        if height is not None and size != (height, width):
            raise RequestError(f"{where}: the image is {size[1]}x{size[0]} pixels; {model.name} takes "
                               f"{width}x{height} (resize it first)")
        pixels = np.asarray(converted, np.float32) / 255.0
        images.append(pixels[..., None] if pixels.ndim == 2 else pixels)
    batch = np.stack(images)
    if invert:
        batch = 1.0 - batch
    return batch * 2.0 - 1.0 if model.metadata.get("pixel_range") == "symmetric" else batch


def with_uploads(body: Any, model: ServedModel, signature: str) -> Any:
    """A :predict or :detect body with {"png_base64": [...]} turned into the columnar {"inputs": images}."""
    if not isinstance(body, dict) or "png_base64" not in body:
        return body
    if "instances" in body or "inputs" in body:
        raise RequestError('give images either as "png_base64" files or as "instances"/"inputs" arrays, not both')
    if signature not in model.signatures:
        return body  # the caller's parse names the missing signature (or :detect's missing threshold)
    if set(model.inputs[signature]) != {"images"}:
        raise RequestError(f"png_base64: signature {signature!r} does not take images")
    rest = {k: v for k, v in body.items() if k not in ("png_base64", "invert")}
    return {**rest, "inputs": decode_uploads(body["png_base64"], model, invert=bool(body.get("invert")))}


def _images_field(body: Dict[str, Any], model: ServedModel, field: str, count: int) -> np.ndarray:
    """`count` images from body["images"] (arrays) or body["png_base64"] (files)."""
    if ("images" in body) == ("png_base64" in body):
        raise RequestError(f'{field}: give exactly one of "images" (arrays) and "png_base64" (image files)')
    if "png_base64" in body:
        images = decode_uploads(body["png_base64"], model, invert=bool(body.get("invert")))
    else:
        images = model._array("encode", "images", body["images"])  # the signature's own checks and messages
    if len(images) != count:
        raise RequestError(f"{field}: expected {count} images, got {len(images)}")
    return images


# ------------------------------------------------------------------------------------------ interpolation

def _frames(body: Dict[str, Any]) -> int:
    frames = body.get("frames", 8)
    if isinstance(frames, bool) or not isinstance(frames, int) or not 2 <= frames <= MAX_FRAMES:
        raise RequestError(f"frames={frames!r}: an integer between 2 and {MAX_FRAMES}")
    return frames


def slerp(a: np.ndarray, b: np.ndarray, frames: int) -> np.ndarray:
    """`frames` points from a to b (rows of the same shape) along the great circle, norms interpolated linearly
    (for Gaussian latents, whose mass lies near a sphere: a straight line would pass through unlikely, small
    codes)."""
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    omega = np.arccos(np.clip(np.dot(a / na, b / nb), -1.0, 1.0)) if na and nb else 0.0
    points = []
    for t in np.linspace(0.0, 1.0, frames):
        if omega < 1e-6:
            points.append((1 - t) * a + t * b)
        else:
            direction = (np.sin((1 - t) * omega) * a / na + np.sin(t * omega) * b / nb) / np.sin(omega)
            points.append(direction * ((1 - t) * na + t * nb))
    return np.stack(points).astype(np.float32)


def lerp(a: np.ndarray, b: np.ndarray, frames: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, frames, dtype=np.float32).reshape(-1, *([1] * a.ndim))
    return ((1 - t) * a[None] + t * b[None]).astype(np.float32)


def _seed(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -2 ** 31 <= value < 2 ** 31:
        raise RequestError(f"{where}: a 32-bit integer seed, got {value!r}")
    return value


def latent_signature(model: ServedModel) -> Optional[str]:
    """The signature a generator's latent points go through: codings (GANs), noise (DDPMs), or a VAE's decode."""
    for name in ("generate_from_codings", "generate_from_noise"):
        if name in model.signatures:
            return name
    return "decode" if model.family == "vae" and "decode" in model.signatures else None


def interpolate(model: ServedModel, body: Any, classes: Optional["ClassExamples"] = None) -> np.ndarray:
    """The strip (frames, H, W, C) in [0, 1] that an :interpolate body asks for."""
    if not isinstance(body, dict):
        raise RequestError('the body must be a JSON object: {"seeds": [A, B]} or {"images": [IMG, IMG]}')
    unknown = set(body) - {"seeds", "images", "png_base64", "classes", "invert", "frames", "steps", "format"}
    if unknown:
        raise RequestError(f"unknown field(s) {sorted(unknown)}: :interpolate takes seeds (generators) or images / "
                           "png_base64 / classes (autoencoders, VAEs), frames, steps (DDPMs), format")
    frames = _frames(body)
    if "seeds" in body:
        signature = latent_signature(model)
        if signature is None:
            raise RequestError(f"{model.name} is a {model.family}: it has no latent space to draw seeds from; "
                               'interpolate between two images ("images" or "png_base64")')
        seeds = body["seeds"]
        if not isinstance(seeds, list) or len(seeds) != 2:
            raise RequestError(f"seeds: expected two seeds [A, B], got {seeds!r}")
        spec = model.inputs[signature]["codings" if "codings" in model.inputs[signature] else "noise"]
        shape = [1, *[int(d) for d in spec.shape[1:]]]
        ends = [tf.random.stateless_normal(shape, seed=[_seed(s, f"seeds[{i}]"), 0]).numpy()[0]
                for i, s in enumerate(seeds)]
        points = slerp(ends[0], ends[1], frames).reshape(frames, *shape[1:])
        inputs = {spec.name: points}
        if "steps" in model.inputs[signature]:
            steps = body.get("steps", model.generate_defaults().get("steps"))
            model._check_steps(_seed(steps, "steps"))
            inputs["steps"] = np.int32(steps)
        return _clipped(model.run(signature, inputs)["images"])
    if not {"encode", "decode"} <= set(model.signatures):
        raise RequestError(f"{model.name} is a {model.family}: it does not encode images; interpolate between "
                           'seeds ("seeds": [A, B])')
    if "classes" in body:  # from one class's mean coding to another's
        ends = body["classes"]
        if not isinstance(ends, list) or len(ends) != 2:
            raise RequestError(f"classes: expected two classes [A, B], got {ends!r}")
        if classes is None:
            raise RequestError("classes: class ends need the server started with --class-examples SOURCE")
        means = classes.mean_codings(model)
        codings = np.stack([means[classes.class_id(c, f"classes[{i}]")] for i, c in enumerate(ends)])
    else:
        codings = model.run("encode", {"images": _images_field(body, model, "images", 2)})["codings"]
    return _clipped(model.run("decode", {"codings": lerp(codings[0], codings[1], frames)})["images"])


def _clipped(images: np.ndarray) -> np.ndarray:
    return np.clip(images, 0.0, 1.0)


# ------------------------------------------------------------------------------------------ latent arithmetic

class ClassExamples:
    """Labelled images, (N, H, W, C) in [0, 1] (`latentforge serve --class-examples SOURCE` reads the source's
    test split, at most 200 per class) and, per model version, the mean coding of each class, computed on first
    use and kept. It travels to the replicas inside ServerOptions."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str]):
        self.images, self.labels, self.class_names = images, labels, [str(n) for n in class_names]
        self._means: Dict[tuple, np.ndarray] = {}

    def class_id(self, value: Any, where: str) -> int:
        if isinstance(value, str):
            if value in self.class_names:
                return self.class_names.index(value)
            if not value.isdigit():
                raise RequestError(f"{where}: unknown class {value!r}; the classes are {self.class_names}")
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(self.class_names):
            raise RequestError(f"{where}: class {value!r} is not one of 0..{len(self.class_names) - 1} "
                               f"({', '.join(self.class_names)})")
        return value

    def mean_codings(self, model: ServedModel) -> np.ndarray:
        """(classes, coding size): each class's mean coding under this model version (cached per version)."""
        key = (model.name, model.version)
        if key not in self._means:
            images = self.images * 2.0 - 1.0 if model.metadata.get("pixel_range") == "symmetric" else self.images
            codings = np.concatenate([model.run("encode", {"images": images[s:s + 256]})["codings"]
                                      for s in range(0, len(images), 256)])
            self._means = {k: v for k, v in self._means.items() if k[0] != model.name}  # an older version's go
            self._means[key] = np.stack([codings[self.labels == k].mean(axis=0)
                                         for k in range(len(self.class_names))])
        return self._means[key]


def arithmetic(model: ServedModel, body: Any, classes: Optional[ClassExamples]) -> np.ndarray:
    """decode(code(A) - code(B) + code(C)) and the three operands' own decodings: (4, H, W, C) in [0, 1]."""
    if not {"encode", "decode"} <= set(model.signatures):
        raise RequestError(f"{model.name} is a {model.family}: latent arithmetic needs an autoencoder or VAE "
                           "(encode and decode)")
    if not isinstance(body, dict) or not {"a", "b", "c"} <= set(body):
        raise RequestError('the body must be {"a": X, "b": X, "c": X}, each X {"class": id or name}, '
                           '{"png_base64": file} or {"image": array}')
    unknown = set(body) - {"a", "b", "c", "invert", "format"}
    if unknown:
        raise RequestError(f"unknown field(s) {sorted(unknown)}: :arithmetic takes a, b, c, invert, format")
    codings = []
    for key in ("a", "b", "c"):
        operand = body[key]
        if not isinstance(operand, dict) or len(operand) != 1 or not {"class", "png_base64", "image"} & set(operand):
            raise RequestError(f'{key}: expected one of {{"class": id or name}}, {{"png_base64": file}}, '
                               f'{{"image": array}}; got {operand!r}'[:300])
        if "class" in operand:
            if classes is None:
                raise RequestError(f"{key}: class operands need the server started with --class-examples SOURCE "
                                   "(labelled images whose mean codings stand for each class)")
            codings.append(classes.mean_codings(model)[classes.class_id(operand["class"], f"{key}.class")])
            continue
        if "png_base64" in operand:
            images = decode_uploads([operand["png_base64"]], model, f"{key}.png_base64", bool(body.get("invert")))
        else:
            images = model._array("encode", "images", [operand["image"]])
        codings.append(model.run("encode", {"images": images})["codings"][0])
    a, b, c = codings
    decoded = model.run("decode", {"codings": np.stack([a, b, c, a - b + c]).astype(np.float32)})["images"]
    return _clipped(decoded)
