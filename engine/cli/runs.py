"""What a training run folder holds besides the Trainer's files, shared by `stretto
train` and the demo: the run's data settings (`run.json`; the split by file is
`split.json`, see `stretto.tokenizer.FileSplit`), and `--set key=value` overrides of the
two configs.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stretto.engine import ModelConfig, TrainConfig
from stretto.tokenizer import FileSplit

RUN = "run.json"
# Fields that come from elsewhere: the vocabulary, or the run's own options.
FIXED = {"vocab_size", "pad_id", "vocab_signature", "mode", "preset"}


# -- --set key=value ------------------------------------------------------------------------
def settable_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every field `--set` accepts: name -> ("model" | "train", dataclass field)."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for owner, cls in (("model", ModelConfig), ("train", TrainConfig)):
        for f in dataclasses.fields(cls):
            if f.name not in FIXED:
                out[f.name] = (owner, f)
    return out


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _convert(name: str, text: str, kind: Any) -> Any:
    """`text` as a value of type `kind` (int, float, bool, str, tuples, X | None)."""
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(name, text, inner)
    if typing.get_origin(kind) is tuple:
        parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            return tuple(_convert(name, p.strip(), args[0]) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"--set {name}={text}: {name} takes {len(args)} values")
        return tuple(_convert(name, p.strip(), a) for a, p in zip(args, parts, strict=True))
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {name}={text}: {name} takes true or false")
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ValueError(
            f"--set {name}={text}: {name} takes {getattr(kind, '__name__', kind)}"
        ) from None


def parse_settings(items: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`key=value` strings -> (ModelConfig overrides, TrainConfig overrides), each value
    converted to its field's type; a one-line ValueError names a bad key or value."""
    fields = settable_fields()
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, text = (part.strip() for part in item.split("=", 1))
        if key not in fields:
            raise ValueError(
                f"--set {key}: no such setting; ModelConfig and TrainConfig fields are "
                f"{', '.join(sorted(fields))} (stretto train --help lists them)"
            )
        owner, f = fields[key]
        cls = ModelConfig if owner == "model" else TrainConfig
        (model if owner == "model" else train)[key] = _convert(key, text, _field_type(cls, f))
    return model, train


def settings_help() -> str:
    """The `--set` fields with their defaults, for `stretto train --help`."""
    lines = []
    for owner, cls in (("ModelConfig", ModelConfig), ("TrainConfig", TrainConfig)):
        parts = []
        for f in dataclasses.fields(cls):
            if f.name in FIXED:
                continue
            default = f.default if f.default is not dataclasses.MISSING else "-"
            parts.append(f"{f.name}={default}")
        lines.append(f"{owner} (--set): " + ", ".join(parts))
    return "\n".join(lines)


def write_run(run_dir: Path, split: FileSplit, seq_len: int) -> None:
    """`run.json`: the data a run trains on (with its `split.json` beside it)."""
    split.write(run_dir / "split.json")
    payload = {
        "corpus": str(split.corpus),
        "seq_len": seq_len,
        "val_fraction": split.val_fraction,
        "seed": split.seed,
    }
    (run_dir / RUN).write_text(json.dumps(payload, indent=1) + "\n")


def read_run(run_dir: Path) -> tuple[FileSplit, int]:
    """The split and window length a run folder trained on."""
    run = json.loads((run_dir / RUN).read_text())
    return FileSplit.read(run_dir / "split.json"), int(run["seq_len"])
