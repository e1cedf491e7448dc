"""Bundled, trained models: loaded by name from the package, never downloaded.

A bundle is two files side by side: ``<name>.pt`` (a float16 state dict, small) and
``<name>.json`` (the model config, the weights' SHA-256 and the model card: data, command,
seed, metrics on the test split). ``MODEL_CARDS.md`` in the same folder is the readable
version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .registry import ModelConfig, create_model, file_sha256

__all__ = ["BUNDLED", "list_pretrained", "load_pretrained", "resolve_model", "load_bundle", "export_bundle", "pretrained_card", "render_card"]

BUNDLED = Path(__file__).resolve().parent / "weights"


def list_pretrained() -> list[str]:
    """Names of the models bundled with histoscope."""
    return sorted(p.stem for p in BUNDLED.glob("*.json"))


def pretrained_card(name: str) -> dict[str, Any]:
    """The JSON model card of a bundled model."""
    path = BUNDLED / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no bundled model {name!r}; bundled: {list_pretrained()}")
    return json.loads(path.read_text())


def load_pretrained(name: str, *, device: str = "cpu") -> torch.nn.Module:
    """A bundled trained model by name (e.g. ``"colorectal_grader"``), in eval mode.

    Raises
    ------
    ValueError
        Unknown name (lists the bundled ones) or weights whose checksum does not match the card.
    """
    pretrained_card(name)  # names the bundled ones when ``name`` is not
    return load_bundle(BUNDLED / f"{name}.pt", device=device)


def load_bundle(path: str | os.PathLike[str], *, device: str = "cpu") -> torch.nn.Module:
    """A model from a bundle on disk (``<name>.pt`` + ``<name>.json``, as :func:`export_bundle`
    writes), in eval mode, after checking the weights against the card's SHA-256.

    Raises
    ------
    ValueError
        A missing or unreadable card, or weights whose checksum does not match it.
    """
    weights = Path(path).with_suffix(".pt")
    card_path = weights.with_suffix(".json")
    try:
        card = json.loads(card_path.read_text())
        cfg = ModelConfig.from_dict(card["config"])
        expected = card["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{card_path}: not a readable model card for {weights.name} ({type(exc).__name__}: {exc})") from None
    digest = file_sha256(weights)
    if digest != expected:
        raise ValueError(f"{weights}: checksum {digest[:12]}... does not match its model card ({str(expected)[:12]}...)")
    model = create_model(cfg.arch, **cfg.build_kwargs())
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.card = card
    return model.to(device).eval()


def resolve_model(model: str | os.PathLike[str] | torch.nn.Module, *, device: str = "cpu", trust: bool | None = None) -> torch.nn.Module:
    """A model in eval mode from a bundled name, an exported bundle (``X.pt`` with ``X.json``
    beside it), a training checkpoint path (``best.pt``) or a module.

    Checkpoints are read without running code in them; ``trust`` (or ``--trust-checkpoint``)
    allows a pickled one (see :func:`histoscope.train.engine.read_checkpoint`).
    """
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval()
    name = str(model)
    if name in list_pretrained():
        return load_pretrained(name, device=device)
    if os.path.isfile(name):
        if name.endswith(".pt") and Path(name).with_suffix(".json").is_file():  # an exported bundle
            return load_bundle(name, device=device)
        from ..train.engine import load_checkpoint

        return load_checkpoint(name, device=device, trust=trust)
    raise ValueError(f"no model {name!r}: not a bundled model ({', '.join(list_pretrained())}) nor a checkpoint file")


def export_bundle(model: torch.nn.Module, path: str | os.PathLike[str], *, card: dict[str, Any]) -> Path:
    """Write ``model`` as a bundle (``path`` = ``<dir>/<name>.pt``; the ``.json`` card beside it)."""
    p = Path(path).with_suffix(".pt")
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = p.with_name(f".{p.name}.partial")
    torch.save(state, tmp)
    os.replace(tmp, p)
    payload = {"name": p.stem, "config": model.config.to_dict(), "sha256": file_sha256(p), "bytes": p.stat().st_size, **card}
    p.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str))
    p.with_suffix(".md").write_text(render_card(payload))
    return p


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def render_card(card: dict[str, Any]) -> str:
    """The readable model card (Markdown) of a bundle's JSON card."""
    cfg = card["config"]
    lines = [
        f"# Model card: `{card['name']}`",
        "",
        f"- Architecture: `{cfg['arch']}` {cfg.get('arch_kwargs') or ''}; input {cfg['input_size']} px at {cfg['mpp']} um/px; "
        f"inputs in [0, 1], normalised inside (mean {cfg['mean']}, std {cfg['std']}).",
        f"- Classes (output order): {', '.join(cfg['classes'])}.",
        f"- Weights: `{card['name']}.pt`, float16, {card['bytes']:,} bytes, SHA-256 `{card['sha256']}` (checked on load).",
        f"- Load: `histoscope.models.pretrained.load_pretrained({card['name']!r})`; {card.get('used_by', 'used by `histoscope analyze` for the tissue-class map')}.",
        "",
    ]
    if card.get("body"):  # a card written by its training command (e.g. the mitosis detector)
        return "\n".join(lines + [card["body"].rstrip(), ""])
    lines += [
        "## Data",
        f"- {card.get('data')} (preset `{card.get('preset')}`); licence and source: see ../shared/data/MANIFEST.md "
        "(GlaS: research use only, not commercial; cite Sirinukunwattana et al. 2017).",
        f"- Patches: {card.get('patch')}.",
        f"- Split by patient: {card.get('split')}; test patients {card.get('test_metrics', {}).get('test_patients')}.",
        "",
        "## Training",
        f"- Command: `{card.get('command')}`",
        f"- Seed {card.get('seed')}; {card.get('train')}.",
        "",
        "## Metrics on the held-out test patients",
    ]
    tm = card.get("test_metrics") or {}
    if tm:
        patch, image = tm.get("patch", {}), tm.get("image_mean", {})
        lines += [
            f"- Test images: {tm.get('test_images')}.",
            "",
            "| level | accuracy | balanced accuracy | macro AUROC | quadratic kappa |",
            "|---|---|---|---|---|",
            f"| patch | {_fmt(patch.get('accuracy'))} | {_fmt(patch.get('balanced_accuracy'))} | {_fmt(patch.get('auroc_macro'))} | {_fmt(patch.get('kappa_quadratic'))} |",
            f"| image (mean probability) | {_fmt(image.get('accuracy'))} | {_fmt(image.get('balanced_accuracy'))} | {_fmt(image.get('auroc_macro'))} | {_fmt(image.get('kappa_quadratic'))} |",
            f"| image (majority vote) | {_fmt(tm.get('image_vote_accuracy'))} | | | |",
        ]
        if "binary_mean" in tm:
            b = tm["binary_mean"]
            lines.append(f"| benign vs malignant (image) | {_fmt(b.get('accuracy'))} | sensitivity {_fmt(b.get('sensitivity'))} | specificity {_fmt(b.get('specificity'))} | |")
    else:
        lines.append("- No held-out test split was evaluated.")
    lines += [
        "",
        "## Limits",
        "- Trained on a few hundred patches from a handful of GlaS patients (CPU, minutes): grade is strongly tied to",
        "  patient in this data, so expect modest accuracy on new patients and labs. For research use, not diagnosis.",
        "",
    ]
    return "\n".join(lines)
