"""`stretto tokenize` and `stretto tokens`: the tokenizer on the command line."""

from __future__ import annotations

import argparse
import os
import sys

from stretto.tokenizer import MidiTokenizer
from stretto.tokenizer.corpus import build_corpus, merge_corpora, parse_shard

TOKENIZE_EXAMPLE = """example:
  stretto tokenize data/midi data/tokens --workers 2
  (run it again after adding files: what is already there is skipped)

sharded over n machines (part i of the sorted file list on machine i), then joined:
  stretto tokenize data/midi parts/0 --shard 0/2     # on machine 0
  stretto tokenize data/midi parts/1 --shard 1/2     # on machine 1
  stretto tokenize --merge parts/0 parts/1 data/tokens"""

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
    tokenize.add_argument(
        "more",
        nargs="*",
        metavar="DIR",
        help="with --merge: more corpus folders; the last folder named is the output",
    )
    tokenize.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="tokenize only part I of N (0-based) of the sorted file list",
    )
    tokenize.add_argument(
        "--merge",
        action="store_true",
        help="join corpus folders CORPUS_DIR... into the last one named (new or empty); "
        "refuses other vocabularies or tokenizer configs",
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

    if args.merge:
        if args.shard is not None:
            raise ValueError("--merge and --shard do not go together")
        folders = [args.in_dir, args.out_dir, *args.more]
        report = merge_corpora(folders[:-1], folders[-1])
        print(report.summary())
        return 0
    if args.more:
        raise ValueError(f"one IN_DIR and one OUT_DIR expected, got also {args.more}")
    shard = parse_shard(args.shard) if args.shard is not None else None
    report = build_corpus(args.in_dir, args.out_dir, workers=args.workers, shard=shard)
    print(report.summary())
    return 0


def run_tokens(args: argparse.Namespace) -> int:

    tok = MidiTokenizer()
    ids = tok.encode(args.file)
    lines = [str(int(t)) for t in ids] if args.ids else tok.tokens(ids)
    try:
        sys.stdout.write("\n".join(lines) + "\n")
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
