"""Regression inputs for the fuzz replay test, written here byte by byte.

    .venv/bin/python -m tests.fuzz.regressions      # from the repository root

Each input is a small MIDI file built from the bytes below (never copied from a
corpus) that made `MidiTokenizer.encode` misbehave before a fix. It is saved under
tests/data/fuzz/ the way the fuzzer saves a finding (`<kind>-<sha256 prefix>.mid` and a
`.json` note), so `tests/tokenizer/test_fuzz_replay.py` replays it with the fuzzer's
oracle: encode raises `MidiError`, or returns ids that decode cleanly and encode again
to themselves.
"""

from __future__ import annotations

from pathlib import Path

from tests.fuzz.fuzz_encode import save_finding
from tests.tokenizer.midi_reference import smf

HUGE = 0x0FFFFFFF  # the largest delta a 4-byte VLQ holds


def tick_wrap() -> bytes:
    """Nine deltas of 0x0FFFFFFF ticks add up past 2**31: symusic's int32 times wrap
    and the note lands at a negative tick. Encoding must refuse the file (`MidiError`,
    "times overflow 32 bits"); before the fix it went on with negative times."""
    events = [(HUGE, b"\xb0\x07\x00")]  # CC7, then running status
    events += [(HUGE, b"\x07\x00")] * 7
    events += [(HUGE, b"\x90\x3c\x40"), (96, b"\x80\x3c\x00")]
    return smf([events], tpq=480)


REGRESSIONS = {
    "tick_wrap": (
        tick_wrap,
        "crash:AssertionError",
        "ticks wrapped past 2**31 gave an event at a negative tick (refused since c04c9ba)",
    ),
}


def main() -> list[Path]:
    paths = []
    for build, kind, detail in REGRESSIONS.values():
        path = save_finding(build(), kind, detail)
        print(path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    main()
