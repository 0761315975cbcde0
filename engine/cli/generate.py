"""`stretto generate` and `stretto interpolate`: MIDI (and piano rolls) from a checkpoint."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from stretto.engine import load_checkpoint
from stretto.engine.cli.pianoroll import save_piano_roll
from stretto.engine.cli.runs import RUN
from stretto.engine.generate import interpolate, listening_sampling
from stretto.engine.grammar import (
    AT_LIMIT_POLICIES,
    DEFAULT_MAX_NOTE_STEPS,
    DEFAULT_MAX_SILENCE_STEPS,
    NOTE_OFF_POLICIES,
    NOTE_ON_POLICIES,
)
from stretto.tokenizer import MidiTokenizer, Vocabulary
from stretto.tokenizer.vocabulary import STEP_SECONDS

GENERATE_DESCRIPTION = """\
Generate a piece with the model in CHECKPOINT and write it as a MIDI file.

Sampling is constrained by the token grammar (valid MIDI by construction, notes at most
--max-note-steps x 15.625 ms, silences at most --max-silence-steps); --prompt continues
a MIDI file (its first --prompt-tokens tokens, at most the model's max_seq_len). vae
checkpoints draw z from the aggregate posterior of their training windows (--latent).
Sampling not given is the one measured for the checkpoint's mode. Existing files are
never replaced unless --force is given.

example:
  stretto generate runs/vae/last.pt --out song.mid --tokens 1024 --top-p 0.95 \\
      --seed 1 --png song.png
"""

INTERPOLATE_DESCRIPTION = """\
Encode A.mid and B.mid with a vae (or vae_gan) checkpoint, walk the arc (spherical
interpolation) between their latent means in --steps points (A first, B last) and
generate one MIDI file per point into OUT_DIR (interp_00.mid, interp_01.mid, ...; with
--png a piano roll beside each). Each piece is encoded from its first --window tokens,
the window length the encoder was trained on (read from the run's run.json beside the
checkpoint when --window is not given). Every point is sampled with the same noise at
each step (--seed), so the pieces differ only by z. Existing files are never replaced
unless --force is given.

example:
  stretto interpolate runs/vae/last.pt a.mid b.mid --steps 5 --out interp/ --tokens 512
"""


def _device(name: str | None) -> str:

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here")
    return name


def _load(path: str, device: str):

    if not Path(path).is_file():
        raise ValueError(f"no checkpoint at {path}")
    return load_checkpoint(path).model.to(device).eval()


def _free(paths: list[Path], force: bool) -> None:
    for path in paths:
        if path.exists() and not force:
            raise ValueError(f"{path} already exists; pass --force to overwrite it")
        if path.exists() and path.is_dir():
            raise ValueError(f"{path} is a folder, not a file")


def _encode(path: str, max_tokens: int):

    ids = MidiTokenizer().encode(path)
    if len(ids) and int(ids[-1]) == Vocabulary().END:
        ids = ids[:-1]  # a prompt continues the piece: it must not close it
    return torch.as_tensor(ids[:max_tokens], dtype=torch.long)


def _sampling(args, mode: str) -> dict:
    """`generate`'s keywords from the arguments; the sampling not given (temperature,
    top-p, pitch temperature, the grammar's policies, where a vae's z comes from) is the
    one measured for `mode`."""
    if getattr(args, "latent", None) is not None and mode == "transformer":
        raise ValueError("--latent is for vae and vae_gan checkpoints; this one is a transformer")
    names = ("temperature", "top_p", "pitch_temperature", "note_off", "at_limit", "note_on")
    given = {k: getattr(args, k) for k in names}
    given["latent"] = getattr(args, "latent", None)  # `stretto interpolate` has no --latent
    chosen = listening_sampling(mode) | {k: v for k, v in given.items() if v is not None}
    return chosen | {
        "top_k": args.top_k,
        "seed": args.seed,
        "constrained": not args.unconstrained,
        "max_note_steps": args.max_note_steps,
        "max_silence_steps": args.max_silence_steps,
        "compile_step": {"on": True, "off": False}.get(args.compile, args.compile),
    }


def _write(ids, out: Path, png: Path | None, title: str) -> int:
    """Write ids as MIDI (and a piano roll); returns the number of notes."""

    tok = MidiTokenizer()
    array = ids.cpu().numpy()
    score = tok.decode(array)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}.mid")
    try:
        tok.decode_to_file(array, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if png is not None:
        save_piano_roll(score, png, title=title)
    return sum(len(t.notes) for t in score.tracks)


def run_generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    png = Path(args.png) if args.png else None
    _free([out] + ([png] if png else []), args.force)
    model = _load(args.checkpoint, _device(args.device))
    prompt = None
    if args.prompt:
        limit = args.prompt_tokens or model.config.max_seq_len
        prompt = _encode(args.prompt, limit)
    sampling = _sampling(args, model.config.mode)
    ids = model.generate(prompt, max_new_tokens=args.tokens, **sampling)[0]
    notes = _write(ids, out, png, title=f"{out.name}: {len(ids)} tokens")
    print(f"wrote {out} ({len(ids)} tokens, {notes} notes)" + (f" and {png}" if png else ""))
    return 0


def run_interpolate(args: argparse.Namespace) -> int:

    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2, got {args.steps}")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder")
    names = [f"interp_{k:02d}" for k in range(args.steps)]
    mids = [out_dir / f"{n}.mid" for n in names]
    pngs = [out_dir / f"{n}.png" for n in names] if args.png else []
    _free(mids + pngs, args.force)
    model = _load(args.checkpoint, _device(args.device))
    if model.encoder is None:
        raise ValueError(
            f"interpolate needs a vae or vae_gan checkpoint; {args.checkpoint} is "
            f"{model.config.mode!r} mode (it has no latent space)"
        )
    window = args.window or _trained_length(Path(args.checkpoint))
    pieces = [_encode(piece, window) for piece in (args.a, args.b)]
    _, out = interpolate(
        model,
        *pieces,
        steps=args.steps,
        max_new_tokens=args.tokens,
        **_sampling(args, model.config.mode),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, ids in enumerate(out):
        png = pngs[k] if pngs else None
        t = k / (args.steps - 1)
        notes = _write(ids, mids[k], png, title=f"{names[k]}: t {t:.2f}")
        print(f"wrote {mids[k]} (t {t:.2f}, {notes} notes)")
    return 0


def _trained_length(checkpoint: Path) -> int:
    """The window length of the run a checkpoint comes from (its run.json)."""
    run = checkpoint.parent / RUN
    if not run.is_file():
        raise ValueError(
            f"no {RUN} beside {checkpoint}: pass --window N, the window length the "
            "encoder was trained on"
        )
    return int(json.loads(run.read_text())["seq_len"])


def _sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", type=int, default=1024, help="new tokens (default 1024)")
    measured = (
        "default: measured for the checkpoint's mode, stretto.engine.generate.LISTENING_SAMPLING"
    )
    p.add_argument("--temperature", type=float, default=None, help=f"0 = greedy ({measured})")
    p.add_argument("--top-k", type=int, default=None, help="keep the K likeliest tokens")
    p.add_argument(
        "--top-p",
        type=float,
        default=None,
        help=f"nucleus mass in (0, 1], 1 keeps all ({measured})",
    )
    p.add_argument(
        "--pitch-temperature",
        type=float,
        default=None,
        help="temperature of the choice of pitch alone, the rate of notes kept; "
        f"1 = off ({measured})",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument(
        "--max-note-steps",
        type=int,
        default=DEFAULT_MAX_NOTE_STEPS,
        help=f"longest note in 15.625 ms steps (default {DEFAULT_MAX_NOTE_STEPS} = "
        f"{DEFAULT_MAX_NOTE_STEPS * STEP_SECONDS:g} s)",
    )
    p.add_argument(
        "--max-silence-steps",
        type=int,
        default=DEFAULT_MAX_SILENCE_STEPS,
        help="longest silence, at the start or inside the piece, in 15.625 ms steps "
        f"(default {DEFAULT_MAX_SILENCE_STEPS} = {DEFAULT_MAX_SILENCE_STEPS * STEP_SECONDS:g} s)",
    )
    p.add_argument(
        "--note-off",
        choices=NOTE_OFF_POLICIES,
        default=None,
        help="NOTE_OFFs of silent pitches: give their probability to the sounding pitches "
        f"(spread) or drop it (mask) ({measured})",
    )
    p.add_argument(
        "--at-limit",
        choices=AT_LIMIT_POLICIES,
        default=None,
        help=f"a note at --max-note-steps: release it or stop time until it ends ({measured})",
    )
    p.add_argument(
        "--note-on",
        choices=NOTE_ON_POLICIES,
        default=None,
        help="a NOTE_ON of a sounding pitch: strike it again (restrike) or give its "
        f"probability to that pitch's NOTE_OFF (off-first) ({measured})",
    )
    p.add_argument("--unconstrained", action="store_true", help="sample without the grammar mask")
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="compile the token step (the same tokens, faster once compiled): on, off, or "
        "auto (default: from 1,200 tokens on a CPU, where that repays the compile; eager on "
        "devices not measured yet)",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate a MIDI file (and a piano roll) from a checkpoint",
        description=GENERATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt file from `stretto train`")
    p.add_argument("--out", required=True, metavar="SONG.mid", help="MIDI file to write")
    p.add_argument("--prompt", metavar="FILE.mid", help="continue this MIDI file")
    p.add_argument(
        "--prompt-tokens", type=int, default=None, help="use the prompt's first N tokens"
    )
    p.add_argument("--png", metavar="ROLL.png", help="also draw a piano roll")
    p.add_argument(
        "--latent",
        choices=("posterior", "prior"),
        default=None,
        help="vae modes: draw z from the aggregate posterior of the training windows or "
        "from N(0, I) (default: measured for the checkpoint's mode, "
        "stretto.engine.generate.LISTENING_SAMPLING; else posterior)",
    )
    _sampling_arguments(p)
    p.set_defaults(func=run_generate)

    p = subparsers.add_parser(
        "interpolate",
        help="walk a vae's latent line between two MIDI files",
        description=INTERPOLATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a vae or vae_gan checkpoint")
    p.add_argument("a", metavar="A.mid", help="the first end of the line")
    p.add_argument("b", metavar="B.mid", help="the other end")
    p.add_argument("--steps", type=int, default=5, help="points on the arc (default 5)")
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="tokens of each piece to encode (default: the run's training window length)",
    )
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="folder for the files")
    p.add_argument("--png", action="store_true", help="also draw a piano roll per file")
    _sampling_arguments(p)
    p.set_defaults(func=run_interpolate)
