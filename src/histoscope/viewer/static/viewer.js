// histoscope viewer: OpenSeadragon over /slide.dzi with the overlays of /api/overlays.
(async function () {
  "use strict";
  const info = await (await fetch("/api/info")).json();
  const ov = await (await fetch("/api/overlays")).json();
  const W = info.dimensions[0];
  document.title = "histoscope viewer — " + info.name;
  document.getElementById("title").textContent = info.name;
  const mpp = info.mpp ? info.mpp[0] : null;
  document.getElementById("meta").textContent =
    `${info.dimensions[0].toLocaleString()} x ${info.dimensions[1].toLocaleString()} px` +
    (mpp ? ` · ${mpp.toFixed(3)} µm/px` : " · resolution unknown");
  if (info.report) document.getElementById("report-link").hidden = false;

  const viewer = OpenSeadragon({
    id: "viewer",
    prefixUrl: "/osd/images/",
    tileSources: "/slide.dzi",
    drawer: "canvas",
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 4,
    imageSmoothingEnabled: false,
    gestureSettingsMouse: { clickToZoom: false },
    crossOriginPolicy: false,
  });
  window.histoscopeViewer = viewer;  // for tests and the browser console
  const layers = {};                 // name -> {visible, set(bool)}
  const opacityInput = document.getElementById("opacity");
  let opacity = parseFloat(opacityInput.value);

  function addToggle(name, label, checked) {
    const el = document.createElement("label");
    el.innerHTML = `<input type="checkbox" id="toggle-${name}" ${checked ? "checked" : ""}> ${label}`;
    document.getElementById("toggles").appendChild(el);
    el.querySelector("input").addEventListener("change", (e) => layers[name].set(e.target.checked));
  }

  function imageLayer(name, spec, alphaOf) {
    return new Promise((resolve) => {
      viewer.addTiledImage({
        tileSource: { type: "image", url: spec.image, buildPyramid: false },
        x: spec.x / W, y: spec.y / W, width: spec.width / W,
        opacity: alphaOf(), index: undefined,
        success: (e) => {
          const item = e.item;
          layers[name] = {
            visible: true, item,
            set(v) { this.visible = v; item.setOpacity(v ? alphaOf() : 0); },
            refresh() { item.setOpacity(this.visible ? alphaOf() : 0); },
          };
          resolve();
        },
        error: () => resolve(),
      });
    });
  }

  function elementLayer(name, elements) {
    layers[name] = {
      visible: true, elements,
      set(v) { this.visible = v; for (const el of elements) el.classList.toggle("hidden", !v); },
    };
  }

  viewer.addOnceHandler("open", async () => {
    const legend = document.getElementById("legend");
    if (ov.tissue) {
      await imageLayer("tissue", ov.tissue, () => 1.0);
      addToggle("tissue", "Tissue outline", true);
    }
    if (ov.classes) {
      await imageLayer("classes", ov.classes, () => opacity / 0.45);
      addToggle("classes", `Tissue classes <span class="note">(${ov.classes.model || ""})</span>`, true);
      ov.classes.names.forEach((n, i) => {
        const c = ov.classes.colours[i];
        const d = document.createElement("div");
        d.innerHTML = `<span class="swatch" style="background:rgb(${c.join(",")})"></span>${n}`;
        legend.appendChild(d);
      });
    }
    if (ov.detections) {
      const cols = ov.detections.columns, r = ov.detections.radius, els = [];
      for (const row of ov.detections.rows) {
        const rec = Object.fromEntries(cols.map((c, i) => [c, row[i]]));
        const el = document.createElement("div");
        el.className = "mitosis" + (rec.p_atypical >= 0.5 ? " atypical" : "");
        el.title = `mitosis p=${rec.prob}` + (rec.p_atypical !== undefined ? `, atypical p=${rec.p_atypical}` : "");
        viewer.addOverlay({ element: el, location: new OpenSeadragon.Rect((rec.x - r) / W, (rec.y - r) / W, 2 * r / W, 2 * r / W) });
        els.push(el);
      }
      elementLayer("detections", els);
      addToggle("detections", `Mitoses (${ov.detections.rows.length}${ov.detections.total > ov.detections.rows.length ? " of " + ov.detections.total : ""})`, true);
    }
    if (ov.hotspot) {
      const h = ov.hotspot, el = document.createElement("div");
      el.className = "hotspot";
      el.title = `hotspot: ${h.count} mitoses in 2 mm², grade ${h.grade}`;
      viewer.addOverlay({ element: el, location: new OpenSeadragon.Rect((h.x - h.radius) / W, (h.y - h.radius) / W, 2 * h.radius / W, 2 * h.radius / W) });
      elementLayer("hotspot", [el]);
      addToggle("hotspot", `Hotspot (2 mm², count ${h.count})`, true);
    }
    if (ov.embedding) {
      await imageLayer("embedding", ov.embedding, () => opacity);
      addToggle("embedding", "NIC embedding (PCA)", false);
      layers.embedding.set(false);
    }
    if (ov.gradcam) {
      await imageLayer("gradcam", ov.gradcam, () => opacity);
      addToggle("gradcam", "Grad-CAM", false);
      layers.gradcam.set(false);
    }
    if (!ov.classes && !ov.detections) {
      document.getElementById("note").textContent = "A slide without a report: run `histoscope analyze` on it and view the report folder for class and mitosis overlays.";
    }
    document.body.dataset.ready = "1";
  });

  opacityInput.addEventListener("input", () => {
    opacity = parseFloat(opacityInput.value);
    for (const l of Object.values(layers)) if (l.refresh) l.refresh();
  });

  const pos = document.getElementById("position"), zoom = document.getElementById("zoom");
  new OpenSeadragon.MouseTracker({
    element: viewer.element,
    moveHandler: (e) => {
      const item = viewer.world.getItemAt(0);
      if (!item) return;
      const p = item.viewerElementToImageCoordinates(e.position);
      pos.textContent = `x ${Math.round(p.x)}, y ${Math.round(p.y)} px` + (mpp ? ` (${(p.x * mpp / 1000).toFixed(3)}, ${(p.y * mpp / 1000).toFixed(3)} mm)` : "");
    },
  });
  viewer.addHandler("zoom", () => {
    const item = viewer.world.getItemAt(0);
    if (!item) return;
    const z = item.viewportToImageZoom(viewer.viewport.getZoom(true));
    zoom.textContent = `zoom ${z.toFixed(3)} (screen px per slide px)` + (mpp ? ` · ${(mpp / z).toFixed(2)} µm per screen px` : "");
  });
})();
