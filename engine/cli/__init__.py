"""The `stretto` command line.

Every subcommand is a module of this package exposing `register(subparsers)`; each
registered parser sets `func` to a callable taking the parsed arguments and returning
an exit code. Errors reach the user as one line
(`stretto CMD: error: ...`) unless `--debug` asks for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib import metadata

# Modules that add subcommands, in the order they appear in `stretto --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "stretto.engine.cli.demo",
    "stretto.engine.cli.bench",
    "stretto.engine.cli.tokenize",
    "stretto.engine.cli.train",
    "stretto.engine.cli.audit",
    "stretto.engine.cli.generate",
    "stretto.engine.cli.render",
)


class CliError(Exception):
    """An error to show the user as one line, without a traceback."""


def version() -> str:
    try:
        return metadata.version("stretto")
    except metadata.PackageNotFoundError:  # imported from a source tree, not installed
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stretto",
        description=(
            "Stretto: MIDI tokenizer, windowed hierarchical attention kernels and "
            "music transformer models."
        ),
    )
    parser.add_argument("--version", action="version", version=f"stretto {version()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `stretto [--debug] bench ARGS...`: the benchmark runner parses ARGS itself, options
    # included, which argparse cannot leave alone inside a subcommand.
    at = 1 if argv[:1] == ["--debug"] else 0
    if argv[at : at + 1] == ["bench"]:
        args = parser.parse_args([*argv[: at + 1]])
        args.args = argv[at + 1 :]
    else:
        args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"stretto {args.command}: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, OSError, NotImplementedError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"stretto {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
