"""``histoscope serve``: the FastAPI model server, tested over real HTTP against uvicorn on 127.0.0.1."""

from __future__ import annotations

import http.client
import inspect
import io
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from histoscope.cli.main import cli
from histoscope.models.pretrained import load_pretrained, pretrained_card, render_card
from histoscope.models.registry import ModelConfig, create_model
from histoscope.robustness import HTTPTarget
from histoscope.serve import ACCEPTED_TYPES, MAX_PIXELS, _decode_image, _Refused, create_app, serve_in_thread
from histoscope.utils.webserver import is_loopback
from histoscope.utils.convert import image_to_tensor

NPY = {"Content-Type": "application/x-npy"}


def tissue(h: int, w: int, *, y: int = 100, x: int = 120) -> np.ndarray:
    """A real stained-tissue crop (the image scikit-image ships)."""
    from skimage import data

    return np.ascontiguousarray(data.immunohistochemistry()[y : y + h, x : x + w])


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype.hasobject)
    return buf.getvalue()


def encode(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt)
    return buf.getvalue()


def png_header(width: int, height: int, *, rows: int = 0) -> bytes:
    """A PNG declaring ``width x height`` RGB pixels, with pixel data for only ``rows`` rows (0: none)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(bytes(rows * (1 + 3 * width)))) if rows else b""
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + chunk(b"IEND", b"")


def direct(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """The reference: the model called in this process on the same pixels."""
    with torch.inference_mode():
        return torch.softmax(model(image_to_tensor(batch)), dim=1).numpy()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_pretrained("mitosis_detector")


@pytest.fixture(scope="module")
def served():
    """The bundled mitosis detector (64 px) behind a real uvicorn server, default limits."""
    server, url = serve_in_thread("mitosis_detector")
    with httpx.Client(base_url=url, timeout=30) as client:
        yield server, url, client
    server.shutdown()


@pytest.fixture(scope="module")
def small():
    """A model without a card, served with small limits: 64 KiB bodies, 4 patches, 40,000 pixels."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(pretrained_card("mitosis_detector")["config"])
    module = create_model(cfg.arch, **cfg.build_kwargs()).eval()
    server, url = serve_in_thread(module, max_body_bytes=64 * 1024, max_batch=4, max_pixels=40_000)
    with httpx.Client(base_url=url, timeout=30) as client:
        yield server, url, client
    server.shutdown()


def error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    return r.json()["error"]


# --- binding --------------------------------------------------------------------------


def test_default_host_is_loopback(served):
    server, url, _ = served
    assert inspect.signature(serve_in_thread).parameters["host"].default == "127.0.0.1"
    assert next(p for p in cli.commands["serve"].params if p.name == "host").default == "127.0.0.1"
    assert url.startswith("http://127.0.0.1:")
    assert server.server.servers[0].sockets[0].getsockname()[0] == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.org")


# --- answers --------------------------------------------------------------------------


def test_health_and_info(served):
    _, _, client = served
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["name"] == "mitosis_detector" and info["classes"] == ["non-mitosis", "mitosis"]
    assert info["input_size"] == 64 and info["mpp"] == 0.25 and info["card"] is True
    assert info["accepts"] == list(ACCEPTED_TYPES) and info["max_pixels"] == MAX_PIXELS
    from histoscope import __version__

    assert info["histoscope_version"] == __version__


def test_npy_batch_matches_the_model_called_directly(served, model):
    _, _, client = served
    rng = np.random.default_rng(0)
    batch = np.stack([tissue(64, 64), tissue(64, 64, y=300, x=300), *rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)])
    r = client.post("/predict", content=npy(batch), headers=NPY)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["classes"] == ["non-mitosis", "mitosis"]
    np.testing.assert_allclose(answer["probabilities"], direct(model, batch), atol=1e-6)
    # Fortran-ordered arrays and content-type parameters are understood
    r = client.post("/predict", content=npy(np.asfortranarray(batch)), headers={"Content-Type": "application/x-npy; charset=binary"})
    np.testing.assert_allclose(r.json()["probabilities"], direct(model, batch), atol=1e-6)


def test_image_of_the_input_size_is_one_patch(served, model):
    _, _, client = served
    img = tissue(64, 64)
    answer = client.post("/predict", content=encode(img), headers={"Content-Type": "image/png"}).json()
    assert answer["n_patches"] == 1 and answer["patches"] == [{"x": 0, "y": 0}] and answer["patch_size"] == 64
    np.testing.assert_allclose(answer["probabilities"], direct(model, img[None]), atol=1e-6)


@pytest.mark.parametrize("fmt, ctype", [("PNG", "image/png"), ("TIFF", "image/tiff"), ("JPEG", "image/jpeg")])
def test_larger_image_is_tiled_into_input_size_patches(served, model, fmt, ctype):
    _, _, client = served
    body = encode(tissue(150, 200), fmt)
    img = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))  # what the server decodes (JPEG is lossy)
    r = client.post("/predict", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    answer = r.json()
    # 200 x 150 px: 3 columns x 2 rows of 64 px; the 8 px and 22 px remainders are dropped
    assert (answer["width"], answer["height"], answer["columns"], answer["rows"], answer["n_patches"]) == (200, 150, 3, 2, 6)
    assert answer["patches"] == [{"x": x, "y": y} for y in (0, 64) for x in (0, 64, 128)]
    crops = np.stack([img[p["y"] : p["y"] + 64, p["x"] : p["x"] + 64] for p in answer["patches"]])
    np.testing.assert_allclose(answer["probabilities"], direct(model, crops), atol=1e-6)


def test_tiled_image_is_scored_in_chunks_of_max_batch(small):
    server, _, client = small
    target = server.app.state.target
    img = tissue(64, 64 * 6 + 30)  # 6 patches with max_batch 4: two model calls, one answer
    q0 = target.queries
    answer = client.post("/predict", content=encode(img), headers={"Content-Type": "image/png"}).json()
    assert answer["n_patches"] == 6 and target.queries - q0 == 6
    crops = np.stack([img[:, x : x + 64] for x in range(0, 384, 64)])
    np.testing.assert_allclose(answer["probabilities"], direct(target.module, crops), atol=1e-6)


def test_card_json_and_markdown(served):
    _, _, client = served
    card = pretrained_card("mitosis_detector")
    assert client.get("/card").json() == card
    r = client.get("/card.md")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
    assert r.text == render_card(card) and r.text.startswith("# Model card: `mitosis_detector`")


def test_model_without_a_card_gets_404(small):
    _, _, client = small
    assert client.get("/info").json()["card"] is False
    assert "no model card" in error(client.get("/card"), 404)
    assert "no model card" in error(client.get("/card.md"), 404)


def test_http_target_against_the_server(served, small, model):
    _, url, _ = served
    remote = HTTPTarget(url)
    assert remote.classes == ["non-mitosis", "mitosis"] and remote.input_size == 64
    batch = np.stack([tissue(64, 64, y=10 * i, x=7 * i) for i in range(10)])
    x = image_to_tensor(batch)
    np.testing.assert_allclose(remote(x).numpy(), direct(model, batch), atol=1e-6)
    # a server with smaller limits: the target sends batches it accepts (4 patches at most)
    server, small_url, _ = small
    remote = HTTPTarget(small_url)
    assert remote.batch_size == 4
    q0 = server.app.state.target.queries
    assert remote(x).shape == (10, 2) and server.app.state.target.queries - q0 == 10


def test_concurrent_requests_get_their_own_answers(served, model):
    _, url, _ = served
    batches = [np.stack([tissue(64, 64, y=5 * i + j, x=3 * i) for j in range(1 + i % 3)]) for i in range(8)]
    answers: list = [None] * len(batches)

    def post(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            answers[i] = c.post("/predict", content=npy(batches[i]), headers=NPY).json()["probabilities"]

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for b, a in zip(batches, answers):
        np.testing.assert_allclose(a, direct(model, b), atol=1e-6)


def test_model_without_input_size_scores_whole_images_and_failures_are_json_500():
    seen = []

    def fn(images: np.ndarray) -> np.ndarray:  # a callable target: any image size
        if images.shape[1] == 13:
            raise RuntimeError("the model broke")
        seen.append(images.shape)
        return np.full((len(images), 2), 0.5)

    server, url = serve_in_thread(fn)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            answer = client.post("/predict", content=encode(tissue(40, 50)), headers={"Content-Type": "image/png"}).json()
            assert answer["n_patches"] == 1 and answer["patch_size"] is None and seen[-1] == (1, 40, 50, 3)
            r = client.post("/predict", content=npy(np.zeros((1, 13, 13, 3), np.uint8)), headers=NPY)
            assert "internal error while serving /predict: RuntimeError: the model broke" in error(r, 500)
            assert client.get("/health").status_code == 200  # and it keeps serving
    finally:
        server.shutdown()


# --- refusals -------------------------------------------------------------------------


def test_413_from_content_length_before_reading_the_body(served):
    _, url, _ = served
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "application/x-npy")
    conn.putheader("Content-Length", str(10**12))  # a terabyte announced, not a byte sent
    conn.endheaders()
    t0 = time.perf_counter()
    r = conn.getresponse()
    assert r.status == 413 and time.perf_counter() - t0 < 2
    assert "larger than the limit of 104857600 bytes" in r.read().decode()
    conn.close()


def test_413_for_a_chunked_body_over_the_limit(small):
    _, _, client = small

    def chunks():  # no Content-Length: transfer-encoding chunked, 16 x 8 KiB = twice the limit
        for _ in range(16):
            yield bytes(8192)

    assert "larger than the limit of 65536 bytes" in error(client.post("/predict", content=chunks(), headers=NPY), 413)


def test_413_for_too_many_patches_and_npy_bombs(served, small):
    _, _, client = small
    assert "batch of 5 images is larger than the limit of 4" in error(client.post("/predict", content=npy(np.zeros((5, 64, 64, 3), np.uint8)), headers=NPY), 413)
    _, _, client = served
    # a header declaring 786 MB of pixels, followed by 100 bytes
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (1000, 512, 512, 3)})
    msg = error(client.post("/predict", content=buf.getvalue() + bytes(100), headers=NPY), 413)
    assert "declares (1000, 512, 512, 3) = 786432000 bytes" in msg


def test_415_for_missing_or_unknown_content_types(served):
    _, _, client = served
    body = npy(np.zeros((1, 64, 64, 3), np.uint8))
    msg = error(client.post("/predict", content=body), 415)
    assert msg.startswith("no Content-Type") and all(t in msg for t in ACCEPTED_TYPES)
    for ctype in ("text/plain", "multipart/form-data; boundary=x", "application/octet-stream", "image/gif"):
        assert all(t in error(client.post("/predict", content=body, headers={"Content-Type": ctype}), 415) for t in ACCEPTED_TYPES)


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"not numpy", "body is not a .npy array"),
        (npy(np.zeros((2, 64, 64), np.uint8)), "expected (N, H, W, 3) uint8 images, got (2, 64, 64) uint8"),
        (npy(np.zeros((2, 64, 64, 3), np.float32)), "expected (N, H, W, 3) uint8 images, got (2, 64, 64, 3) float32"),
        (npy(np.zeros((2, 32, 32, 3), np.uint8)), "mitosis_detector takes 64 x 64 images, got 32 x 32"),
        (npy(np.zeros((0, 64, 64, 3), np.uint8)), "the batch is empty"),
        (npy(np.zeros((2, 64, 64, 3), np.uint8))[:-10], "but the body holds 24566"),
        (npy(np.array([{"a": 1}], dtype=object)), "got (1,) object"),  # pickles are never loaded
        (b"", "empty request body"),
    ],
)
def test_400_for_bad_npy_bodies(served, body, expected):
    _, _, client = served
    assert expected in error(client.post("/predict", content=body, headers=NPY), 400)


def test_bad_images(served):
    _, _, client = served
    png = encode(tissue(100, 100))
    assert "body is not a JPEG image" in error(client.post("/predict", content=png, headers={"Content-Type": "image/jpeg"}), 400)
    assert "cannot decode the PNG image" in error(client.post("/predict", content=png[: len(png) // 2], headers={"Content-Type": "image/png"}), 400)
    msg = error(client.post("/predict", content=encode(tissue(32, 40)), headers={"Content-Type": "image/png"}), 422)
    assert msg == "image is 40 x 32 px, smaller than the 64 x 64 px patches mitosis_detector takes"
    gray = encode(tissue(64, 64)[..., 0])
    assert "Pillow mode 'L'" in error(client.post("/predict", content=gray, headers={"Content-Type": "image/png"}), 422)


def test_decompression_bombs_are_refused_from_the_header(served, small):
    _, _, client = served
    t0 = time.perf_counter()
    # 10^10 pixels (30 GB decoded) in 100 bytes
    assert "decompression bomb" in error(client.post("/predict", content=png_header(100_000, 100_000, rows=2), headers={"Content-Type": "image/png"}), 413)
    # 81 M pixels (243 MB decoded): under Pillow's own limit, over the server's 67 M
    msg = error(client.post("/predict", content=png_header(9000, 9000, rows=2), headers={"Content-Type": "image/png"}), 413)
    assert msg == f"image declares 9000 x 9000 = 81000000 pixels, more than the limit of {MAX_PIXELS}; it was not decoded"
    assert time.perf_counter() - t0 < 2
    # a real, complete image over this server's smaller limit
    _, _, client = small
    flat = encode(np.full((200, 250, 3), 230, np.uint8))  # a real image, a few hundred bytes, 50,000 pixels
    assert "image declares 250 x 200 = 50000 pixels" in error(client.post("/predict", content=flat, headers={"Content-Type": "image/png"}), 413)


def test_the_pixel_limit_is_checked_before_any_pixel_is_decoded():
    # no pixel data at all: decoding would fail with 400, the header check answers 413 first
    with pytest.raises(_Refused) as exc:
        _decode_image(png_header(9000, 9000), "PNG", size=64, name="m", max_pixels=MAX_PIXELS)
    assert exc.value.status == 413
    with pytest.raises(_Refused) as exc:
        _decode_image(png_header(90, 90), "PNG", size=64, name="m", max_pixels=MAX_PIXELS)
    assert exc.value.status == 400


def test_unknown_routes_and_methods_get_json_errors(served):
    _, _, client = served
    assert "no endpoint /nope" in error(client.get("/nope"), 404)
    assert "POST /predict" in error(client.post("/info"), 405)
    assert "GET is not allowed on /predict" in error(client.get("/predict"), 405)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_batch must be a positive int, got 0"):
        create_app("mitosis_detector", max_batch=0)
    with pytest.raises(ValueError, match="no model 'nope'"):
        create_app("nope")


# --- command line ---------------------------------------------------------------------


def test_cli_passes_limits_and_warns_off_loopback(monkeypatch):
    calls = []
    monkeypatch.setattr("histoscope.utils.webserver.run_app", lambda app, **kw: calls.append((app, kw)))
    r = CliRunner().invoke(cli, ["serve", "--model", "colorectal_grader", "--max-body-mb", "2", "--max-batch", "16"])
    assert r.exit_code == 0, r.output
    app, kw = calls[-1]
    assert app.state.target.name == "colorectal_grader" and app.state.target.input_size == 96
    assert app.state.limits == {"max_body_bytes": 2 * 2**20, "max_batch": 16, "max_pixels": MAX_PIXELS}
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8000 and kw["log_level"] == "warning" and kw["access_log"] is False
    assert "warning" not in r.stderr
    r = CliRunner().invoke(cli, ["-v", "serve", "--host", "0.0.0.0"])
    assert "binding 0.0.0.0 exposes the model to the network; the server has no authentication" in r.stderr
    assert calls[-1][1]["log_level"] == "info" and calls[-1][1]["access_log"] is True
    r = CliRunner().invoke(cli, ["serve", "--model", "nope"])
    assert r.exit_code == 2 and "no model 'nope'" in r.stderr


def test_cli_serves_until_interrupted():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "histoscope.cli.main", "serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving mitosis_detector at http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
