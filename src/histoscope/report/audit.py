"""Figures and report.html of the one-pixel robustness audit (``histoscope audit one-pixel``)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..robustness.analysis import chromatic_rmse, map_parity, periodicity_table, position_heatmap, spatial_table, summary_table
from ..robustness.confidence import ConfidenceMaps
from .html import write_report

__all__ = ["plot_chromatic", "plot_position_heatmaps", "plot_confidence_maps", "write_audit_report", "safe_filename"]

_DIR_LABEL = {"decrease": "lower the score (e.g. mitosis-to-normal)", "increase": "raise the score (e.g. normal-to-mitosis)", "untargeted": "untargeted", "targeted": "targeted"}


def safe_filename(name: str) -> str:
    """``name`` with every character but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _fig(figsize: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _png(fig: Any, path: str | os.PathLike[str] | None, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (rendered once), also written to ``path`` when given."""
    if path is not None:
        from ..utils.figures import save_figure

        return save_figure(fig, path, dpi=dpi).read_bytes()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_chromatic(attacks: pd.DataFrame, path: str | os.PathLike[str] | None = None) -> bytes:
    """Their Fig. 1/2: colour distance of the attack pixel from its neighbours vs the score change."""
    a = attacks[attacks["applicable"].astype(bool)]
    directions = sorted(a["direction"].unique()) or ["decrease"]
    fig = _fig((5.2 * len(directions), 4.2))
    axes = fig.subplots(1, len(directions), squeeze=False)[0]
    for ax, d in zip(axes, directions):
        g = a[a["direction"] == d]
        rmse = chromatic_rmse(g) if len(g) else np.zeros(0)
        ok = g["success"].astype(bool).to_numpy()
        ax.scatter(rmse[~ok], g["score_change"].to_numpy()[~ok], s=14, c="#999999", label=f"failed ({int((~ok).sum())})", alpha=0.8)
        ax.scatter(rmse[ok], g["score_change"].to_numpy()[ok], s=18, c="#d62728", label=f"successful ({int(ok.sum())})")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("RMSE(attack colour, mean of 8 neighbours), [0, 1]")
        ax.set_ylabel(f"change of P({g['target_class'].iloc[0] if len(g) else 'class'})")
        ax.set_title(_DIR_LABEL.get(d, d), fontsize=10)
        ax.legend(fontsize=8, loc="best")
    return _png(fig, path)


def plot_position_heatmaps(attacks: pd.DataFrame, shape: tuple[int, int], path: str | os.PathLike[str] | None = None) -> bytes:
    """Their Fig. 3/4: where the best attack pixels lie (successful and all applicable attacks)."""
    directions = sorted(attacks["direction"].unique()) or ["decrease"]
    fig = _fig((3.6 * 2, 3.3 * len(directions)))
    axes = fig.subplots(len(directions), 2, squeeze=False)
    for row, d in zip(axes, directions):
        g = attacks[attacks["direction"] == d]
        for ax, only, label in ((row[0], True, "successful"), (row[1], False, "all attacks")):
            heat = position_heatmap(g, shape, successful_only=only)
            if heat.sum() == 0:
                ax.text(0.5, 0.5, f"{d}: no {label}", ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
                continue
            im = ax.imshow(heat, cmap="magma", interpolation="nearest", vmin=0)
            fig.colorbar(im, ax=ax, shrink=0.8)
            if heat.sum() < 200:  # few attacks: ring each so that single pixels stay visible
                yy, xx = np.nonzero(heat)
                ax.scatter(xx, yy, s=40, facecolors="none", edgecolors="#35c0ff", linewidths=0.8)
            ax.set_title(f"{d}: {label} (n={int(heat.sum())})", fontsize=9)
            ax.set_xlabel("x")
            ax.set_ylabel("y")
    return _png(fig, path)


def plot_confidence_maps(image: np.ndarray, maps: ConfidenceMaps, *, attack: Mapping[str, Any] | None = None, title: str = "", path: str | os.PathLike[str] | None = None) -> bytes:
    """Their Fig. 5: the image beside its per-pixel min and max score maps (attack pixel marked)."""
    fig = _fig((11, 3.6))
    axes = fig.subplots(1, 3)
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title(f"{title}\nP({maps.class_name}) = {maps.original:.3f}", fontsize=9)
    for ax, m, name in ((axes[1], maps.min, "min"), (axes[2], maps.max, "max")):
        im = ax.imshow(m, cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.85)
        ax.set_title(f"{name} over {maps.n_colours} colours: {np.nanmin(m):.3f} .. {np.nanmax(m):.3f}", fontsize=9)
    if attack is not None:
        for ax in axes:
            ax.plot([attack["x"]], [attack["y"]], marker="o", ms=9, mfc="none", mec="red", mew=1.5)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig, path)


def write_audit_report(
    out: str | os.PathLike[str],
    attacks: pd.DataFrame,
    *,
    shape: tuple[int, int],
    model: str,
    settings: Mapping[str, Any],
    maps: Sequence[tuple[str, np.ndarray, ConfidenceMaps, Mapping[str, Any] | None]] = (),
    timings: Mapping[str, float] | None = None,
    warnings: Sequence[str] = (),
) -> Path:
    """Write ``attacks.csv``, the figures and ``report.html`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    attacks = attacks.assign(rmse_to_neighbours=chromatic_rmse(attacks)) if len(attacks) else attacks
    attacks.to_csv(out / "attacks.csv", index=False)
    summary = summary_table(attacks)
    spatial = spatial_table(attacks)
    period_ok = periodicity_table(attacks)
    period_all = periodicity_table(attacks, successful_only=False)
    summary.to_csv(out / "summary.csv", index=False)
    spatial.to_csv(out / "spatial.csv", index=False)
    period_all.assign(attacks="all").pipe(lambda d: pd.concat([period_ok.assign(attacks="successful"), d])).to_csv(out / "periodicity.csv", index=False)
    plots = [
        ("Chromatic analysis (their Fig. 1-2): colour distance of the attack pixel from its neighbours vs score change", plot_chromatic(attacks, out / "chromatic.png")),
        ("Attack positions (their Fig. 3-4)", plot_position_heatmaps(attacks, shape, out / "positions.png")),
    ]
    gallery = []
    for name, img, m, atk in maps:
        safe = safe_filename(name)
        verdict = "" if atk is None else (" — attack succeeded" if atk.get("success") else " — attack failed")
        gallery.append((f"{name}{verdict}; red circle: the DE attack's best pixel", plot_confidence_maps(img, m, attack=atk, title=name, path=out / f"confidence_{safe}.png")))

    def rows(df: pd.DataFrame) -> tuple[list[list[Any]], list[str]]:
        return df.astype(object).values.tolist(), list(df.columns)

    sections: list[tuple[str, Any, Any]] = [("Settings", dict(settings), None)]
    for heading, df in (
        ("Attacks per direction", summary),
        ("Spatial statistics of successful attacks (their Tables 1-2)", spatial),
        ("Periodicity of successful attacks (coordinate parity x/y)", period_ok),
        ("Periodicity of all best attack pixels", period_all),
    ):
        r, hdr = rows(df)
        sections.append((heading, r or [["no rows"] + [""] * (len(hdr) - 1)], hdr))
    if maps:
        sections.append(
            (
                "Confidence maps",
                [[n, m.class_name, f"{m.original:.4f}", f"{np.nanmin(m.min):.4f}", f"{np.nanmax(m.max):.4f}", f"{map_parity(m.min, m.max)['even/even to others']:.2f}", m.n_colours, m.evaluations, f"{m.evaluations_per_second:.0f}", m.mode] for n, _, m, _ in maps],
                ["image", "class", "original", "min of min map", "max of max map", "score range even/even vs other pixels (checkerboard > 1)", "colours", "evaluations", "evaluations/s", "mode"],
            )
        )
    if timings:
        sections.append(("Timings (s)", {k: round(v, 2) for k, v in timings.items()}, None))
    n_ok = int(attacks["success"].astype(bool).sum()) if len(attacks) else 0
    return write_report(
        out / "report.html",
        title=f"One-pixel robustness audit of {model}",
        subtitle=f"{len(attacks)} images attacked, {n_ok} successful one-pixel attacks (Alatalo et al.; Su et al.'s differential evolution)",
        warnings=warnings,
        plots=plots,
        sections=sections,
        galleries=[("Confidence maps beside the image (their Fig. 5)", gallery)] if gallery else [],
    )
