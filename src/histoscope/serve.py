"""A model behind a REST API (``histoscope serve``): what the one-pixel paper attacked.

:func:`create_app` builds a FastAPI application around one model (a bundled name, a
training checkpoint or a PyTorch module); the ``histoscope serve`` command serves it
with uvicorn until Ctrl-C, :func:`serve_in_thread` in a background thread (tests,
benchmarks, notebooks), both through :mod:`histoscope.utils.webserver`.
:class:`histoscope.robustness.HTTPTarget` is the client the one-pixel audit uses
(``histoscope audit one-pixel --url``).

Endpoints (answers are JSON unless said otherwise):

``GET /health``
    ``{"status": "ok"}``.
``GET /info``
    ``{"name", "classes", "input_size", "mpp", "histoscope_version", "accepts",
    "max_body_bytes", "max_batch", "max_pixels", "card"}`` (``card``: whether
    ``/card`` has one).
``GET /card``, ``GET /card.md``
    The model card of a bundled model as JSON, or rendered as Markdown
    (``text/markdown``); 404 for a model without a card.
``POST /predict``
    The body is raw bytes (no multipart form), its kind given by ``Content-Type``:

    ``application/x-npy``
        An ``.npy`` array of ``(N, S, S, 3)`` uint8 RGB patches at the model's input
        size ``S``. Answer ``{"probabilities": [[...], ...], "classes": [...]}``, one
        row per patch.
    ``image/png``, ``image/jpeg``, ``image/tiff``
        One RGB image at the model's resolution (``mpp`` of ``/info``), at least
        ``S x S`` pixels.  It is cut into a grid of non-overlapping ``S x S`` patches
        from the top-left corner (a remainder narrower than ``S`` on the right or
        bottom is dropped; an image of exactly ``S x S`` is one patch). Answer
        ``{"classes", "probabilities", "n_patches", "patch_size", "width", "height",
        "columns", "rows", "patches": [{"x", "y"}, ...]}``: one row of
        probabilities per patch, in the order of ``patches`` (rows top to bottom,
        left to right; ``x, y`` is the patch's top-left corner in the uploaded image).

Refused requests get ``{"error": "..."}`` naming the problem:

=== =========================================================================
400 body empty or not decodable (not an ``.npy`` array, not an image of the
    declared type, truncated), ``.npy`` not ``(N, S, S, 3)`` uint8 or not at the
    model's input size
404 unknown route; ``/card`` of a model without a card
405 wrong method for the route
413 body larger than ``max_body_bytes`` (``Content-Length`` is checked before
    the body is read, a chunked body is read only up to the limit); more than
    ``max_batch`` patches in an ``.npy`` batch; an ``.npy`` header declaring more
    than ``max_body_bytes`` of data; an image declaring more than ``max_pixels``
    pixels (refused from its header, before any pixel is decoded)
415 missing or unknown ``Content-Type`` (the answer lists the accepted ones)
422 an image smaller than the model's input size, or not 8-bit RGB
=== =========================================================================

The model runs one request at a time (a lock), in a worker thread off the event loop.
The server binds 127.0.0.1 by default and has no authentication: do not expose it
beyond a trusted network.

Examples
--------
>>> from histoscope.serve import serve_in_thread  # doctest: +SKIP
>>> server, url = serve_in_thread("mitosis_detector")  # doctest: +SKIP
>>> import httpx, numpy as np, io  # doctest: +SKIP
>>> buf = io.BytesIO(); np.save(buf, np.zeros((2, 64, 64, 3), np.uint8))  # doctest: +SKIP
>>> httpx.post(f"{url}/predict", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"}).json()["classes"]  # doctest: +SKIP
['non-mitosis', 'mitosis']
>>> server.shutdown()  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import math
import threading
import warnings
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ._version import __version__
from .robustness.target import NPY_CONTENT_TYPE, Target, as_target
from .tiles.grid import grid_positions
from .utils.convert import image_to_tensor
from .utils.webserver import AppThread, LogLevel, app_in_thread, is_loopback

__all__ = [
    "create_app",
    "serve_in_thread",
    "ACCEPTED_TYPES",
    "IMAGE_TYPES",
    "MAX_BODY_BYTES",
    "MAX_BATCH",
    "MAX_PIXELS",
]

logger = logging.getLogger(__name__)

#: Largest request body accepted by default (a batch of about 2,000 patches of 128 x 128 px).
MAX_BODY_BYTES = 100 * 1024 * 1024
#: Most patches in one ``.npy`` batch by default (what :class:`~histoscope.robustness.HTTPTarget` sends at most).
MAX_BATCH = 1024
#: Most pixels an uploaded image may declare by default (8192 x 8192: 192 MiB once decoded).
MAX_PIXELS = 8192 * 8192

#: Image content types of ``POST /predict`` and the Pillow format each must be.
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/tiff": "TIFF"}
#: Every content type ``POST /predict`` accepts.
ACCEPTED_TYPES = (NPY_CONTENT_TYPE, *IMAGE_TYPES)
#: Pillow modes converted to RGB without loss of meaning; others (grayscale, 16-bit, CMYK) are refused.
_RGB_MODES = ("RGB", "RGBA", "P")

class _Refused(Exception):
    """A request refused with a 4xx status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _check_limit(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise _Refused(400, f"Content-Length {declared!r} is not a number") from None
        if n > limit:
            raise _Refused(413, f"request body of {n} bytes is larger than the limit of {limit} bytes ({_mib(limit)})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body, or one longer than it declared: stop reading here
            raise _Refused(413, f"request body is larger than the limit of {limit} bytes ({_mib(limit)})")
        chunks.append(chunk)
    if size == 0:
        raise _Refused(400, f"empty request body; POST an .npy batch or an image ({', '.join(ACCEPTED_TYPES)})")
    return b"".join(chunks)


def _decode_npy(body: bytes, *, size: int | None, name: str, max_batch: int, max_bytes: int) -> np.ndarray:
    """An ``(N, S, S, 3)`` uint8 batch from ``.npy`` bytes, checked from the header before any data is touched."""
    f = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")
    except Exception as exc:  # noqa: BLE001 - any unreadable header: say why, never a traceback
        raise _Refused(400, f"body is not a .npy array ({exc.__class__.__name__}: {exc})") from None
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or min(shape) < 0:
        raise _Refused(400, f"expected (N, H, W, 3) uint8 images, got {shape} {dtype}")
    n = shape[0]
    if n == 0:
        raise _Refused(400, "the batch is empty: (0, H, W, 3)")
    if n > max_batch:
        raise _Refused(413, f"batch of {n} images is larger than the limit of {max_batch}; send several smaller batches")
    declared = math.prod(shape)
    if declared > max_bytes:
        raise _Refused(413, f".npy header declares {shape} = {declared} bytes of data, more than the limit of {max_bytes} bytes")
    if size is not None and shape[1:3] != (size, size):
        raise _Refused(400, f"{name} takes {size} x {size} images, got {shape[1]} x {shape[2]} (shape {shape})")
    offset = f.tell()
    if len(body) - offset != declared:
        raise _Refused(400, f".npy header declares {shape} ({declared} bytes of data) but the body holds {len(body) - offset}")
    return np.ndarray(shape, dtype=np.uint8, buffer=body, offset=offset, order="F" if fortran else "C")


def _decode_image(body: bytes, fmt: str, *, size: int | None, name: str, max_pixels: int) -> np.ndarray:
    """An HxWx3 uint8 image from PNG/JPEG/TIFF bytes; its declared size is checked before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # our own max_pixels decides, below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(body), formats=[fmt])  # lazy: reads the header only
    except Image.DecompressionBombError as exc:
        raise _Refused(413, f"image refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise _Refused(400, f"body is not a {fmt} image (its Content-Type says it is)") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file: say why
        raise _Refused(400, f"body is not a readable {fmt} image ({exc.__class__.__name__}: {exc})") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise _Refused(413, f"image declares {w} x {h} = {w * h} pixels, more than the limit of {max_pixels}; it was not decoded")
        if size is not None and (w < size or h < size):
            raise _Refused(422, f"image is {w} x {h} px, smaller than the {size} x {size} px patches {name} takes")
        if im.mode not in _RGB_MODES:
            raise _Refused(422, f"expected an 8-bit RGB image, got Pillow mode {im.mode!r} (grayscale, 16-bit and CMYK images are refused)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                return np.asarray(rgb)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
            raise _Refused(400, f"cannot decode the {fmt} image ({exc.__class__.__name__}: {exc})") from None


def create_app(
    model: Any = None,
    *,
    device: str = "cpu",
    max_body_bytes: int = MAX_BODY_BYTES,
    max_batch: int = MAX_BATCH,
    max_pixels: int = MAX_PIXELS,
) -> FastAPI:
    """A FastAPI application serving ``model``'s class probabilities (endpoints: see the module docstring).

    Parameters
    ----------
    model : str, path, torch.nn.Module or Target, optional
        Anything :func:`~histoscope.robustness.as_target` takes: a bundled model name
        (``"mitosis_detector"``, ``"colorectal_grader"``), a training checkpoint path, a
        module returning logits.  None: the bundled mitosis detector.
    device : str
        Where the model runs (``"cpu"``, ``"cuda"``, ...).
    max_body_bytes : int
        Largest request body; larger ones get HTTP 413 before they are read.
    max_batch : int
        Most patches in one ``.npy`` batch (HTTP 413 above); also the size of the
        chunks in which the patches of a large image are scored.
    max_pixels : int
        Most pixels an uploaded image may declare (HTTP 413 above, without decoding).

    Returns
    -------
    fastapi.FastAPI
        The application; ``app.state.target`` is the :class:`~histoscope.robustness.Target`
        it serves (its ``queries`` count the patches scored), ``app.state.limits`` the limits.

    Raises
    ------
    ValueError
        A limit that is not a positive int, or an unknown model name (the message lists
        the bundled ones).
    """
    max_body_bytes = _check_limit("max_body_bytes", max_body_bytes)
    max_batch = _check_limit("max_batch", max_batch)
    max_pixels = _check_limit("max_pixels", max_pixels)
    target: Target = as_target(model, device=device)
    module = getattr(target, "module", None)
    config = getattr(module, "config", None)
    card: dict[str, Any] | None = getattr(module, "card", None)
    size = target.input_size
    lock = threading.Lock()
    endpoints = "GET /health, /info, /card, /card.md; POST /predict"

    def scores(batch: np.ndarray) -> np.ndarray:
        x = image_to_tensor(batch).to(target.device)
        with lock:  # one model call at a time; requests queue here
            return target(x).cpu().numpy()

    def predict_npy(body: bytes) -> dict[str, Any]:
        batch = _decode_npy(body, size=size, name=target.name, max_batch=max_batch, max_bytes=max_body_bytes)
        return {"probabilities": scores(batch).tolist(), "classes": target.classes}

    def predict_image(body: bytes, fmt: str) -> dict[str, Any]:
        img = _decode_image(body, fmt, size=size, name=target.name, max_pixels=max_pixels)
        h, w = img.shape[:2]
        if size is None:  # a model without a fixed input size scores the image whole
            xs, ys, pw, ph = [0], [0], w, h
        else:
            xs, ys = grid_positions(0, w, size, size, edge="drop"), grid_positions(0, h, size, size, edge="drop")
            pw = ph = size
        corners = [(int(x), int(y)) for y in ys for x in xs]
        probs = []
        for i in range(0, len(corners), max_batch):
            batch = np.stack([img[y : y + ph, x : x + pw] for x, y in corners[i : i + max_batch]])
            probs.append(scores(batch))
        return {
            "classes": target.classes,
            "probabilities": np.concatenate(probs).tolist(),
            "n_patches": len(corners),
            "patch_size": size,
            "width": w,
            "height": h,
            "columns": len(xs),
            "rows": len(ys),
            "patches": [{"x": x, "y": y} for x, y in corners],
        }

    app = FastAPI(title=f"histoscope serve: {target.name}", version=__version__, description="Class probabilities of a histoscope model. No authentication.")
    app.state.target = target
    app.state.limits = {"max_body_bytes": max_body_bytes, "max_batch": max_batch, "max_pixels": max_pixels}

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}; endpoints: {endpoints}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; endpoints: {endpoints}"
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # uvicorn logs the traceback and then drops the connection: tell the client so
        message = f"internal error while serving {request.url.path}: {exc.__class__.__name__}: {exc}"
        return JSONResponse({"error": message}, status_code=500, headers={"Connection": "close"})

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: ``{"status": "ok"}``."""
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """The served model: name, classes, input size, resolution; the server's limits."""
        return {
            "name": target.name,
            "classes": target.classes,
            "input_size": size,
            "mpp": getattr(config, "mpp", None),
            "histoscope_version": __version__,
            "accepts": list(ACCEPTED_TYPES),
            **app.state.limits,
            "card": card is not None,
        }

    def no_card() -> _Refused:
        return _Refused(404, f"{target.name} has no model card (bundled models have one; this is a checkpoint or a plain module)")

    @app.get("/card")
    async def card_json() -> dict[str, Any]:
        """The model card (JSON) of a bundled model."""
        if card is None:
            raise no_card()
        return card

    @app.get("/card.md")
    async def card_markdown() -> Response:
        """The model card rendered as Markdown."""
        from .models.pretrained import render_card

        if card is None:
            raise no_card()
        try:
            text = render_card(card)
        except KeyError as exc:
            raise _Refused(404, f"the model card of {target.name} lacks the field {exc} needed to render it; GET /card has it as JSON") from None
        return Response(text, media_type="text/markdown; charset=utf-8")

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        """Class probabilities of an ``.npy`` batch or of the patches of one image."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ACCEPTED_TYPES:
            got = f"Content-Type {ctype!r}" if ctype else "no Content-Type"
            raise _Refused(415, f"{got}; POST /predict accepts {', '.join(ACCEPTED_TYPES)}")
        body = await _read_body(request, max_body_bytes)
        if ctype == NPY_CONTENT_TYPE:
            answer = await run_in_threadpool(predict_npy, body)
        else:
            answer = await run_in_threadpool(predict_image, body, IMAGE_TYPES[ctype])
        return JSONResponse(answer)

    return app


def serve_in_thread(
    model: Any = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    device: str = "cpu",
    max_body_bytes: int = MAX_BODY_BYTES,
    max_batch: int = MAX_BATCH,
    max_pixels: int = MAX_PIXELS,
    log_level: LogLevel = "warning",
    timeout: float = 30.0,
) -> tuple[AppThread, str]:
    """Serve ``model`` with uvicorn in a daemon thread; return once it answers ``GET /health``.

    Parameters
    ----------
    model, device, max_body_bytes, max_batch, max_pixels
        As in :func:`create_app`.
    host : str
        Address to bind; the loopback interface by default.
    port : int
        0 (default): a free port, chosen by the operating system.
    log_level : str
        uvicorn's log level (its loggers are not otherwise configured).
    timeout : float
        Seconds to wait for the server to answer.

    Returns
    -------
    server : histoscope.utils.webserver.AppThread
        ``server.shutdown()`` stops it (it is also a context manager); ``server.app`` is
        the application.
    url : str
        ``http://HOST:PORT``.

    Raises
    ------
    OSError
        The address cannot be bound.
    RuntimeError
        The server did not start within ``timeout`` seconds.
    """
    if not is_loopback(host):
        logger.warning("serving on %s: the model server has no authentication", host)
    app = create_app(model, device=device, max_body_bytes=max_body_bytes, max_batch=max_batch, max_pixels=max_pixels)
    server = app_in_thread(app, host=host, port=port, probe="/health", log_level=log_level, timeout=timeout, what="model server")
    return server, server.url
