"""`stretto bench ARGS...`: `python -m benchmarks ARGS...` from the source checkout.

`benchmarks/` is not installed with the package: it lives beside `engine/` in a
checkout, so this command finds the repository root from this file's location (an
editable install points there) and runs the runner there as a subprocess, passing every
argument through unchanged (`stretto bench --help` prints the runner's help).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from stretto.engine.cli import CliError

EPILOG = """\
examples:
  stretto bench --quick --device cpu       every suite, short sweep, on the CPU
  stretto bench attention memory           two suites, on CUDA when present
  stretto bench quality --quick            the quality suite (held-out likelihood)
  stretto bench --help                     the runner's options and suites

Results: benchmarks/results/<device>/<YYYY-MM-DD>-<commit>/ (results.csv, results.json,
results.md, PNG plots). Needs a source checkout (git clone + pip install -e .):
a wheel install does not carry benchmarks/."""


def repo_root() -> Path:
    """The checkout holding `benchmarks/`, found from this file (engine/cli/ sits in it)."""
    return Path(__file__).resolve().parents[2]


def benchmarks_command(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "benchmarks", *argv]


def run(args: argparse.Namespace) -> int:
    root = repo_root()
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise CliError(
            f"no benchmarks/ folder next to the installed source ({root}); the benchmarks "
            "ship with a source checkout only: git clone the repository, "
            "`pip install -e .` there, and run `stretto bench` again"
        )
    return subprocess.run(benchmarks_command(args.args), cwd=root, check=False).returncode


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run the speed, memory and quality benchmarks (python -m benchmarks)",
        description="Run Stretto's benchmark suites (all arguments go to python -m benchmarks).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="the runner's arguments")
    p.set_defaults(func=run)
