"""Repeatable runs: one call seeds Python, numpy and (when installed) torch."""

from __future__ import annotations

import os
import random

import numpy as np

__all__ = ["seed_everything", "worker_init_fn"]


def seed_everything(seed: int | None = 0) -> int:
    """Seed ``random``, numpy's legacy global generator and torch; return the seed used.

    histoscope's own functions take ``rng``/``seed`` arguments and do not rely on global
    state; this is for user code and third-party libraries that do.
    """
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    seed = int(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # pragma: no cover
        return seed
    torch.manual_seed(seed)
    return seed


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker process distinct, repeatable seeds."""
    import torch

    base = torch.initial_seed() % 2**32
    random.seed(base + worker_id)
    np.random.seed((base + worker_id) % 2**32)
