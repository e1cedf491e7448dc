"""`histoscope view`: Deep Zoom tiles against OpenSlide's own, routes that stay inside their folders, and the page in a real browser."""

from __future__ import annotations

import io
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoscope.exceptions import HistoscopeError
from histoscope.utils.webserver import app_in_thread
from histoscope.viewer import ViewerData, create_viewer_app, find_openseadragon


def _osd_or_skip() -> Path:
    try:
        return find_openseadragon()
    except HistoscopeError as exc:
        pytest.skip(str(exc))


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """A real report: the TCGA slide analysed at 40x (tissue classes, mitoses, hotspot, NIC embedding)."""
    from histoscope.analyze import AnalysisConfig, analyze_slide
    from histoscope.models.pretrained import list_pretrained
    from tests.conftest import shared_path

    src = shared_path("slides", "tcga-cr-7395-01a-01-ts1.svs")
    if not {"colorectal_grader", "mitosis_detector"} <= set(list_pretrained()):
        pytest.skip("bundled models missing")
    out = tmp_path_factory.mktemp("report")
    analyze_slide(src, out, config=AnalysisConfig(slide_mpp=0.25, nic_encoder="mean_rgb"))
    return out / "tcga-cr-7395-01a-01-ts1"


@pytest.fixture(scope="module")
def server(report_dir):
    osd = _osd_or_skip()
    data = ViewerData(report_dir)
    srv = app_in_thread(create_viewer_app(data, openseadragon=osd), probe="/api/info", what="viewer")
    yield srv, data
    srv.shutdown()
    data.close()


def test_deep_zoom_tiles_match_openslides_generator(cmu_svs):
    """Our adapter over histoscope's reader gives OpenSlide's own Deep Zoom tiles, pixel for pixel."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    data = ViewerData(cmu_svs)
    ref = DeepZoomGenerator(openslide.OpenSlide(str(cmu_svs)), tile_size=254, overlap=1)
    assert data.deepzoom.level_count == ref.level_count and data.deepzoom.level_tiles == ref.level_tiles
    assert data.deepzoom.get_dzi("jpeg") == ref.get_dzi("jpeg")
    top = ref.level_count - 1
    last = (ref.level_tiles[top][0] - 1, ref.level_tiles[top][1] - 1)  # a partial tile at the corner
    for level, address in [(top, (0, 0)), (top, (3, 5)), (top, last), (top - 2, (1, 1)), (8, (0, 0))]:
        ours = np.asarray(data.deepzoom.get_tile(level, address).convert("RGB"), np.int16)
        theirs = np.asarray(ref.get_tile(level, address).convert("RGB"), np.int16)
        assert ours.shape == theirs.shape, (level, address)
        assert np.abs(ours - theirs).max() <= 1, (level, address)  # the same pixels (downsampled levels: same resampler)
    # the served JPEG decodes to the tile
    jpeg = Image.open(io.BytesIO(data.tile(top, 3, 5)))
    assert jpeg.format == "JPEG" and jpeg.size == ref.get_tile(top, (3, 5)).size
    with pytest.raises(KeyError):
        data.tile(top + 1, 0, 0)
    with pytest.raises(KeyError):
        data.tile(top, 10_000, 0)
    data.close()


def test_routes_answer_and_refuse_what_lies_outside(server, report_dir):
    srv, data = server
    status, body, ctype = _get(f"{srv.url}/slide.dzi")
    assert status == 200 and f'Width="{data.slide.dimensions[0]}"' in body.decode()
    top = data.deepzoom.level_count - 1
    status, body, ctype = _get(f"{srv.url}/slide_files/{top}/0_0.jpeg")
    assert status == 200 and ctype == "image/jpeg" and Image.open(io.BytesIO(body)).size == (255, 255)
    for bad in (f"/slide_files/{top + 1}/0_0.jpeg", f"/slide_files/{top}/0_0.png", f"/slide_files/{top}/a_b.jpeg", f"/slide_files/{top}/999_999.jpeg"):
        assert _get(srv.url + bad)[0] == 404, bad
    status, body, _ = _get(f"{srv.url}/report/report.html")
    assert status == 200 and b"histoscope report" in body
    assert _get(f"{srv.url}/report/detections.geojson")[0] == 200
    secret = report_dir.parent / "secret.txt"
    secret.write_text("not for the web")
    for bad in ("/report/../secret.txt", "/report/..%2fsecret.txt", "/report/%2e%2e/secret.txt", "/report/%2e%2e%2fsecret.txt",
                "/report/..%5csecret.txt", "/report//etc/passwd", "/report/%2fetc%2fpasswd", "/osd/../../../../etc/passwd",
                "/osd/..%2f..%2f..%2fpackage.json", "/static/..%2fapp.py", "/static/%2e%2e/app.py"):
        status, body, _ = _get(srv.url + bad)
        assert status == 404, bad
        assert b"not for the web" not in body and b"root:" not in body and b"import" not in body
    ov = _get(f"{srv.url}/api/overlays")[1]
    import json

    ov = json.loads(ov)
    assert ov["classes"]["names"][0] == "healthy" and len(ov["detections"]["rows"]) == data.summary["mitosis"]["detections"]
    assert ov["hotspot"]["radius"] == pytest.approx(data.summary["mitosis"]["hotspot_radius_px"])
    for name in ("classes", "tissue"):
        status, body, ctype = _get(f"{srv.url}/overlay/{name}.png")
        assert status == 200 and Image.open(io.BytesIO(body)).mode == "RGBA"
    assert ov["embedding"]["width"] == data.slide.dimensions[0] and ov["gradcam"] is None
    status, body, _ = _get(srv.url + ov["embedding"]["image"])
    assert status == 200 and Image.open(io.BytesIO(body)).size == Image.open(data.report_dir / "thumbnail.png").size


def test_a_bare_slide_and_bad_sources(tmp_path, cmu_svs):
    data = ViewerData(cmu_svs)
    ov = data.overlays()
    assert ov["classes"] is None and ov["detections"] is None and ov["tissue"]["width"] == data.slide.dimensions[0]
    data.close()
    with pytest.raises(HistoscopeError, match="not a histoscope report folder"):
        ViewerData(tmp_path)
    with pytest.raises(HistoscopeError, match="no such report folder or slide file"):
        ViewerData(tmp_path / "nothing")
    moved = tmp_path / "r"
    moved.mkdir()
    (moved / "summary.json").write_text('{"slide": {"path": "/gone/slide.svs"}}')
    with pytest.raises(HistoscopeError, match="--slide"):
        ViewerData(moved)
    assert ViewerData(moved, slide=cmu_svs).slide.dimensions == (2220, 2967)


def test_view_binds_loopback_by_default():
    from histoscope.cli.view import view

    assert {p.name: p.default for p in view.params}["host"] == "127.0.0.1"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium on this machine (apt install chromium)")


def test_page_in_a_real_browser_zooms_and_toggles(server, tmp_path):
    """Chromium loads the page, zooms onto a detection at full resolution, hides the class map; screenshots differ only there."""
    pw = pytest.importorskip("playwright.sync_api")
    srv, data = server
    served: list[tuple[int, int, int]] = []
    original = data.tile

    def counting(level, col, row, **kw):
        served.append((level, col, row))
        return original(level, col, row, **kw)

    data.tile = counting
    top = data.deepzoom.level_count - 1
    try:
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{srv.url}/")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.wait_for_function("window.histoscopeViewer.world.getItemAt(0).getFullyLoaded()", timeout=60_000)
            assert page.inner_text("#title") == data.slide.name
            assert page.locator("#toggles input").count() == 5  # tissue, classes, mitoses, hotspot, NIC embedding
            assert page.locator(".mitosis").count() == data.summary["mitosis"]["detections"]
            assert not any(lvl == top for lvl, *_ in served)  # the overview needs no full-resolution tile
            # zoom to full resolution (1 screen px per slide px) on the first detection
            x, y = data.overlays()["detections"]["rows"][0][:2]
            W = data.slide.dimensions[0]
            page.evaluate(
                f"""() => {{ const v = window.histoscopeViewer, item = v.world.getItemAt(0);
                v.viewport.zoomTo(item.imageToViewportZoom(1.0), null, true);
                v.viewport.panTo(new OpenSeadragon.Point({x / W}, {y / W}), true); }}"""
            )
            page.wait_for_timeout(300)
            page.wait_for_function("window.histoscopeViewer.world.getItemAt(0).getFullyLoaded()", timeout=60_000)
            assert any(lvl == top for lvl, *_ in served), "no full-resolution tile was requested after zooming in"
            ring = page.locator(".mitosis").first.bounding_box()
            assert ring["width"] == pytest.approx(2 * 8.0 / 0.25, rel=0.1)  # 8 um radius at 1 screen px per slide px
            shot_on = tmp_path / "viewer-classes-on.png"
            page.screenshot(path=str(shot_on))
            page.click("#toggle-classes")
            assert page.evaluate("window.histoscopeViewer.world.getItemAt(2).getOpacity()") == 0
            page.wait_for_timeout(300)
            shot_off = tmp_path / "viewer-classes-off.png"
            page.screenshot(path=str(shot_off))
            page.click("#toggle-detections")
            assert page.locator(".mitosis.hidden").count() == data.summary["mitosis"]["detections"]
            assert errors == []
            browser.close()
    finally:
        data.tile = original
    on, off = (np.asarray(Image.open(s).convert("RGB"), np.int16) for s in (shot_on, shot_off))
    viewer_area = (slice(60, 780), slice(0, 1000))  # the slide canvas, not the side panel
    changed = np.abs(on[viewer_area] - off[viewer_area]).sum(-1) > 30
    assert changed.mean() > 0.05  # the class colours went away
