"""``histoscope view``: pan and zoom a slide at full resolution with the analysis overlays.

The page is OpenSeadragon (a maintained BSD-licensed JavaScript viewer, installed from npm
with ``npm ci``; see :func:`find_openseadragon`) over Deep Zoom tiles that
:class:`openslide.deepzoom.DeepZoomGenerator` cuts from histoscope's own slide reader, so
every file histoscope opens (OpenSlide formats, OME-TIFF and other TIFFs, plain images)
can be viewed. Overlays come from an ``analyze`` report folder: the tissue outline, the
tissue-class map, mitosis detections (with their probabilities) and the 2 mm^2 hotspot;
each can be switched on and off.

Routes (all GET; the app binds 127.0.0.1 unless told otherwise and serves nothing outside
its report folder and the OpenSeadragon build):

``/``                               the viewer page
``/slide.dzi``                      Deep Zoom descriptor
``/slide_files/{level}/{c}_{r}.jpeg`` one Deep Zoom tile
``/api/info``                       slide name, size, resolution, available overlays
``/api/overlays``                   detections, hotspot, class names/colours, overlay images
``/overlay/{name}.png``             tissue outline and class map as transparent PNGs
``/report/{file}``                  files of the report folder (report.html, CSV, GeoJSON)
``/osd/{file}``, ``/static/{file}`` OpenSeadragon and the page's own script and style
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..exceptions import HistoscopeError
from ..slide import open_slide
from ..slide.base import Slide

__all__ = ["ViewerData", "create_viewer_app", "find_openseadragon", "OPENSEADRAGON_VERSION", "MAX_DETECTIONS"]

#: The OpenSeadragon release package.json pins (``npm ci`` installs it into node_modules/).
OPENSEADRAGON_VERSION = "6.1.1"
#: Detections drawn by the page (the most probable first); the rest stay in detections.csv.
MAX_DETECTIONS = 5000
#: Deep Zoom tile side and overlap (254 + 2 x 1 = 256, what OpenSeadragon fetches best).
TILE_SIZE, TILE_OVERLAP = 254, 1
STATIC = Path(__file__).resolve().parent / "static"


def find_openseadragon() -> Path:
    """The folder holding ``openseadragon.min.js`` and its ``images/``.

    Looked up, in order: ``$HISTOSCOPE_OPENSEADRAGON``; ``node_modules/openseadragon/build/
    openseadragon`` in the histoscope checkout (what ``npm ci`` installs from package.json),
    in the current folder, and in ``~/.local/share/histoscope``.

    Raises
    ------
    HistoscopeError
        Not found; the message says how to install it (no download happens at run time).
    """
    rel = Path("node_modules", "openseadragon", "build", "openseadragon")
    candidates = []
    if os.environ.get("HISTOSCOPE_OPENSEADRAGON"):
        candidates.append(Path(os.environ["HISTOSCOPE_OPENSEADRAGON"]))
    candidates += [Path(__file__).resolve().parents[3] / rel, Path.cwd() / rel, Path.home() / ".local" / "share" / "histoscope" / rel]
    for c in candidates:
        if (c / "openseadragon.min.js").is_file():
            return c
    raise HistoscopeError(
        "the viewer needs OpenSeadragon (a JavaScript library), which is not installed: run `npm ci` in the "
        f"histoscope checkout (package.json pins openseadragon {OPENSEADRAGON_VERSION}), or "
        f"`npm install --prefix ~/.local/share/histoscope openseadragon@{OPENSEADRAGON_VERSION}`, or set "
        "HISTOSCOPE_OPENSEADRAGON to a folder holding openseadragon.min.js"
    )


class _DeepZoomSource:
    """What :class:`openslide.deepzoom.DeepZoomGenerator` reads, backed by a histoscope :class:`Slide`."""

    def __init__(self, slide: Slide) -> None:
        self._slide = slide
        self.dimensions = slide.dimensions
        self.level_dimensions = tuple(slide.level_dimensions)
        self.level_downsamples = tuple(slide.level_downsamples)
        self.level_count = len(self.level_dimensions)
        self.properties: dict[str, str] = {}  # no bounds: the whole slide; white background

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return self._slide.best_level_for_downsample(downsample)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        return Image.fromarray(self._slide.read_region(location, size, level=level)).convert("RGBA")


class ViewerData:
    """A slide and, when given a report folder, the overlays ``histoscope analyze`` wrote for it.

    Parameters
    ----------
    source : path
        A report folder (``<out>/<slide name>/`` with ``summary.json``) or a slide file.
    slide : path, optional
        The slide file, when a report folder's recorded path no longer exists.
    slide_mpp : float, optional
        Level-0 microns per pixel for a slide file that does not record it.
    """

    def __init__(self, source: str | os.PathLike[str], *, slide: str | os.PathLike[str] | None = None, slide_mpp: float | None = None) -> None:
        from openslide.deepzoom import DeepZoomGenerator

        source = Path(source)
        self.report_dir: Path | None = None
        self.summary: dict[str, Any] = {}
        if source.is_dir():
            summary_path = source / "summary.json"
            if not summary_path.is_file():
                raise HistoscopeError(f"{source}: not a histoscope report folder (no summary.json); give a report folder written by `histoscope analyze` or a slide file")
            try:
                self.summary = json.loads(summary_path.read_text())
            except ValueError as exc:
                raise HistoscopeError(f"{summary_path}: unreadable summary ({exc})") from None
            self.report_dir = source.resolve()
            recorded = self.summary.get("slide", {}).get("path")
            slide = slide or recorded
            if slide is None or not Path(slide).is_file():
                raise HistoscopeError(f"{source}: the slide it was made from ({recorded}) is not there; pass the slide file with --slide")
            slide_mpp = slide_mpp or self.summary.get("config", {}).get("slide_mpp")
        elif source.is_file():
            slide = source
        else:
            raise HistoscopeError(f"{source}: no such report folder or slide file")
        self.slide = open_slide(slide, mpp=slide_mpp)
        self.deepzoom = DeepZoomGenerator(_DeepZoomSource(self.slide), tile_size=TILE_SIZE, overlap=TILE_OVERLAP)
        self._cache: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._pngs: dict[str, bytes] = {}

    def close(self) -> None:
        self.slide.close()

    # ------------------------------------------------------------------ tiles
    def tile(self, level: int, col: int, row: int, *, quality: int = 85) -> bytes:
        """One Deep Zoom tile as JPEG bytes (the last 1,024 are kept in memory).

        Raises
        ------
        KeyError
            No such level or tile address.
        """
        key = (level, col, row)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        if not 0 <= level < self.deepzoom.level_count:
            raise KeyError(f"no Deep Zoom level {level} (0..{self.deepzoom.level_count - 1})")
        cols, rows = self.deepzoom.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise KeyError(f"no tile {col}_{row} at level {level} ({cols} x {rows} tiles)")
        buf = io.BytesIO()
        self.deepzoom.get_tile(level, (col, row)).save(buf, format="JPEG", quality=quality)
        data = buf.getvalue()
        with self._cache_lock:
            self._cache[key] = data
            if len(self._cache) > 1024:
                self._cache.popitem(last=False)
        return data

    # ------------------------------------------------------------------ overlays
    def info(self) -> dict[str, Any]:
        W, H = self.slide.dimensions
        return {
            "name": self.slide.name,
            "path": self.slide.path,
            "dimensions": [W, H],
            "mpp": None if self.slide.mpp is None else list(self.slide.mpp),
            "levels": self.deepzoom.level_count,
            "report": self.report_dir is not None and (self.report_dir / "report.html").is_file(),
            "overlays": sorted(k for k, v in self.overlays().items() if v),
        }

    @cached_property
    def _class_map(self) -> tuple[np.ndarray, dict[str, Any]] | None:
        path = None if self.report_dir is None else self.report_dir / "tissue-classes.zarr"
        if path is None or not path.is_dir():
            return None
        import zarr

        g = zarr.open_group(str(path), mode="r")
        return np.asarray(g["class"][...]), dict(g.attrs)

    @cached_property
    def _tissue(self) -> Any:
        from ..slide import tissue_mask

        return tissue_mask(self.slide)

    def overlay_png(self, name: str) -> bytes:
        """``"classes"`` (the class map, 45% opaque, one block per tile) or ``"tissue"`` (the tissue outline), rendered once."""
        if name not in self._pngs:
            self._pngs[name] = self._render_overlay(name)
        return self._pngs[name]

    def _render_overlay(self, name: str) -> bytes:
        if name == "classes":
            if self._class_map is None:
                raise KeyError("this report has no tissue-class map")
            cls, attrs = self._class_map
            colours = np.array([[*c, 115] for c in attrs["colours"]] + [[0, 0, 0, 0]], np.uint8)
            rgba = colours[np.where(cls < 0, len(colours) - 1, cls)]
            scale = max(1, min(16, 4096 // max(1, *cls.shape)))
            img = Image.fromarray(rgba, "RGBA").resize((cls.shape[1] * scale, cls.shape[0] * scale), Image.NEAREST)
        elif name == "tissue":
            from skimage.segmentation import find_boundaries

            arr = self._tissue.array
            scale = max(1, min(8, 4096 // max(arr.shape)))
            big = np.kron(arr, np.ones((scale, scale), bool))
            edge = find_boundaries(big, mode="inner")
            from scipy.ndimage import binary_dilation

            edge = binary_dilation(edge, iterations=max(1, scale // 3))
            rgba = np.zeros((*big.shape, 4), np.uint8)
            rgba[edge] = (0, 170, 80, 255)
            img = Image.fromarray(rgba, "RGBA")
        else:
            raise KeyError(f"no overlay {name!r}")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    def overlays(self) -> dict[str, Any]:
        """Everything the page draws, in level-0 pixels (read from the report folder once)."""
        return self._overlays

    @cached_property
    def _overlays(self) -> dict[str, Any]:
        W, H = self.slide.dimensions
        out: dict[str, Any] = {"tissue": {"image": "/overlay/tissue.png", "x": 0, "y": 0, "width": W, "height": H}}
        cm = self._class_map
        out["classes"] = None
        if cm is not None:
            cls, attrs = cm
            ox, oy = attrs["origin"]
            s = attrs["stride"]
            out["classes"] = {
                "image": "/overlay/classes.png", "x": ox, "y": oy, "width": cls.shape[1] * s, "height": cls.shape[0] * s,
                "names": attrs["classes"], "colours": attrs["colours"], "model": attrs.get("model"),
            }
        out["detections"] = None
        out["hotspot"] = None
        if self.report_dir is not None and (self.report_dir / "detections.csv").is_file():
            import pandas as pd

            det = pd.read_csv(self.report_dir / "detections.csv")
            det = det.sort_values("prob", ascending=False).head(MAX_DETECTIONS) if "prob" in det else det.head(MAX_DETECTIONS)
            cols = [c for c in ("x", "y", "prob", "p_atypical") if c in det]
            mpp = self.slide.mpp[0] if self.slide.mpp else 0.25
            out["detections"] = {"columns": cols, "rows": det[cols].round(4).to_numpy().tolist(), "radius": 8.0 / mpp, "total": int(self.summary.get("mitosis", {}).get("detections", len(det)))}
            m = self.summary.get("mitosis") or {}
            if m.get("hotspot_centre_xy") is not None:
                out["hotspot"] = {"x": m["hotspot_centre_xy"][0], "y": m["hotspot_centre_xy"][1], "radius": m["hotspot_radius_px"], "count": m.get("hotspot_count"), "grade": m.get("grade")}
        out["gradcam"] = None
        if self.report_dir is not None and (self.report_dir / "gradcam.png").is_file():
            out["gradcam"] = {"image": "/report/gradcam.png", "x": 0, "y": 0, "width": W, "height": H}
        out["embedding"] = None
        if self.report_dir is not None and (self.report_dir / "embedding.png").is_file():
            out["embedding"] = {"image": "/report/embedding.png", "x": 0, "y": 0, "width": W, "height": H}
        return out


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` if it is a file inside ``root`` (no ``..``, no absolute path, no symlink out)."""
    try:
        p = (root / rel).resolve()
    except (OSError, ValueError):
        return None
    return p if p.is_relative_to(root.resolve()) and p.is_file() else None


_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".html": "text/html; charset=utf-8", ".json": "application/json", ".geojson": "application/geo+json", ".csv": "text/csv", ".svg": "image/svg+xml", ".map": "application/json", ".jpg": "image/jpeg"}


def create_viewer_app(data: ViewerData, *, openseadragon: Path | None = None) -> Any:
    """The FastAPI app of the viewer (see the module docstring for its routes)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    osd = openseadragon or find_openseadragon()
    app = FastAPI(title=f"histoscope viewer: {data.slide.name}", docs_url=None, redoc_url=None, openapi_url=None)

    def _file(root: Path | None, rel: str) -> Response:
        p = None if root is None else _inside(root, rel)
        if p is None:
            return JSONResponse({"error": f"no file {rel!r}"}, status_code=404)
        return Response(p.read_bytes(), media_type=_TYPES.get(p.suffix.lower(), "application/octet-stream"), headers={"Cache-Control": "no-cache"})

    @app.get("/")
    def index() -> Response:
        return _file(STATIC, "index.html")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/slide.dzi")
    def dzi() -> Response:
        return Response(data.deepzoom.get_dzi("jpeg"), media_type="application/xml")

    @app.get("/slide_files/{level}/{address}")
    def tile(level: int, address: str) -> Response:
        col_row, _, ext = address.partition(".")
        try:
            col, row = (int(v) for v in col_row.split("_"))
            if ext != "jpeg":
                raise ValueError
            body = data.tile(level, col, row)
        except (ValueError, KeyError) as exc:
            return JSONResponse({"error": f"no tile {level}/{address}" + (f": {exc.args[0]}" if isinstance(exc, KeyError) else "")}, status_code=404)
        return Response(body, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return data.info()

    @app.get("/api/overlays")
    def overlays() -> dict[str, Any]:
        return data.overlays()

    @app.get("/overlay/{name}.png")
    def overlay(name: str) -> Response:
        try:
            return Response(data.overlay_png(name), media_type="image/png")
        except KeyError as exc:
            return JSONResponse({"error": exc.args[0]}, status_code=404)

    @app.get("/report/{path:path}")
    def report(path: str) -> Response:
        return _file(data.report_dir, path)

    @app.get("/osd/{path:path}")
    def openseadragon_files(path: str) -> Response:
        return _file(osd, path)

    @app.get("/static/{path:path}")
    def static(path: str) -> Response:
        return _file(STATIC, path)

    return app
