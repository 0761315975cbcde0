"""`stretto bench`: run the benchmark suites (`python -m benchmarks`) from the source tree.

`benchmarks/` is not installed with the package: it lives beside `engine/` in a
checkout, so this command finds the repository root from this file's location (an
editable install points there) and runs the runner there as a subprocess.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SUITES = ("tokenizer", "attention", "model", "generate", "memory")

EPILOG = """\
examples:
  stretto bench --quick --device cpu       every suite, short sweep, on the CPU
  stretto bench attention memory           two suites, on CUDA when present
  stretto bench --out /tmp/bench-run       write the run somewhere else
  stretto bench model --preset base --seq-len 2048
                                           one preset at one length (a filtered run)

Results: benchmarks/results/<device>/<YYYY-MM-DD>-<commit>/ (results.csv, results.json,
results.md, PNG plots). Needs a source checkout (git clone + pip install -e .):
a wheel install does not carry benchmarks/."""


def repo_root() -> Path:
    """The checkout holding `benchmarks/`, found from this file (engine/ sits in it)."""
    return Path(__file__).resolve().parents[1]


def benchmarks_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks", *args.suites]
    if args.quick:
        cmd.append("--quick")
    if args.device:
        cmd += ["--device", args.device]
    if args.out:
        cmd += ["--out", str(Path(args.out).resolve())]
    if args.no_plots:
        cmd.append("--no-plots")
    for n in args.seq_len or ():
        cmd += ["--seq-len", str(n)]
    for name in args.preset or ():
        cmd += ["--preset", name]
    return cmd


def run(args: argparse.Namespace) -> int:
    from stretto.engine.cli import CliError

    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        raise CliError(f"unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}")
    root = repo_root()
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise CliError(
            f"no benchmarks/ folder next to the installed source ({root}); the benchmarks "
            "ship with a source checkout only: git clone the repository, "
            "`pip install -e .` there, and run `stretto bench` again"
        )
    return subprocess.run(benchmarks_command(args), cwd=root, check=False).returncode


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run the speed and memory benchmarks (python -m benchmarks)",
        description="Run Stretto's benchmark suites and write one results folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.set_defaults(func=run)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments `stretto bench` and `python -m benchmarks` share."""
    parser.add_argument(
        "suites",
        nargs="*",
        metavar="SUITE",
        help=f"suites to run (default: all): {', '.join(SUITES)}",
    )
    parser.add_argument("--quick", action="store_true", help="short sweep, fewer repeats")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="where to run (default: cuda when torch sees one, else cpu)",
    )
    parser.add_argument(
        "--out", default=None, help="results folder (default: under benchmarks/results/)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--seq-len",
        type=_positive_int,
        action="append",
        metavar="N",
        help="repeatable: only these sequence lengths in the model, memory and generate "
        "suites (any length; generate: the generated length) and the attention suite "
        "(lengths of its sweep only)",
    )
    parser.add_argument(
        "--preset",
        action="append",
        metavar="NAME",
        help="repeatable: model presets of the model and generate suites (tiny, small, "
        "base; default: model base, generate small and base; --quick: tiny, or small for "
        "generate on CUDA)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive length, got {value}")
    return value
