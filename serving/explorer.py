"""The latent-space explorer's server side: the page's files, uploads, interpolation and latent arithmetic.

The page (serving/assets/explorer.html, .js, .css: no CDN, nothing fetched from the internet) is served by the
model server itself and calls the same REST API a program does:

    GET  /                                the models served, each a link to its explorer
    GET  /ui/NAME                         the explorer of one model (whatever version the server serves now)
    GET  /ui/assets/FILE                  the page's own files, from serving/assets/ only
    GET  /v1/models/NAME/examples?per_class=K | ?indices=I,J
                                          the first K test images of each class of the server's --class-examples
                                          (index, class, PNG), or those named: what {"example": i} refers to
    GET  /v1/models/NAME/projection       every test image's coding on the codings' first two principal
                                          components (x, y, labels), as TensorBoard's projector opens
    POST /v1/models/NAME:interpolate      generators (and VAEs): {"seeds": [A, B], "frames": 8, "steps": T}
                                          autoencoders, VAEs: {"images": [IMG, IMG]}, {"png_base64": [P, P]},
                                          {"examples": [I, J]} (test images), {"classes": [A, B]} (their mean
                                          codings) or {"ends": [X, Y]} (two operands as :arithmetic's, mixed)
                                          -> {"format": "png", "png_base64": the strip} ("format": "json")
    POST /v1/models/NAME:arithmetic       {"a": X, "b": X, "c": X} -> decode(code(A) - code(B) + code(C)); X is
                                          {"class": id or name} (the class's mean coding over the server's
                                          --class-examples), {"example": index} (one of its test images),
                                          {"png_base64": P} or {"image": IMG}
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
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from serving.images import png_grid
from serving.model import RequestError, ServedModel

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
MAX_UPLOAD_BYTES = 1024 ** 2  # one uploaded file, before decoding (a 28x28 PNG is under 1 KB)
MAX_UPLOAD_PIXELS = 4096 * 4096  # Pillow's decompression-bomb guard, tighter than its default
MAX_FRAMES = 32
MAX_EXAMPLES_PER_CLASS = 20
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
    """The signature a generator's latent points go through (codings, noise, a VAE's decode): the one the family's
    description names (the export's metadata `latent_signature`)."""
    name = model.metadata.get("latent_signature")
    return name if name in model.signatures else None


def interpolate(model: ServedModel, body: Any, classes: Optional["ClassExamples"] = None) -> np.ndarray:
    """The strip (frames, H, W, C) in [0, 1] that an :interpolate body asks for."""
    if not isinstance(body, dict):
        raise RequestError('the body must be a JSON object: {"seeds": [A, B]} or {"images": [IMG, IMG]}')
    kinds = ("seeds", "images", "png_base64", "examples", "classes", "ends")
    unknown = set(body) - {*kinds, "invert", "frames", "steps", "format"}
    if unknown:
        raise RequestError(f"unknown field(s) {sorted(unknown)}: :interpolate takes seeds (generators) or images / "
                           "png_base64 / examples / classes / ends (autoencoders, VAEs), frames, steps (DDPMs), format")
    given = [k for k in kinds if k in body]
    if len(given) > 1:
        raise RequestError(f"give one kind of ends, not {given}: seeds, images, png_base64, examples, classes or "
                           "ends")
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
    field = next((k for k in ("classes", "examples", "ends") if k in body), None)
    if field:  # class means, test images, or any two operands (as :arithmetic's)
        ends = body[field]
        if not isinstance(ends, list) or len(ends) != 2:
            raise RequestError(f"{field}: expected two ends, got {ends!r}"[:300])
        if field != "ends":
            ends = [{"class" if field == "classes" else "example": e} for e in ends]
        codings = np.stack([operand_coding(model, e, f"{field}[{i}]", classes, bool(body.get("invert")))
                            for i, e in enumerate(ends)])
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
        self._cache: Dict[tuple, Any] = {}  # (model name, version, what) -> codings, class means, projection

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

    def for_model(self, model: ServedModel, indices: Optional[Sequence[int]] = None) -> np.ndarray:
        """The images (or those at `indices`) in the model's pixel range; a 400 when they are not of its size."""
        shape = model.metadata.get("image_shape")
        if shape is not None and list(self.images.shape[1:]) != [int(d) for d in shape]:
            raise RequestError(f"the server's --class-examples are {'x'.join(map(str, self.images.shape[1:]))} "
                               f"images; {model.name} takes {'x'.join(map(str, shape))}: start the server with "
                               "--class-examples of the model's data")
        images = self.images if indices is None else self.images[list(indices)]
        return images * 2.0 - 1.0 if model.metadata.get("pixel_range") == "symmetric" else images

    def index(self, value: Any, where: str) -> int:
        """`value` checked as a test image's index."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(self.images):
            raise RequestError(f"{where}: test image {value!r} is not one of 0..{len(self.images) - 1} (the server's "
                               "--class-examples; GET /v1/models/NAME/examples lists them)")
        return value

    def first_of_each_class(self, per_class: int) -> List[int]:
        """Indices of the first `per_class` images of each class, class by class."""
        return [int(i) for k in range(len(self.class_names)) for i in np.flatnonzero(self.labels == k)[:per_class]]

    def _per_version(self, model: ServedModel, what: str, compute) -> Any:
        """compute() once per model version (an older version's results go when a new one is asked for)."""
        key = (model.name, model.version, what)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != model.name or k[1] == model.version}
            self._cache[key] = compute()
        return self._cache[key]

    def codings(self, model: ServedModel) -> np.ndarray:
        """(N, ...): every test image's coding under this model version (cached per version)."""
        def encode_all():
            images = self.for_model(model)
            return np.concatenate([model.run("encode", {"images": images[s:s + 256]})["codings"]
                                   for s in range(0, len(images), 256)])
        return self._per_version(model, "codings", encode_all)

    def mean_codings(self, model: ServedModel) -> np.ndarray:
        """(classes, coding size): each class's mean coding under this model version (cached per version)."""
        return self._per_version(model, "means", lambda: np.stack(
            [self.codings(model)[self.labels == k].mean(axis=0) for k in range(len(self.class_names))]))

    def projection(self, model: ServedModel) -> Dict[str, Any]:
        """The codings' first two principal components (as TensorBoard's projector starts): {"x", "y" (one per
        test image, its index the position), "explained_variance" (the two components' shares)}."""
        def pca():
            flat = self.codings(model).reshape(len(self.images), -1).astype(np.float64)
            centred = flat - flat.mean(axis=0)
            _, singular, components = np.linalg.svd(centred, full_matrices=False)
            points = centred @ components[:2].T
            total = float(np.sum(singular ** 2)) or 1.0
            return {"x": points[:, 0].tolist(), "y": points[:, 1].tolist() if points.shape[1] > 1 else
                    [0.0] * len(points), "explained_variance": [float(v ** 2 / total) for v in singular[:2]]}
        return self._per_version(model, "pca", pca)


def examples(model: ServedModel, classes: Optional[ClassExamples], query: Dict[str, str]) -> Dict[str, Any]:
    """GET /v1/models/NAME/examples?per_class=K[&format=json]: the first K test images of each class (default 2,
    at most 20), each {"index", "label", "class", "png_base64"} ("image": (H, W, C) in [0, 1] with format=json);
    "total" is how many test images an index can name."""
    unknown = set(query) - {"per_class", "indices", "format"}
    if unknown:
        raise RequestError(f"unknown query parameter(s) {sorted(unknown)}: /examples takes per_class or indices, "
                           "and format")
    as_png = query.get("format", "png") == "png"
    if query.get("format", "png") not in ("png", "json"):
        raise RequestError(f"format={query['format']!r}: use json or png")
    text = query.get("per_class", "2")
    if not text.isdigit() or not 1 <= int(text) <= MAX_EXAMPLES_PER_CLASS:
        raise RequestError(f"per_class={text!r}: an integer between 1 and {MAX_EXAMPLES_PER_CLASS}")
    if classes is None:  # none to list (an answer, not an error: the page asks every server)
        return {"total": 0, "class_names": [], "examples": [],
                "note": "this server has no test images: start it with --class-examples SOURCE"}
    if "indices" in query:  # the test images an operand names (the page's previews)
        if "per_class" in query:
            raise RequestError("give per_class or indices, not both")
        words = query["indices"].split(",")
        if not all(w.isdigit() for w in words) or len(words) > MAX_EXAMPLES_PER_CLASS:
            raise RequestError(f"indices={query['indices']!r}: up to {MAX_EXAMPLES_PER_CLASS} comma-separated "
                               "test-image indices")
        indices = [classes.index(int(w), "indices") for w in words]
    else:
        indices = classes.first_of_each_class(int(text))
    classes.for_model(model, indices[:1])  # the size check

    def picture(i: int) -> Dict[str, Any]:
        if as_png:
            return {"png_base64": base64.b64encode(png_grid(classes.images[i:i + 1], 1)).decode("ascii")}
        return {"image": classes.images[i].tolist()}
    return {"total": len(classes.images), "class_names": classes.class_names, "examples": [
        {"index": i, "label": int(classes.labels[i]), "class": classes.class_names[classes.labels[i]], **picture(i)}
        for i in indices]}


def projection(model: ServedModel, classes: Optional[ClassExamples]) -> Dict[str, Any]:
    """GET /v1/models/NAME/projection: the server's test images' codings on their first two principal
    components, with labels; empty on a server without --class-examples."""
    if not {"encode", "decode"} <= set(model.signatures):
        raise RequestError(f"{model.name} is a {model.family}: it has no codings to project (autoencoders and VAEs "
                           "do)")
    if classes is None:
        return {"method": "pca", "x": [], "y": [], "labels": [], "class_names": [], "explained_variance": [],
                "note": "this server has no test images: start it with --class-examples SOURCE"}
    return {"method": "pca", **classes.projection(model), "labels": classes.labels.tolist(),
            "class_names": classes.class_names}


OPERANDS = {"class", "example", "png_base64", "image"}
OPERAND_FORMS = ('{"class": id or name}, {"example": test image index}, {"png_base64": file} or '
                 '{"image": array}')


def operand_coding(model: ServedModel, operand: Any, where: str, classes: Optional[ClassExamples],
                   invert: bool = False) -> np.ndarray:
    """The coding one operand stands for: a class's mean coding, a test image's, an uploaded or sent image's."""
    if not isinstance(operand, dict) or len(operand) != 1 or not OPERANDS & set(operand):
        raise RequestError(f"{where}: expected one of {OPERAND_FORMS}; got {operand!r}"[:300])
    if "class" in operand or "example" in operand:
        if classes is None:
            raise RequestError(f"{where}: {'class' if 'class' in operand else 'test-image'} operands need the "
                               "server started with --class-examples SOURCE (labelled test images)")
        if "class" in operand:
            return classes.mean_codings(model)[classes.class_id(operand["class"], f"{where}.class")]
        index = classes.index(operand["example"], f"{where}.example")
        return classes.codings(model)[index]  # every test image encoded once per model version
    if "png_base64" in operand:
        images = decode_uploads([operand["png_base64"]], model, f"{where}.png_base64", invert)
    else:
        images = model._array("encode", "images", [operand["image"]])
    return model.run("encode", {"images": images})["codings"][0]


def arithmetic(model: ServedModel, body: Any, classes: Optional[ClassExamples]) -> np.ndarray:
    """decode(code(A) - code(B) + code(C)) and the three operands' own decodings: (4, H, W, C) in [0, 1]."""
    if not {"encode", "decode"} <= set(model.signatures):
        raise RequestError(f"{model.name} is a {model.family}: latent arithmetic needs an autoencoder or VAE "
                           "(encode and decode)")
    if not isinstance(body, dict) or not {"a", "b", "c"} <= set(body):
        raise RequestError(f'the body must be {{"a": X, "b": X, "c": X}}, each X {OPERAND_FORMS}')
    unknown = set(body) - {"a", "b", "c", "invert", "format"}
    if unknown:
        raise RequestError(f"unknown field(s) {sorted(unknown)}: :arithmetic takes a, b, c, invert, format")
    a, b, c = (operand_coding(model, body[key], key, classes, bool(body.get("invert"))) for key in ("a", "b", "c"))
    decoded = model.run("decode", {"codings": np.stack([a, b, c, a - b + c]).astype(np.float32)})["images"]
    return _clipped(decoded)
