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

__all__ = ["BUNDLED", "list_pretrained", "load_pretrained", "export_bundle", "pretrained_card"]

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
    card = pretrained_card(name)
    weights = BUNDLED / f"{name}.pt"
    digest = file_sha256(weights)
    if digest != card["sha256"]:
        raise ValueError(f"{weights}: checksum {digest[:12]}... does not match its model card ({card['sha256'][:12]}...)")
    cfg = ModelConfig.from_dict(card["config"])
    model = create_model(cfg.arch, num_classes=cfg.num_classes, classes=cfg.classes, input_size=cfg.input_size, mpp=cfg.mpp)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.card = card
    return model.to(device).eval()


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
    return p
