"""The whole audit: the checks of `checks.py` and `quality.py` over a real corpus."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stretto.engine import MODES, ModelConfig, MusicModel, load_checkpoint
from stretto.engine.evaluation import held_out_batches, measure
from stretto.tokenizer import FileSplit, TokenDataset, Vocabulary, build_corpus
from stretto.tokenizer.corpus import MANIFEST

from .checks import (
    DEFAULT_LENGTHS,
    LEARNING_STEPS,
    Finding,
    _error,
    _row,
    _short,
    audit_vocabulary,
    check_causality,
    check_corpus_ids,
    check_decode_cache,
    check_kernels,
    check_learning,
    check_resources,
    check_train_step,
    check_windows,
    pick_batch,
)
from .quality import (
    DISC_ROUNDS,
    POLYPHONY_PIECES,
    POLYPHONY_TOKENS,
    POLYPHONY_WINDOWS,
    check_discriminator,
    check_held_out,
    check_latent,
    check_polyphony,
    generated_pieces,
    held_out_pieces,
)


# -- the whole audit -------------------------------------------------------------------
@dataclass(frozen=True)
class AuditConfig:
    """What to audit. `quality`: run the trained-model checks (`quality.py`) on every
    model (True), on none (False), or on those loaded from checkpoints (None)."""

    corpus: str | os.PathLike
    checkpoints: tuple[str, ...] = ()
    modes: tuple[str, ...] = MODES
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    preset: str = "tiny"
    batch_size: int = 2
    sample: int = 4
    learning_steps: int = LEARNING_STEPS
    val_windows: int = 32
    quality: bool | None = None
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes {list(self.modes)}: choose from {', '.join(MODES)}")
        if not self.lengths or any(n < 2 for n in self.lengths):
            raise ValueError(f"lengths {list(self.lengths)} must each be >= 2")
        if self.batch_size < 1 or self.sample < 1 or self.val_windows < 2:
            raise ValueError("batch_size and sample must be >= 1, val_windows >= 2")


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


@dataclass
class Audited:
    """One model to audit: where it came from and what its run trained on."""

    model: MusicModel
    trained: bool
    run_dir: Path | None = None


def build_models(
    cfg: AuditConfig, vocab: Vocabulary, device: torch.device
) -> tuple[dict[str, Audited], list[Finding]]:
    """A model per mode: from a given checkpoint of that mode, else a fresh preset model."""
    models: dict[str, Audited] = {}
    rows = []
    for path in cfg.checkpoints:
        try:
            model = load_checkpoint(path, vocab=vocab).model
        except (ValueError, OSError) as exc:
            rows.append(_row("checkpoint", False, f"{_short(path)}: {_error(exc)}"))
            continue
        if model.config.mode in cfg.modes:
            models[model.config.mode] = Audited(model.to(device), True, Path(path).parent)
            rows.append(_row("checkpoint", True, f"loaded {_short(path)}", model.config.mode))
    for mode in cfg.modes:
        if mode not in models:
            torch.manual_seed(cfg.seed)
            overrides = {"max_seq_len": max(cfg.lengths)} if max(cfg.lengths) > 2048 else {}
            config = ModelConfig.from_vocab(vocab, mode=mode, preset=cfg.preset, **overrides)
            models[mode] = Audited(MusicModel(config).to(device), False)
    return {m: models[m] for m in cfg.modes}, rows


def held_out(corpus: Path, run_dir: Path | None, n: int) -> tuple[FileSplit, int]:
    """The split and length a model's run used (its split.json and run.json), else the
    default split of `corpus` by file and length `n`."""
    if run_dir is not None and (run_dir / "split.json").is_file():
        try:
            split = FileSplit.read(run_dir / "split.json", corpus)
            run = run_dir / "run.json"
            seq_len = json.loads(run.read_text())["seq_len"] if run.is_file() else n
            return split, int(seq_len)
        except (ValueError, OSError, KeyError):
            pass  # another corpus than the run's: fall back to the default split
    return FileSplit.make(corpus), n


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
            audited, loaded = build_models(cfg, vocab, device)
            add(loaded)
        else:
            audited = {m: Audited(model, bool(cfg.quality)) for m, model in models.items()}
        add(audit_vocabulary(vocab, corpus_dir=corpus, checkpoints=cfg.checkpoints))
        ids_row = check_corpus_ids(corpus, vocab)
        add(ids_row)
        batches = _length_batches(cfg, corpus, vocab, device, ids_row.ok, add)
        add(check_kernels(device))
        for item in audited.values():
            item.model.to(device)
            _audit_model(cfg, item, batches, add)
            run_quality = item.trained if cfg.quality is None else cfg.quality
            if run_quality and ids_row.ok:
                _audit_quality(cfg, corpus, item, min(cfg.lengths), add)
    return rows


def _length_batches(cfg, corpus, vocab, device, ids_ok, add) -> dict[int, dict]:
    """A batch of real windows per length (and the windows' own checks)."""
    batches: dict[int, dict] = {}
    for n in cfg.lengths:
        if not ids_ok:
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
        except (ValueError, IndexError, RuntimeError) as exc:
            add(_row("data batch", False, _error(exc), length=n))
            continue
        batches[n] = {k: v.to(device) for k, v in batch.items()}
    return batches


def _audit_model(cfg: AuditConfig, item: Audited, batches: dict[int, dict], add) -> None:
    """The structural checks of one model."""
    model = item.model
    for batch in batches.values():
        add(check_train_step(model, batch))
    if not batches:
        return
    add(check_resources(model, batches))
    short = batches[min(batches)]
    add(check_causality(model, short["input_ids"]))
    add(check_learning(model, short, steps=cfg.learning_steps))
    c = model.config
    span = min(short["input_ids"].shape[1], 3 * c.window + 2 * (c.block or 0) + 8)
    add(check_decode_cache(model, short["input_ids"][:, :span]))


def _audit_quality(cfg: AuditConfig, corpus: Path, item: Audited, n: int, add) -> None:
    """The trained-model checks of one model, on the held-out files of its run."""
    model = item.model
    split, seq_len = held_out(corpus, item.run_dir, n)
    if not split.validation:
        add(
            _row(
                "held-out loss",
                False,
                "no held-out file: the corpus has one file",
                model.config.mode,
            )
        )
        return
    # windows every quarter window: more (overlapping) held-out windows, finer estimates
    train, val = split.datasets(seq_len, val_stride=max(1, seq_len // 4))
    batches, files = held_out_batches(val, windows=cfg.val_windows, batch_size=4)
    step = max(model.config.adv_start_step, model.config.gumbel_anneal_steps)
    measured = measure(model, batches, files, step=step, disc_rounds=DISC_ROUNDS)
    counts = torch.as_tensor(train.token_counts())
    add(check_held_out(model, measured, counts, batches, seq_len))
    if model.encoder is not None:
        add(check_latent(model, measured, seq_len))
    if model.discriminator is not None:
        add(check_discriminator(model, measured, seq_len))
    add(_polyphony(cfg, split, model))


def _polyphony(cfg: AuditConfig, split: FileSplit, model: MusicModel) -> Finding:
    """The `polyphony` row: sampled pieces against held-out windows of as many ids."""
    mode = model.config.mode
    length = min(POLYPHONY_TOKENS, model.config.max_seq_len)
    try:
        _, val = split.datasets(length, val_stride=max(1, length // 4))
        real = held_out_pieces(val, POLYPHONY_WINDOWS)
        made = generated_pieces(model, length, POLYPHONY_PIECES, cfg.seed)
    except (ValueError, RuntimeError) as exc:
        return _row("polyphony", False, f"cannot sample or read windows: {_error(exc)}", mode)
    return check_polyphony(made, real, mode, length)


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
