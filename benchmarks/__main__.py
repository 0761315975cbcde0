"""`python -m benchmarks [SUITE ...] [--quick] [--device cuda|cpu] [--out DIR]
[--seq-len N ...] [--preset NAME ...] [--provider NAME ...] [--corpus DIR] [--steps N]
[--seconds S] [--block N ...]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.core import run_benchmarks
from benchmarks.schema import OPT_IN_SUITES, RESULTS_ROOT, SUITES

EPILOG = """\
examples:
  python -m benchmarks --quick --device cpu      every suite, short sweep, on the CPU
  python -m benchmarks attention memory          two suites on CUDA when present
  python -m benchmarks --out /tmp/run            write the run somewhere else
  python -m benchmarks model --device cpu --preset base --seq-len 512 --seq-len 1024
                                                 a filtered run: these presets/lengths
  python -m benchmarks quality --corpus DIR      held-out likelihood per attention and
                                                 generated music against held-out music
  python -m benchmarks quality --corpus DIR --seq-len 2048 --block 16 --block 128
                                                 the likelihood part alone: WHA with each
                                                 summary block beside the sliding window

--seq-len N (repeatable) keeps only these lengths: the model, memory and generate
suites run any positive length (generate: generated tokens); the attention suite runs
its sweep and keeps those lengths, so a length outside its sweep is an error.
--preset NAME (repeatable) picks the model and generate suites' presets (an engine
preset: tiny, small, base; default: model base, generate small and base; quick runs
tiny on a CPU). The filters are written beside "full run"/"quick run" in results.md.
The quality suite trains on a corpus (--corpus DIR, MIDI files; default: the demo's
chorales, which need music21) for a budget (--steps N per training run, or --seconds
S per attention variant; default: its full or --quick budget), one --preset (tiny);
--block N (repeatable) makes it a block sweep.

Results go to benchmarks/results/<device>/<YYYY-MM-DD>-<commit>/ (results.csv,
results.json, results.md, PNG plots) and that device's section of
benchmarks/results/README.md is replaced by this run's table."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run Stretto's speed and memory benchmarks and write one results folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--results-root",
        default=None,
        help="folder of committed runs and their README (default: benchmarks/results)",
    )
    parser.add_argument(
        "--no-readme",
        action="store_true",
        help="do not update benchmarks/results/README.md",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}")
    try:
        result = run_benchmarks(
            args.suites or None,
            quick=args.quick,
            device=args.device,
            out_dir=args.out,
            results_root=Path(args.results_root) if args.results_root else RESULTS_ROOT,
            plots=not args.no_plots,
            update_readme=False if args.no_readme else None,
            seq_lens=args.seq_len,
            presets=args.preset,
            options={
                "corpus": args.corpus,
                "steps": args.steps,
                "seconds": args.seconds,
                "blocks": args.block,
                "providers": args.provider,
                "batches": args.batch,
            },
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(result.out_dir / "results.md")
    for row in result.errors:
        print(f"error in suite {row['suite']}: {row['status']}", file=sys.stderr)
    return 1 if result.errors else 0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments `stretto bench` and `python -m benchmarks` share."""
    parser.add_argument(
        "suites",
        nargs="*",
        metavar="SUITE",
        help=f"suites to run: {', '.join(SUITES)} (default: all but "
        f"{', '.join(OPT_IN_SUITES)}, which runs only when named)",
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
    parser.add_argument(
        "--provider",
        action="append",
        metavar="NAME",
        help="repeatable: generate suite: only these providers (cached, cached-constrained, "
        "compiled, compiled-first-call, compiled-disk-cache, full-forward, hf-llama, "
        "hf-llama-static; the floor rows are always written)",
    )
    parser.add_argument(
        "--batch",
        action="append",
        type=int,
        metavar="B",
        help="repeatable: generate suite: only these batch sizes (default 1, 8 and 32 for "
        "the batched providers; --quick: 1)",
    )
    parser.add_argument(
        "--corpus",
        metavar="DIR",
        default=None,
        help="quality suite: a folder of MIDI files (or a built token corpus) to train and "
        "score on (default: the demo's chorales, which need music21)",
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        metavar="N",
        help="quality suite: optimizer steps per training run (default: 400; --quick 60)",
    )
    parser.add_argument(
        "--seconds",
        type=_positive_float,
        default=None,
        metavar="S",
        help="quality suite: stop each attention variant after S seconds of training",
    )
    parser.add_argument(
        "--block",
        type=_positive_int,
        action="append",
        metavar="N",
        help="repeatable: quality suite: a block sweep, its likelihood part alone with WHA at "
        "each of these summary block sizes beside the sliding window (no music part)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive length, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
