"""Checkpoint files: config, vocabulary signature, weights, optimizer states and step in
one file, written atomically (a temporary file in the same folder, then `os.replace`).
`stretto.engine.load_checkpoint` (model.py) rebuilds the model from one.

A pretrained folder (`save_pretrained` / `read_pretrained`) is the pair the Hugging Face
ecosystem ships weights in: `model.safetensors` (the weights alone; tied embedding and
head weights stored once, under `embed.weight`) and `config.json` (the `ModelConfig`
JSON, vocabulary signature included).

Loading either compares the stored vocabulary signature with the running `Vocabulary`
and, when asked, the stored config with an expected one, and names the field that
differs instead of failing later inside an embedding.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import safetensors.torch
import torch
from torch import nn

from stretto.tokenizer.vocabulary import Vocabulary

from .config import ModelConfig

FORMAT = "stretto-checkpoint-v1"
PRETRAINED_FORMAT = "stretto-pretrained-v1"  # in model.safetensors' metadata
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns: the rebuilt model plus the training state."""

    model: Any  # a MusicModel (model.py builds it; this module knows only the file)
    step: int
    optimizers: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
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
    _write_atomically(path, lambda f: torch.save(payload, f))
    _remove_stale_temps(path)
    return path


def _write_atomically(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """`write(f)` into a temporary file beside `path`, fsync it, then `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
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


# -- pretrained folders ----------------------------------------------------------------------
def save_pretrained(directory: str | Path, model: nn.Module) -> Path:
    """Write `model` (a MusicModel) as `directory/model.safetensors` + `config.json`.

    Weights only (no optimizer state or step): float tensors as they are, on the CPU.
    With `tie_embeddings` the head's weight is the embedding's and is stored once, under
    `embed.weight`. Each file is written atomically. Returns the folder.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a folder")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        del state["head.weight"]  # the same tensor as embed.weight
    metadata = {"format": "pt", "stretto": PRETRAINED_FORMAT}
    blob = safetensors.torch.save(state, metadata=metadata)
    _write_atomically(directory / WEIGHTS_NAME, lambda f: f.write(blob))
    text = model.config.to_json() + "\n"
    _write_atomically(directory / CONFIG_NAME, lambda f: f.write(text.encode()))
    return directory


def read_pretrained(
    directory: str | Path,
    *,
    vocab: Vocabulary | None = None,
    config: ModelConfig | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and state dict of a `save_pretrained` folder, after the same checks as
    `check_compatible` (vocabulary signature; `config`, when given)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no pretrained model folder at {directory}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} has no {name} (MusicModel.save_pretrained)")
    try:
        data = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{directory / CONFIG_NAME} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or "vocab_signature" not in data:
        raise ValueError(
            f"{directory / CONFIG_NAME} is not a Stretto model config (no vocab_signature)"
        )
    payload = {"vocab_signature": data["vocab_signature"], "config": data}
    saved = check_compatible(payload, vocab=vocab, config=config)
    try:
        state = safetensors.torch.load_file(directory / WEIGHTS_NAME, device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ValueError(
            f"{directory / WEIGHTS_NAME} is not a readable safetensors file: {exc}"
        ) from exc
    if saved.tie_embeddings and "head.weight" not in state and "embed.weight" in state:
        state["head.weight"] = state["embed.weight"]
    return saved, state
