"""The one place where numpy images and torch tensors are converted into each other.

numpy side: HxWx3 (or NxHxWx3) ``uint8`` RGB. torch side: (3, H, W) or (B, 3, H, W)
``float32`` in [0, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["image_to_tensor", "tensor_to_image"]


def image_to_tensor(image: np.ndarray) -> "torch.Tensor":
    """HxWx3 (or NxHxWx3) uint8 -> (3, H, W) (or (N, 3, H, W)) float32 in [0, 1]."""
    import torch

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB of shape (H, W, 3) or (N, H, W, 3), got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr)
    t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    t = t.permute(2, 0, 1) if arr.ndim == 3 else t.permute(0, 3, 1, 2)
    return t.contiguous().float().div_(255.0)


def tensor_to_image(tensor: "torch.Tensor") -> np.ndarray:
    """(3, H, W) or (B, 3, H, W) float in [0, 1] -> HxWx3 (or BxHxWx3) uint8 (rounded, clipped)."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim not in (3, 4) or tensor.shape[-3] != 3:
        raise ValueError(f"expected shape (3, H, W) or (B, 3, H, W), got {tuple(tensor.shape)}")
    t = tensor.detach().to("cpu", torch.float32).clamp(0, 1).mul(255).round().to(torch.uint8)
    t = t.permute(1, 2, 0) if t.ndim == 3 else t.permute(0, 2, 3, 1)
    return t.contiguous().numpy()
