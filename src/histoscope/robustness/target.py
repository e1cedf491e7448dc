"""Black-box targets of the robustness audit: anything that maps RGB images to class probabilities.

A :class:`Target` scores a batch of ``(B, 3, H, W)`` float images in [0, 1] (a tensor on its
device) and returns ``(B, K)`` class probabilities.  The attack only ever reads these
confidence scores.  :func:`as_target` makes one from

* a histoscope model name (``"mitosis_detector"``) or a training checkpoint path,
* a PyTorch module returning logits (softmax is applied) or probabilities,
* a Python callable taking an ``(N, H, W, 3)`` uint8 array and returning ``(N, K)`` probabilities,
* the URL of a model served over HTTP (``histoscope serve``, or any server speaking the same
  protocol: ``POST <url>/predict`` with an ``.npy`` body of ``(N, H, W, 3)`` uint8 images,
  answering JSON ``{"probabilities": [[...], ...], "classes": [...]}``).

Every target counts the images it scored (:attr:`Target.queries`).
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..utils.convert import tensor_to_image

__all__ = ["Target", "TorchTarget", "CallableTarget", "HTTPTarget", "as_target", "NPY_CONTENT_TYPE"]

#: Content type of the ``.npy`` request body of the HTTP protocol.
NPY_CONTENT_TYPE = "application/x-npy"


def _check_probs(p: np.ndarray, n: int, where: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float32)
    if p.ndim == 1:  # a single score per image: P(positive class)
        p = np.stack([1 - p, p], axis=1)
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(f"{where} returned an array of shape {p.shape} for {n} images; expected ({n}, classes)")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{where} returned non-finite scores")
    return p


class Target:
    """Base class: ``target(images)`` -> ``(B, K)`` probabilities; counts queries.

    Attributes
    ----------
    classes : list of str
    input_size : int or None
        The image side the model expects (None: any).
    device : torch.device
        Where :meth:`__call__` wants its input (perturbed batches are built there).
    queries : int
        Images scored so far.
    """

    classes: list[str]
    input_size: int | None = None
    device: torch.device = torch.device("cpu")
    name: str = "model"

    def __init__(self) -> None:
        self.queries = 0

    def _predict(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, K)`` (float32, on :attr:`device`) of ``(B, 3, H, W)`` images in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        if self.input_size is not None and images.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"{self.name} takes {self.input_size} x {self.input_size} images, got {tuple(images.shape[-2:])}")
        self.queries += int(images.shape[0])
        return self._predict(images)

    def class_index(self, cls: int | str) -> int:
        """Index of a class given by index or name."""
        if isinstance(cls, str):
            if cls not in self.classes:
                raise ValueError(f"{self.name} has no class {cls!r}; its classes are {self.classes}")
            return self.classes.index(cls)
        if not 0 <= int(cls) < len(self.classes):
            raise ValueError(f"class index {cls} out of range for {len(self.classes)} classes")
        return int(cls)


class TorchTarget(Target):
    """A PyTorch module.  ``outputs="logits"`` (default) applies a softmax."""

    def __init__(self, module: torch.nn.Module, *, classes: Sequence[str] | None = None, input_size: int | None = None, outputs: str = "logits", device: str | torch.device | None = None, batch_size: int = 512, name: str | None = None) -> None:
        super().__init__()
        if outputs not in ("logits", "probs"):
            raise ValueError(f"outputs must be 'logits' or 'probs', got {outputs!r}")
        if device is None:
            try:
                device = next(module.parameters()).device
            except StopIteration:
                device = "cpu"
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        cfg = getattr(module, "config", None)
        self.classes = list(classes or (cfg.classes if cfg is not None and cfg.classes else []))
        self.input_size = input_size if input_size is not None else (cfg.input_size if cfg is not None else None)
        self.outputs = outputs
        self.batch_size = int(batch_size)
        self.name = name or getattr(module, "card", {}).get("name") or module.__class__.__name__

    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        outs = []
        for chunk in torch.split(images.to(self.device, torch.float32), self.batch_size):
            out = self.module(chunk)
            if out.ndim == 4 and out.shape[-2:] == (1, 1):  # fully convolutional classifiers
                out = out.flatten(1)
            if out.ndim != 2:
                raise ValueError(f"{self.name} returned {tuple(out.shape)} for {len(chunk)} images; expected (N, classes)")
            outs.append(torch.softmax(out, dim=1) if self.outputs == "logits" else out)
        p = torch.cat(outs).float()
        if not self.classes:
            self.classes = [str(i) for i in range(p.shape[1])]
        return p


class CallableTarget(Target):
    """A Python function ``f(uint8 array (N, H, W, 3)) -> (N, K)`` probabilities (or ``(N,)`` positive-class scores)."""

    def __init__(self, fn: Callable[[np.ndarray], Any], *, classes: Sequence[str] | None = None, input_size: int | None = None, name: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.classes = list(classes or [])
        self.input_size = input_size
        self.name = name or getattr(fn, "__name__", "callable")

    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        p = _check_probs(self.fn(tensor_to_image(images)), images.shape[0], self.name)
        if not self.classes:
            self.classes = [str(i) for i in range(p.shape[1])]
        return torch.from_numpy(p).to(images.device)


class HTTPTarget(Target):
    """A model behind a REST API (the one-pixel paper attacked one): ``POST <url>/predict``.

    ``GET <url>/info`` (optional) gives ``classes`` and ``input_size``, and the server's
    ``max_batch`` and ``max_body_bytes`` (``histoscope serve``), which bound the batches sent.
    """

    def __init__(self, url: str, *, timeout: float = 60.0, batch_size: int = 1024) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.batch_size = int(batch_size)
        self.name = self.url
        self.classes = []
        self.max_body_bytes: int | None = None
        try:
            with urllib.request.urlopen(f"{self.url}/info", timeout=timeout) as r:
                info = json.loads(r.read())
            self.classes = list(info.get("classes") or [])
            self.input_size = info.get("input_size")
            if info.get("max_batch"):
                self.batch_size = min(self.batch_size, int(info["max_batch"]))
            if info.get("max_body_bytes"):
                self.max_body_bytes = int(info["max_body_bytes"])
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise ConnectionError(f"{self.url}/info answered HTTP {exc.code}: {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"cannot reach the model server at {self.url}: {getattr(exc, 'reason', exc)}") from None

    def _post(self, batch: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        np.save(buf, batch, allow_pickle=False)
        req = urllib.request.Request(f"{self.url}/predict", data=buf.getvalue(), headers={"Content-Type": NPY_CONTENT_TYPE}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise ConnectionError(f"{self.url}/predict answered HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"cannot reach the model server at {self.url}: {getattr(exc, 'reason', exc)}") from None
        if "probabilities" not in answer:
            raise ValueError(f"{self.url}/predict answered without 'probabilities': {str(answer)[:200]}")
        if not self.classes and answer.get("classes"):
            self.classes = list(answer["classes"])
        return _check_probs(np.asarray(answer["probabilities"]), batch.shape[0], f"{self.url}/predict")

    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        arr = tensor_to_image(images)
        step = self.batch_size
        if self.max_body_bytes is not None:  # leave room for the .npy header
            step = max(1, min(step, (self.max_body_bytes - 1024) // max(1, arr[:1].nbytes)))
        p = np.concatenate([self._post(arr[i : i + step]) for i in range(0, len(arr), step)])
        if not self.classes:
            self.classes = [str(i) for i in range(p.shape[1])]
        return torch.from_numpy(p).to(images.device)


def as_target(model: Any = None, *, device: str = "cpu", classes: Sequence[str] | None = None, input_size: int | None = None) -> Target:
    """A :class:`Target` from a model name, checkpoint path, URL, module or callable (None: the bundled mitosis detector)."""
    if isinstance(model, Target):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        spec = "mitosis_detector" if model is None else str(model)
        if spec.startswith(("http://", "https://")):
            return HTTPTarget(spec)
        from ..models.pretrained import resolve_model

        module = resolve_model(spec, device=device)
        return TorchTarget(module, classes=classes, input_size=input_size, device=device, name=spec)
    if isinstance(model, torch.nn.Module):
        return TorchTarget(model, classes=classes, input_size=input_size, device=device)
    if callable(model):
        return CallableTarget(model, classes=classes, input_size=input_size)
    raise TypeError(f"cannot make an audit target from {type(model).__name__}: give a model name, checkpoint path, URL, torch module or callable")
