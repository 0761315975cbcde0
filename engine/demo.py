"""`stretto demo`: the main job that `make demo` runs."""

from __future__ import annotations

import argparse

PLAN = """\
stretto demo: the main job, end to end on a real MIDI corpus.
  1. obtain the default corpus (or $STRETTO_CORPUS) and tokenize it into runs/demo/corpus
  2. train each mode (transformer, vae, vae_gan) briefly on 2 CPU cores (longer on a GPU)
  3. generate a piece per mode, as MIDI with a piano-roll PNG
  4. run `stretto audit` on the result and print where every output is
Steps 1-4 are being built; this release installs the package and its tools only."""


def run(args: argparse.Namespace) -> int:
    print(PLAN)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job: tokenize, train every mode, generate, audit",
        description=PLAN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run)
