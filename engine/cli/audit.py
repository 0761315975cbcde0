"""`stretto audit`: the integration audit on the command line."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from stretto.engine import MODES
from stretto.engine.audit import AuditConfig, format_table, issues, run_audit, write_json
from stretto.engine.cli import CliError

DESCRIPTION = """\
Run every integration check end to end on real files and print one table
(check, mode, length, result, detail) and a final line `N issues`. The exit code is 0
only when N is 0.

Checks, each of which fails when what it checks is broken: vocabulary signatures
(corpus manifest, checkpoints), data (the corpus's ids in range; a sample of windows of
each length: shape, dtype, decode to MIDI), the active attention backend against the
float64 reference; per mode a train step at each length (finite losses and gradients),
memory that grows linearly with the length, causality, a fresh copy that can fit one
batch, and cached decoding equal to the full forward. Models loaded from checkpoints
(trained) are also measured on the held-out files of their run (its split.json, else a
tenth of CORPUS's files): held-out NLL below the unigram baseline, the vae's latent gap
and active units, the vae_gan discriminator's accuracy on real and sampled spans.

CORPUS is a `stretto tokenize` folder (with manifest.json) or a folder of MIDI files,
tokenized first into a temporary folder. Models are fresh PRESET models, or the
models of the given checkpoints for their modes."""

EPILOG = """\
examples:
  stretto audit --corpus data/midi --preset tiny
  stretto audit --corpus runs/demo/corpus --checkpoint runs/demo/vae/last.pt --modes vae
  stretto audit --corpus tokens/ --lengths 512 --json audit.json"""


def _csv(kind, choices=None):
    def parse(text: str):
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if choices is not None:
            bad = [x for x in items if x not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"{bad[0]!r} is not one of {', '.join(choices)}")
        return tuple(items)

    return parse


def run(args: argparse.Namespace) -> int:

    corpus = args.corpus or os.environ.get("STRETTO_CORPUS")
    if not corpus:
        raise CliError("no corpus: pass --corpus DIR (or set $STRETTO_CORPUS)")

    if not os.path.isdir(corpus):
        raise CliError(f"corpus folder {corpus} does not exist")
    if args.json and os.path.exists(args.json) and not args.force:
        raise CliError(f"{args.json} already exists; pass --force to replace it")

    cfg = AuditConfig(
        corpus=corpus,
        checkpoints=tuple(args.checkpoint or ()),
        modes=args.modes,
        lengths=args.lengths,
        preset=args.preset,
        batch_size=args.batch_size,
        sample=args.sample,
        device=args.device,
        seed=args.seed,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc="audit", unit="check", leave=False)

    def progress(row) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{row.check} {row.mode} {row.length}"[:40])
            bar.update(1)

    torch.manual_seed(args.seed)
    try:
        rows = run_audit(cfg, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json, cfg)
    return 0 if issues(rows) == 0 else 1


def register(subparsers: argparse._SubParsersAction) -> None:

    p = subparsers.add_parser(
        "audit",
        help="run every integration check on real files; exit 0 only with no issues",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--corpus", metavar="DIR", help="token corpus or MIDI folder (default $STRETTO_CORPUS)"
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        metavar="PATH",
        help="a checkpoint to audit in place of the fresh model of its mode (repeatable)",
    )
    p.add_argument(
        "--modes",
        type=_csv(str, MODES),
        default=MODES,
        help="comma-separated modes (default transformer,vae,vae_gan)",
    )
    p.add_argument(
        "--lengths",
        type=_csv(int),
        default=(512, 1024, 2048),
        help="comma-separated window lengths (default 512,1024,2048)",
    )
    p.add_argument("--preset", choices=("tiny", "small", "base"), default="tiny")
    p.add_argument("--batch-size", type=int, default=2, help="windows per batch (default 2)")
    p.add_argument("--sample", type=int, default=4, help="windows decoded per length (default 4)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=run)
