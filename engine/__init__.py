"""Stretto's model, training, checkpoints, generation and command line.

Public names are imported on first use, so `stretto --help` does not pay for torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": ".config",
    "PRESETS": ".config",
    "MusicModel": ".model",
    "Checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "Trainer": ".train",
    "TrainConfig": ".train",
    "Grammar": ".grammar",
    "validate": ".grammar",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
