"""Small shared helpers (seeding, numpy/torch conversion)."""

from .seed import seed_everything

__all__ = ["seed_everything"]
