"""A model behind a small REST API (``histoscope serve``): what the one-pixel paper attacked.

Endpoints (JSON answers):

``GET /health``
    ``{"status": "ok"}``.
``GET /info``
    ``{"name", "classes", "input_size", "mpp"}``.
``POST /predict``
    Body: an ``.npy`` array of ``(N, H, W, 3)`` uint8 RGB images (content type
    ``application/x-npy``); answer ``{"probabilities": [[...], ...], "classes": [...]}``.
    Malformed input gets HTTP 400 with ``{"error": ...}`` naming the problem.

:class:`histoscope.robustness.HTTPTarget` is the client.  The server binds 127.0.0.1 by
default; it has no authentication, so do not expose it beyond a trusted network.
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from .robustness.target import Target, as_target
from .utils.convert import image_to_tensor

__all__ = ["make_server", "serve_in_thread", "MAX_BODY_BYTES"]

#: Largest request body accepted (a batch of about 2,000 images of 128 x 128 px).
MAX_BODY_BYTES = 100 * 1024 * 1024


def _handler(target: Target, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "histoscope"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
            pass

        def _send(self, code: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok"})
            elif self.path.rstrip("/") == "/info":
                cfg = getattr(getattr(target, "module", None), "config", None)
                self._send(200, {"name": target.name, "classes": target.classes, "input_size": target.input_size, "mpp": getattr(cfg, "mpp", None)})
            else:
                self._send(404, {"error": f"no endpoint {self.path}; use /predict, /info or /health"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/predict":
                self._send(404, {"error": f"no endpoint {self.path}; POST images to /predict"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length <= 0 or length > MAX_BODY_BYTES:
                self._send(400 if length <= 0 else 413, {"error": f"request body must be 1..{MAX_BODY_BYTES} bytes of .npy, got Content-Length {self.headers.get('Content-Length')}"})
                return
            try:
                arr = np.load(io.BytesIO(self.rfile.read(length)), allow_pickle=False)
            except Exception as exc:  # noqa: BLE001 - any unreadable body: say why
                self._send(400, {"error": f"body is not a .npy array ({exc.__class__.__name__}: {exc})"})
                return
            if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
                self._send(400, {"error": f"expected (N, H, W, 3) uint8 images, got {arr.shape} {arr.dtype}"})
                return
            try:
                x = image_to_tensor(arr).to(target.device)
                with lock:  # one model call at a time; requests queue
                    p = target(x).cpu().numpy()
            except ValueError as exc:
                self._send(400, {"error": str(exc)})
                return
            self._send(200, {"probabilities": p.tolist(), "classes": target.classes})

    return Handler


def make_server(model: Any = None, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> ThreadingHTTPServer:
    """An HTTP server for ``model`` (anything :func:`~histoscope.robustness.as_target` takes); ``port=0`` picks a free one."""
    target = as_target(model, device=device)
    server = ThreadingHTTPServer((host, port), _handler(target, threading.Lock()))
    server.target = target  # type: ignore[attr-defined]
    return server


def serve_in_thread(model: Any = None, *, host: str = "127.0.0.1", port: int = 0, device: str = "cpu") -> tuple[ThreadingHTTPServer, str]:
    """Start a server in a daemon thread; returns it and its base URL (``server.shutdown()`` stops it)."""
    server = make_server(model, host=host, port=port, device=device)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    h, p = server.server_address[:2]
    return server, f"http://{h}:{p}"
