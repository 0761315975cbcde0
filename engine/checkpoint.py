"""Checkpoint files: config, vocabulary signature, weights, optimizer states and step in
one file, written atomically (a temporary file in the same folder, then `os.replace`).
`stretto.engine.load_checkpoint` (model.py) rebuilds the model from one.

Loading compares the stored vocabulary signature with the running `Vocabulary` and,
when asked, the stored config with an expected one, and names the field that differs
instead of failing later inside an embedding.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stretto.tokenizer.vocabulary import Vocabulary

from .config import ModelConfig

FORMAT = "stretto-checkpoint-v1"


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns: the rebuilt model plus the training state."""

    model: Any  # a MusicModel (model.py builds it; this module knows only the file)
    step: int
    optimizers: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def save_checkpoint(
    path: str | Path,
    model,
    *,
    optimizers: dict[str, Any] | None = None,
    step: int = 0,
    extra: dict | None = None,
) -> Path:
    """Write `model` (a MusicModel) and its training state to `path` atomically.

    `optimizers` maps a name ("generator", "discriminator", ...) to an optimizer or its
    `state_dict()`. Returns the path written.
    """
    path = Path(path)
    states = {
        name: opt.state_dict() if hasattr(opt, "state_dict") else opt
        for name, opt in (optimizers or {}).items()
    }
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "vocab_signature": model.config.vocab_signature,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizers": states,
        "step": int(step),
        "extra": dict(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _remove_stale_temps(path)
    return path


STALE_TEMP_SECONDS = 15 * 60


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of earlier saves to `path` that a killed process left behind.

    Only files untouched for STALE_TEMP_SECONDS go: a save in progress elsewhere keeps
    writing to (and so touching) its own temp file.
    """
    cutoff = time.time() - STALE_TEMP_SECONDS
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:  # gone already, or not ours to delete: leave it
            pass


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The raw payload of a checkpoint file, with its format checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt file
        raise ValueError(f"{path} is not a readable Stretto checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Stretto checkpoint (format {FORMAT!r} expected)")
    return payload


def check_compatible(
    payload: dict, *, vocab: Vocabulary | None = None, config: ModelConfig | None = None
) -> ModelConfig:
    """The checkpoint's config, after checking its vocabulary and (if given) its config."""
    vocab = vocab or Vocabulary()
    stored = payload["vocab_signature"]
    if stored != vocab.signature:
        raise ValueError(
            f"checkpoint vocabulary differs: vocab_signature {stored!r} != {vocab.signature!r} "
            "(it was trained on another vocabulary)"
        )
    saved = ModelConfig.from_dict(payload["config"])
    if saved.vocab_size != vocab.size:
        raise ValueError(f"checkpoint vocab_size {saved.vocab_size} != vocabulary {vocab.size}")
    if config is not None:
        diffs = config.differences(saved)
        if diffs:
            raise ValueError(
                "checkpoint config differs from the expected config: "
                + "; ".join(f"{d} (expected != checkpoint)" for d in diffs)
            )
    return saved
