"""The whole audit: the checks of `checks.py` strung together over a real corpus."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stretto.engine import MODES, ModelConfig, MusicModel, load_checkpoint
from stretto.tokenizer import TokenDataset, Vocabulary, build_corpus
from stretto.tokenizer.corpus import MANIFEST

from .checks import (
    DEFAULT_LENGTHS,
    Finding,
    _error,
    _row,
    _short,
    check_causality,
    check_corpus_ids,
    check_generation,
    check_kernels,
    check_learning,
    check_resources,
    check_train_step,
    check_vocabulary,
    check_windows,
    pick_batch,
)


# -- the whole audit -------------------------------------------------------------------
@dataclass(frozen=True)
class AuditConfig:
    corpus: str | os.PathLike
    checkpoints: tuple[str, ...] = ()
    modes: tuple[str, ...] = MODES
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    preset: str = "tiny"
    batch_size: int = 2
    sample: int = 4
    learning_steps: int = 6
    generate_tokens: int = 256
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes {list(self.modes)}: choose from {', '.join(MODES)}")
        if not self.lengths or any(n < 2 for n in self.lengths):
            raise ValueError(f"lengths {list(self.lengths)} must each be >= 2")
        if self.batch_size < 1 or self.sample < 1:
            raise ValueError("batch_size and sample must be >= 1")


def prepare_corpus(corpus: str | os.PathLike, work_dir: Path) -> Path:
    """A `build_corpus` folder as it is, or a MIDI folder tokenized into `work_dir`."""
    corpus = Path(corpus)
    if not corpus.exists():
        raise FileNotFoundError(f"corpus {corpus} does not exist")
    if (corpus / MANIFEST).is_file():
        return corpus
    report = build_corpus(corpus, work_dir / "corpus", workers=1, progress=False)
    if report.files == 0:
        raise ValueError(f"{corpus} holds no MIDI file that tokenizes")
    return Path(report.out_dir)


def build_models(
    cfg: AuditConfig, vocab: Vocabulary, device: torch.device
) -> tuple[dict[str, MusicModel], list[Finding]]:
    """A model per mode: from a given checkpoint of that mode, else a fresh preset model."""
    models: dict[str, MusicModel] = {}
    rows = []
    for path in cfg.checkpoints:
        try:
            model = load_checkpoint(path, vocab=vocab).model
        except (ValueError, OSError) as exc:
            rows.append(_row("checkpoint", False, f"{_short(path)}: {_error(exc)}"))
            continue
        if model.config.mode in cfg.modes:
            models[model.config.mode] = model.to(device)
            rows.append(_row("checkpoint", True, f"loaded {_short(path)}", model.config.mode))
    for mode in cfg.modes:
        if mode not in models:
            torch.manual_seed(cfg.seed)
            overrides = {"max_seq_len": max(cfg.lengths)} if max(cfg.lengths) > 2048 else {}
            config = ModelConfig.from_vocab(vocab, mode=mode, preset=cfg.preset, **overrides)
            models[mode] = MusicModel(config).to(device)
    return {m: models[m] for m in cfg.modes}, rows


def run_audit(
    cfg: AuditConfig,
    *,
    models: dict[str, MusicModel] | None = None,
    progress: Callable[[Finding], None] | None = None,
) -> list[Finding]:
    """Every check, in order; `models` (mode -> model) replaces the built ones (tests use
    it to plant faults). `progress` is called with each row as it is found."""
    vocab = Vocabulary()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows: list[Finding] = []

    def add(found: Finding | list[Finding]) -> None:
        for row in found if isinstance(found, list) else [found]:
            rows.append(row)
            if progress is not None:
                progress(row)

    with tempfile.TemporaryDirectory(prefix="stretto-audit-") as tmp:
        try:
            corpus = prepare_corpus(cfg.corpus, Path(tmp))
        except (ValueError, OSError) as exc:
            add(_row("data", False, f"corpus {cfg.corpus}: {_error(exc)}"))
            return rows
        if models is None:
            models, loaded = build_models(cfg, vocab, device)
            add(loaded)
        add(check_vocabulary(vocab, corpus_dir=corpus, models=models, checkpoints=cfg.checkpoints))
        ids_row = check_corpus_ids(corpus, vocab)
        add(ids_row)
        batches: dict[int, dict] = {}
        for n in cfg.lengths:
            if not ids_row.ok:
                # Windows are cut by compiled code that trusts ids to be in range.
                add(_row("data windows", False, "not read: the corpus ids are invalid", length=n))
                continue
            try:
                dataset = TokenDataset(corpus, n)
            except (ValueError, OSError) as exc:
                add(_row("data windows", False, _error(exc), length=n))
                continue
            add(check_windows(dataset, vocab, sample=cfg.sample))
            try:
                batch = pick_batch(dataset, cfg.batch_size)
                lo, hi = int(batch["input_ids"].min()), int(batch["input_ids"].max())
                if lo < 0 or hi >= vocab.size:
                    raise ValueError(f"batch holds id {hi if hi >= vocab.size else lo}")
            except (ValueError, IndexError, RuntimeError) as exc:
                add(_row("data batch", False, _error(exc), length=n))
                continue
            batches[n] = {k: v.to(device) for k, v in batch.items()}
        add(check_kernels(device))
        short = min(batches) if batches else None
        for model in models.values():
            model.to(device)
            for batch in batches.values():
                step = check_train_step(model, batch)
                add(step)
                if step.ok:
                    add(check_resources(model, batch))
            if short is not None:
                add(check_causality(model, batches[short]["input_ids"]))
                add(check_learning(model, batches[short], steps=cfg.learning_steps))
            add(check_generation(model, max_new_tokens=cfg.generate_tokens))
    return rows


def format_table(rows: Sequence[Finding]) -> str:
    """The rows as an aligned text table, then `N issues`."""
    head = ("check", "mode", "length", "result", "detail")
    cells = [head] + [(r.check, r.mode, r.length, r.result, r.detail) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(4)) + "  " + c[4] for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    n = sum(not r.ok for r in rows)
    lines.append(f"{n} issue" + ("" if n == 1 else "s"))
    return "\n".join(lines)


def issues(rows: Sequence[Finding]) -> int:
    return sum(not r.ok for r in rows)


def write_json(rows: Sequence[Finding], path: str | os.PathLike, cfg: AuditConfig) -> None:
    payload = {
        "issues": issues(rows),
        "config": {
            k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in asdict(cfg).items()
        },
        "rows": [asdict(r) for r in rows],
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1, default=str) + "\n")
