"""Models (layer 4 of the data flow): a registry of named networks with their preprocessing.

Lower layers (slide, tiles, stain) never import this package.
"""

from .registry import ModelConfig, create_model, file_sha256, list_models, load_weights, register_model

__all__ = ["ModelConfig", "create_model", "list_models", "register_model", "load_weights", "file_sha256"]
