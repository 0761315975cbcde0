"""`stretto demo`: the main job that `make demo` runs.

On the default corpus (Bach chorales from music21's bundled corpus, rendered to MIDI
and cached under data/demo-corpus/) or on `$STRETTO_CORPUS`: tokenize, train every
mode for a fixed number of steps, generate a piece per mode (MIDI, a piano-roll PNG
and, where a General MIDI SoundFont is installed, a WAV), run the audit on the trained
checkpoints, and print where everything went.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from stretto.engine import (
    ModelConfig,
    MusicModel,
    TrainConfig,
    Trainer,
    load_checkpoint,
)
from stretto.engine.audit import AuditConfig, format_table, issues, run_audit, write_json
from stretto.engine.cli.demo_corpus import (
    DEFAULT_CACHE,
    DEFAULT_PIECES,
    music21_version,
    render_corpus,
)
from stretto.engine.cli.pianoroll import save_piano_roll
from stretto.engine.cli.runs import write_run
from stretto.engine.generate import listening_sampling
from stretto.tokenizer import FileSplit, MidiTokenizer, Vocabulary, validate
from stretto.tokenizer.audio import SOUNDFONT_PACKAGE, find_soundfont, render_wav
from stretto.tokenizer.corpus import MANIFEST, build_corpus

DESCRIPTION = """\
The main job, end to end on a real MIDI corpus:
  1. the corpus: $STRETTO_CORPUS (a MIDI folder or a `stretto tokenize` folder), else
     Bach chorales from music21's bundled corpus rendered to MIDI once and cached in
     data/demo-corpus/ (music21 is the `demo` extra; `make demo` installs it)
  2. tokenize it into OUT/corpus
  3. train each mode (transformer, vae, vae_gan) for a fixed number of steps (tiny
     preset, windows of 512 on a CPU; small preset, windows of 1024 on CUDA), holding
     out a tenth of the files (OUT/<mode>/split.json names them)
  4. generate a piece per mode: OUT/<mode>/generated.mid, generated.png and, where a
     General MIDI SoundFont is installed (apt install fluid-soundfont-gm), generated.wav
  5. run `stretto audit` on the corpus and the three checkpoints: OUT/audit.txt, .json
  6. print a summary of every path written (also OUT/summary.json)
OUT (default runs/demo) must not exist unless --force, which replaces it. Training runs
fixed step counts from fixed seeds, so the models and the audit's verdict do not depend
on how busy the machine is. On two CPU cores the whole job takes about ten minutes. The
exit code is the audit's: 0 only when it found no issue."""

EPILOG = """\
examples:
  stretto demo                                  default corpus, outputs in runs/demo
  stretto demo --force --steps 200              a quicker run over the previous one
  STRETTO_CORPUS=~/midi stretto demo --out runs/my-demo"""

MODES = ("transformer", "vae", "vae_gan")


# Optimizer steps per mode: on two CPU cores each mode trains for one to two minutes.
CPU_STEPS = {"transformer": 600, "vae": 600, "vae_gan": 700}
CUDA_STEPS = {"transformer": 2000, "vae": 2000, "vae_gan": 1500}


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """How big the demo is on this machine."""

    device: str
    preset: str
    seq_len: int
    batch_size: int
    lr: float
    steps: dict[str, int]
    generate_tokens: int
    audit_lengths: tuple[int, ...] = (512, 1024, 2048)

    @classmethod
    def for_device(cls, device: str, steps: int | None = None) -> DemoPlan:
        if device == "cuda":
            per_mode = {m: steps or n for m, n in CUDA_STEPS.items()}
            return cls("cuda", "small", 1024, 16, 3e-4, per_mode, 2047)
        per_mode = {m: steps or n for m, n in CPU_STEPS.items()}
        return cls("cpu", "tiny", 512, 4, 1e-3, per_mode, 1024)


class _Log:
    """Numbered step lines on stdout; progress bars only when stderr is a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()

    def __call__(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f}s] {text}", flush=True)


def _corpus_source(args: argparse.Namespace, log: _Log) -> tuple[Path, str]:
    """(folder, description) of the MIDI or token corpus the demo runs on."""
    env = os.environ.get("STRETTO_CORPUS")
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise ValueError(f"$STRETTO_CORPUS={env} is not a folder")
        return folder, f"$STRETTO_CORPUS ({folder})"

    paths = render_corpus(args.cache, pieces=args.pieces, workers=args.workers, log=log)
    return Path(args.cache), (
        f"{len(paths)} Bach chorales from music21 {music21_version()}'s corpus ({args.cache})"
    )


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists():
        if not force:
            raise ValueError(f"{out} already exists; pass --force to replace it")
        if not out.is_dir():
            raise ValueError(f"{out} exists and is not a folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _tokenize(source: Path, out: Path, workers: int, log: _Log) -> tuple[Path, str]:

    if (source / MANIFEST).is_file():
        log(f"corpus: {source} is already tokenized; using it in place")
        return source, f"{source} (used in place)"
    report = build_corpus(source, out / "corpus", workers=workers, progress=log.tty)
    if report.files == 0:
        raise ValueError(f"no MIDI file in {source} could be tokenized")
    log(f"tokenized: {report.summary().splitlines()[0]}")
    return Path(report.out_dir), report.summary().splitlines()[0]


def _train(mode: str, corpus: Path, plan: DemoPlan, out: Path, log: _Log) -> dict:
    """Train one mode for its fixed number of steps; returns its summary row."""
    split = FileSplit.make(corpus)
    train_set, val_set = split.datasets(plan.seq_len, val_stride=plan.seq_len // 4)
    run_dir = out / mode
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run(run_dir, split, plan.seq_len)
    steps = plan.steps[mode]
    torch.manual_seed(0)
    model = MusicModel(ModelConfig.from_vocab(Vocabulary(), mode=mode, preset=plan.preset))
    config = TrainConfig(
        steps=steps,
        batch_size=plan.batch_size,
        lr=plan.lr,
        disc_lr=plan.lr,
        warmup_steps=10,
        eval_every=max(1, steps // 4),
        eval_batches=8,
        checkpoint_every=0,
        log_every=5,
    )
    log(
        f"training {mode}: {len(train_set)} windows of {plan.seq_len} from "
        f"{len(split.train)} files ({len(split.validation)} held out), batch "
        f"{plan.batch_size}, {steps} steps, {plan.preset} preset"
    )
    start = time.perf_counter()
    trainer = Trainer(model, train_set, val_set, config, out_dir=run_dir, device=plan.device)
    history = trainer.fit()
    train_rows = [r for r in history if r["split"] == "train"]
    val = [r for r in history if r["split"] == "val"][-1] if val_set is not None else {}
    row = {
        "mode": mode,
        "steps": trainer.step,
        "seconds": round(time.perf_counter() - start, 1),
        "first_loss": train_rows[0]["loss"],
        "last_loss": train_rows[-1]["loss"],
        "checkpoint": str(run_dir / "last.pt"),
        "files": sorted(str(p) for p in run_dir.iterdir()),
        "validation": {
            k: val[k]
            for k in ("nll", "latent_gap", "active_units", "kl", "acc_real", "acc_fake")
            if k in val
        },
    }
    log(f"trained {mode} in {row['seconds']:.0f} s: " + _measured(row))
    return row


def _measured(row: dict) -> str:
    v = row["validation"]
    text = f"loss {row['first_loss']:.3f} -> {row['last_loss']:.3f}"
    if "nll" in v:
        text += f"; held-out NLL {v['nll']:.3f} nats/token"
    if "latent_gap" in v:
        text += f", latent gap {v['latent_gap']:.3f}, {v['active_units']} active units"
    if "acc_real" in v:
        text += f", discriminator accuracy {v['acc_real']:.2f} real / {v['acc_fake']:.2f} fake"
    return text


def _soundfont(log: _Log) -> Path | None:
    font = find_soundfont()
    if font is None:
        log(
            "no General MIDI SoundFont found: the pieces get no WAV "
            f"(apt install {SOUNDFONT_PACKAGE} adds one)"
        )
    return font


def _generate(mode: str, plan: DemoPlan, out: Path, log: _Log, font: Path | None) -> dict:

    model = load_checkpoint(out / mode / "last.pt").model.to(plan.device).eval()
    tokens = min(plan.generate_tokens, model.config.max_seq_len - 1)
    sampling = listening_sampling(model.config.mode)
    ids = model.generate(max_new_tokens=tokens, seed=0, **sampling)[0].cpu()
    problems = validate(ids)
    tok = MidiTokenizer()
    midi = tok.decode_to_file(ids.numpy(), out / mode / "generated.mid")
    score = tok.decode(ids.numpy())
    png = save_piano_roll(score, out / mode / "generated.png", title=f"stretto demo: {mode}")
    wav = None
    if font is not None:
        try:
            wav = render_wav(midi, out / mode / "generated.wav", soundfont=font).path
        except (LookupError, ValueError, RuntimeError, OSError) as exc:
            log(f"no WAV for {mode}: {exc}")  # listening is a bonus: the demo goes on
    notes = score.note_num()
    seconds = score.to("second").end()
    log(
        f"generated {mode}: {len(ids)} tokens, {notes} notes, {seconds:.1f} s of music, "
        f"grammar {'valid' if not problems else f'{len(problems)} violations'}"
    )
    return {
        "mode": mode,
        "tokens": len(ids),
        "notes": notes,
        "seconds_of_music": round(seconds, 2),
        "valid": not problems,
        "midi": str(midi),
        "png": str(png),
        "wav": None if wav is None else str(wav),
    }


def _audit(corpus: Path, plan: DemoPlan, out: Path, log: _Log) -> tuple[int, Path, Path]:

    cfg = AuditConfig(
        corpus=corpus,
        checkpoints=tuple(str(out / m / "last.pt") for m in MODES),
        lengths=plan.audit_lengths,
        preset=plan.preset,
        batch_size=1,  # the audit checks; the trained models need no big batches
        device=plan.device,
    )
    log(f"auditing the corpus and the three checkpoints at lengths {plan.audit_lengths}")
    rows = run_audit(cfg)
    table = format_table(rows)
    print(table, flush=True)
    text, js = out / "audit.txt", out / "audit.json"
    text.write_text(table + "\n")
    write_json(rows, js, cfg)
    return issues(rows), text, js


def _env_steps() -> int | None:
    text = os.environ.get("STRETTO_DEMO_STEPS")
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"$STRETTO_DEMO_STEPS={text!r} is not a positive whole number")
    return int(text)


def run(args: argparse.Namespace) -> int:

    log = _Log()
    out = Path(args.out)
    _prepare_out(out, args.force)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    plan = DemoPlan.for_device(device, args.steps or _env_steps())
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = ", ".join(f"{m} {n}" for m, n in plan.steps.items())
    log(
        f"stretto demo on {device}: {plan.preset} preset, windows of {plan.seq_len}, "
        f"steps: {steps}; outputs in {out}"
    )
    source, described = _corpus_source(args, log)
    log(f"corpus: {described}")
    corpus, tokenized = _tokenize(source, out, args.workers, log)
    trained = [_train(mode, corpus, plan, out, log) for mode in MODES]
    font = _soundfont(log)
    generated = [_generate(mode, plan, out, log, font) for mode in MODES]
    n_issues, audit_txt, audit_json = _audit(corpus, plan, out, log)

    summary = {
        "device": device,
        "plan": dataclasses.asdict(plan),
        "corpus": {"source": described, "tokens": str(corpus), "built": tokenized},
        "train": trained,
        "generate": generated,
        "audit": {"issues": n_issues, "table": str(audit_txt), "json": str(audit_json)},
        "seconds": round(time.perf_counter() - log.start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(_summary_text(summary, out), flush=True)
    return 0 if n_issues == 0 else 1


def _summary_text(summary: dict, out: Path) -> str:
    lines = [f"\nstretto demo: done in {summary['seconds']:.0f} s; everything is under {out}/"]
    lines.append(f"  corpus       {summary['corpus']['tokens']}")
    for t in summary["train"]:
        lines.append(
            f"  {t['mode']:<12} {t['checkpoint']}  ({t['steps']} steps; log.jsonl, loss.png "
            f"and split.json beside it)"
        )
    for g in summary["generate"]:
        wav = f"  {g['wav']}" if g["wav"] else ""
        lines.append(f"  {g['mode']:<12} {g['midi']}  {g['png']}{wav}  ({g['notes']} notes)")
    a = summary["audit"]
    lines.append(f"  audit        {a['table']}  {a['json']}  ({a['issues']} issues)")
    lines.append(f"  summary      {out / 'summary.json'}")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:

    p = subparsers.add_parser(
        "demo",
        help="run the main job: tokenize, train every mode, generate, audit",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps per mode (default: "
        + ", ".join(f"{m} {n}" for m, n in CPU_STEPS.items())
        + " on a CPU; $STRETTO_DEMO_STEPS also sets it)",
    )
    p.add_argument(
        "--pieces",
        type=int,
        default=DEFAULT_PIECES,
        help=f"chorales in the default corpus (default {DEFAULT_PIECES})",
    )
    p.add_argument(
        "--cache",
        default=str(DEFAULT_CACHE),
        help=f"where the default corpus is rendered (default {DEFAULT_CACHE})",
    )
    p.add_argument("--workers", type=int, default=2, help="render/tokenize processes")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=run)
