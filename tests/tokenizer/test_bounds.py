"""Absurd time spans are refused in bounded memory and time, with the reason.

Each case is written here as raw bytes (`midi_reference.smf`) and encoded in a child
process whose address space may grow by at most 256 MiB over its imports and which a
watchdog ends after 60 s: refusing must not mean first allocating the absurd span.
(0x0FFFFFFF ticks at 144 per quarter and 120 BPM are the 259 hours of the SPEC.)
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from tests.bounded import run_bounded

if not sys.platform.startswith("linux"):
    pytest.skip("RLIMIT_AS and /proc are Linux's", allow_module_level=True)

NOTE = [(0, b"\x90\x3c\x40"), (96, b"\x80\x3c\x00")]
HUGE = 0x0FFFFFFF  # the largest delta a 4-byte VLQ holds
SLOWEST_TEMPO = b"\xff\x51\x03\xff\xff\xff"  # 16.8 s per quarter
CASES = {
    # case: (tracks as (delta, event) lists, tpq, what the refusal must say)
    "gap-0FFFFFFF": (
        [[(0, b"\x90\x3c\x40"), (HUGE, b"\x80\x3c\x00")]],
        144,
        r"\(258\.9 h\), over the 14400 s limit",
    ),
    "tpq-0": ([NOTE], 0, "ticks-per-quarter is 0"),
    "gap-at-slowest-tempo-tpq-1": (
        [[(0, SLOWEST_TEMPO), (HUGE, b"\x90\x3c\x40"), (1, b"\x80\x3c\x00")]],
        1,
        "over the 14400 s limit",
    ),
    "pedal-after-huge-gap": ([NOTE + [(HUGE, b"\xb0\x40\x7f")]], 96, "over the 14400 s limit"),
    # nine huge deltas add up past 2**31 ticks: symusic's int32 times wrap negative
    "ticks-wrap-past-int32": ([[(HUGE, b"\xb0\x07\x00")] * 9 + NOTE], 480, "overflow 32 bits"),
    "tempo-past-int32": (
        [[(HUGE, b"\xb0\x07\x00")] * 9 + [(0, SLOWEST_TEMPO)], NOTE],
        480,
        "overflow 32 bits",
    ),
}

CHILD = """
import json
from tests.tokenizer.midi_reference import smf
from stretto.tokenizer import MidiError, MidiTokenizer

tok = MidiTokenizer()
tok.encode(smf([[(0, b"\\x90\\x3c\\x40"), (96, b"\\x80\\x3c\\x00")]]))  # compile first
cases = json.loads(sys.stdin.read())
bound(256, 60)
for name, (tracks, tpq) in cases.items():
    faulthandler.dump_traceback_later(60, exit=True)
    data = smf([[(d, bytes.fromhex(e)) for d, e in t] for t in tracks], tpq=tpq)
    try:
        out = "encoded %d ids" % tok.encode(data).size
    except MidiError as exc:
        out = "refused: " + exc.reason
    print(json.dumps({name: out}), flush=True)
"""


@pytest.fixture(scope="module")
def outcomes() -> dict[str, str]:
    """Every case encoded in one bounded child: case -> "refused: <reason>" or "encoded"."""
    cases = {
        k: ([[(d, e.hex()) for d, e in t] for t in tracks], tpq)
        for k, (tracks, tpq, _) in CASES.items()
    }
    proc = run_bounded(CHILD, stdin=json.dumps(cases))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for line in proc.stdout.splitlines():
        out.update(json.loads(line))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_absurd_time_span_is_refused_in_bounded_memory_and_time(outcomes, name):
    reason = CASES[name][2]
    assert outcomes[name].startswith("refused: "), outcomes[name]
    assert re.search(reason, outcomes[name]), outcomes[name]
