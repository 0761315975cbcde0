"""Tokenizer speed: `MidiTokenizer.encode(path)` against a bare symusic load and MidiTok.

Per file of the dev corpus (`../shared/midi/dev`, or $STRETTO_TEST_CORPUS), three
providers run side by side, round after round (`benchmarks.timing.bench_cpu`):

- symusic-load: `symusic.Score(path)`, the floor any symusic-based tokenizer pays;
- stretto-encode: `MidiTokenizer().encode(path)` (load + numba encode);
- miditok-midilike: MidiTok 3.x `MIDILike(TokenizerConfig(use_programs=True))`
  `.encode(path)` (multitrack, like ours), when miditok is installed (a skipped row
  otherwise; it is a benchmark-only install, never a dependency).

A row per provider gives the median over files of each file's median time (p20/p80
across files); `extra` holds the median per-file ratio to the bare load and to
MidiTok. The issue's targets: encode at most 2x the load, at least 40x faster than
MidiTok. Then `build_corpus` over the whole dev corpus with 1 and 2 workers (files/s),
and the peak resident memory of encoding the largest file, in a fresh process.

Standalone: `python -m benchmarks.tokenizer_bench --out DIR [--quick]`; the common
runner calls `run(quick=..., device=...)` as the `tokenizer` suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.schema import skipped_row
from benchmarks.timing import bench_cpu, peak_rss_in_child, quantile

SUITE = "tokenizer"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_CORPUS = REPO_ROOT.parent / "shared" / "midi" / "dev"
MIDI_SUFFIXES = (".mid", ".midi", ".kar")


def corpus_files() -> list[Path]:
    folder = Path(os.environ.get("STRETTO_TEST_CORPUS", DEV_CORPUS))
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in MIDI_SUFFIXES)


def miditok_encoder() -> tuple[Callable[[Path], Any] | None, str]:
    """MidiTok MIDILike's encode, or None and the reason it is not there."""
    try:
        import miditok
    except ImportError:
        return None, "miditok is not installed (pip install miditok, benchmark only)"
    from importlib import metadata

    version = metadata.version("miditok")
    if not version.startswith("3."):
        return None, f"miditok {version} installed, the comparison is with 3.x"
    tokenizer = miditok.MIDILike(miditok.TokenizerConfig(use_programs=True))
    return tokenizer.encode, f"miditok {version}"


def _build_encode(path: str) -> Callable[[], Any]:
    """For the memory probe (runs in a spawned child)."""
    from stretto.tokenizer import MidiTokenizer

    tok = MidiTokenizer()
    return lambda: tok.encode(path)


def _build_load(path: str) -> Callable[[], Any]:
    from symusic import Score

    return lambda: Score(path)


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median_ms": quantile(values, 0.5),
        "p20_ms": quantile(values, 0.2),
        "p80_ms": quantile(values, 0.8),
    }


def per_file_rows(files: list[Path], *, repeats: int) -> list[dict[str, Any]]:
    from symusic import Score

    from stretto.tokenizer import MidiTokenizer

    tok = MidiTokenizer()
    tok.encode(files[0])  # numba's compiled code is loaded once, outside any timing
    miditok_encode, miditok_note = miditok_encoder()
    times: dict[str, list[float]] = {"symusic-load": [], "stretto-encode": []}
    if miditok_encode is not None:
        times["miditok-midilike"] = []
    refused: list[str] = []
    for path in files:
        cases = {
            "symusic-load": lambda p=str(path): Score(p),
            "stretto-encode": lambda p=path: tok.encode(p),
        }
        if miditok_encode is not None:
            cases["miditok-midilike"] = lambda p=path: miditok_encode(p)
        try:
            result = bench_cpu(cases, warmup=1, repeats=repeats, min_repeats=repeats)
        except Exception as exc:  # a file one provider refuses is left out for all
            refused.append(f"{path.name}: {type(exc).__name__}: {exc}")
            continue
        for name, timing in result.items():
            times[name].append(timing.median_ms)

    shape = f"dev-corpus-{len(times['stretto-encode'])}files"
    load, enc = times["symusic-load"], times["stretto-encode"]
    rows = []
    for name, values in times.items():
        if not values:
            continue
        extra: dict[str, Any] = {
            "files": len(values),
            "repeats_per_file": repeats,
            "statistic": "median over files of each file's median",
            "ratio_to_symusic_load": statistics.median(
                v / b for v, b in zip(values, load, strict=True)
            ),
        }
        if name == "miditok-midilike":
            extra["miditok"] = miditok_note
        if "miditok-midilike" in times and name == "stretto-encode":
            mt = times["miditok-midilike"]
            extra["speedup_vs_miditok"] = statistics.median(
                m / e for m, e in zip(mt, enc, strict=True)
            )
        if refused:
            extra["files_left_out"] = refused
        rows.append(
            {
                "suite": SUITE,
                "provider": name,
                "mode": "per-file",
                "shape": shape,
                "dtype": "-",
                **_spread(values),
                "extra": extra,
            }
        )
    if miditok_encode is None:
        rows.append(skipped_row(SUITE, miditok_note, provider="miditok-midilike", mode="per-file"))
    return rows


def build_rows(files: list[Path], *, repeats: int) -> list[dict[str, Any]]:
    from stretto.tokenizer import build_corpus

    rows = []
    for workers in (1, 2):
        samples, report = [], None
        for _ in range(repeats):
            out = Path(tempfile.mkdtemp(prefix="stretto-bench-corpus-"))
            try:
                t0 = time.perf_counter()
                report = build_corpus(files, out, workers=workers, progress=False)
                samples.append((time.perf_counter() - t0) * 1e3)
            finally:
                shutil.rmtree(out, ignore_errors=True)
        med = quantile(samples, 0.5)
        rows.append(
            {
                "suite": SUITE,
                "provider": "build_corpus",
                "mode": f"workers={workers}",
                "shape": f"dev-corpus-{len(files)}files",
                "dtype": "uint16",
                **_spread(samples),
                "extra": {
                    "files_per_s": len(files) / (med / 1e3),
                    "tokens": report.tokens,
                    "refused": len(report.bad),
                    "runs": repeats,
                },
            }
        )
    return rows


def memory_rows(files: list[Path]) -> list[dict[str, Any]]:
    largest = max(files, key=lambda p: p.stat().st_size)
    rows = []
    for provider, build in (("stretto-encode", _build_encode), ("symusic-load", _build_load)):
        probe = peak_rss_in_child(build, {"path": str(largest)})
        row = {
            "suite": SUITE,
            "provider": provider,
            "mode": "peak-memory",
            "shape": largest.name,
            "dtype": "-",
        }
        if "error" in probe:
            row["status"] = f"error: {probe['error']}"
        else:
            row["peak_mem_mb"] = probe["peak_mem_mb"]
            row["extra"] = {k: v for k, v in probe.items() if k != "peak_mem_mb"}
        rows.append(row)
    return rows


def run(*, quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    """The `tokenizer` suite: rows in the runner's schema (CPU only; `device` unused)."""
    files = corpus_files()
    if not files:
        return [skipped_row(SUITE, f"no dev corpus at {DEV_CORPUS} ($STRETTO_TEST_CORPUS)")]
    timed = files[:: max(1, len(files) // 12)] if quick else files
    rows = per_file_rows(timed, repeats=1 if quick else 5)
    rows += build_rows(files, repeats=1 if quick else 3)
    rows += memory_rows(files)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tokenizer_bench",
        description=__doc__.split("\n\n")[0],
        epilog="example:\n  python -m benchmarks.tokenizer_bench --quick --out /tmp/tok-bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="folder for results.csv/json/md")
    parser.add_argument("--quick", action="store_true", help="a dozen files, one round")
    args = parser.parse_args(argv)
    from benchmarks.core import run_benchmarks

    result = run_benchmarks(
        ["tokenizer"],
        quick=args.quick,
        device="cpu",
        out_dir=Path(args.out),
        registry={"tokenizer": run},
        update_readme=False,
        plots=False,
    )
    print(f"wrote {result.out_dir}")
    return 1 if result.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
