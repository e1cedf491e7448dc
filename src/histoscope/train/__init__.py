"""Training (layer 5 of the data flow): one engine for every histoscope model."""

from .engine import TrainConfig, TrainResult, fit, load_checkpoint, predict, resolve_device

__all__ = ["TrainConfig", "TrainResult", "fit", "predict", "load_checkpoint", "resolve_device"]
