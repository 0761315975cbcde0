"""`stretto tokenize` and `stretto tokens`: the tokenizer on the command line."""

from __future__ import annotations

import argparse
import os
import sys

TOKENIZE_EXAMPLE = """example:
  stretto tokenize data/midi data/tokens --workers 2
  (run it again after adding files: what is already there is skipped)"""

TOKENS_EXAMPLE = """example:
  stretto tokens song.mid | head -20
  stretto tokens song.mid --ids          # numeric ids instead of names"""


def register(subparsers) -> None:
    tokenize = subparsers.add_parser(
        "tokenize",
        help="tokenize a folder of MIDI files into a token corpus",
        description="Tokenize MIDI files (folders are searched recursively) into uint16 "
        "token shards with a JSON manifest; files that cannot be read are listed, "
        "never fatal.",
        epilog=TOKENIZE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tokenize.add_argument("in_dir", metavar="IN_DIR", help="folder (or file) of MIDI files")
    tokenize.add_argument("out_dir", metavar="OUT_DIR", help="corpus folder to create or extend")
    tokenize.add_argument(
        "--workers", type=int, default=None, help="processes (default: one per CPU)"
    )
    tokenize.set_defaults(func=run_tokenize)

    tokens = subparsers.add_parser(
        "tokens",
        help="print the tokens of one MIDI file",
        description="Print the readable tokens of one MIDI file, one per line.",
        epilog=TOKENS_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tokens.add_argument("file", metavar="FILE.mid", help="a MIDI file")
    tokens.add_argument("--ids", action="store_true", help="print numeric ids")
    tokens.set_defaults(func=run_tokens)


def run_tokenize(args: argparse.Namespace) -> int:
    from .corpus import build_corpus

    report = build_corpus(args.in_dir, args.out_dir, workers=args.workers)
    print(report.summary())
    return 0


def run_tokens(args: argparse.Namespace) -> int:
    from .midi import MidiTokenizer

    tok = MidiTokenizer()
    ids = tok.encode(args.file)
    lines = [str(int(t)) for t in ids] if args.ids else tok.tokens(ids)
    try:
        sys.stdout.write("\n".join(lines) + "\n")
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
