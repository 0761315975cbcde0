"""Reading symusic's serialized score: where its notes, controls and tempos lie.

`ScoreTick.__getstate__()` (symusic 0.6, zpp_bits, little-endian) is the whole score in
one buffer made by one C++ call, however many tracks it has: the tokenizer reads it
instead of asking every track for its `numpy()` tables (a few microseconds each).
A list is a u32 count then its elements; a string is a u32 length then its bytes.

    score: tpq i32, tracks, time_signatures, key_signatures, tempos, markers
    track: name, program u8, is_drum u8, notes, controls, pitch_bends, pedals, lyrics
    note (12 bytes): time i32, duration i32, pitch i8, velocity i8, 2 bytes padding
    control, pitch bend, pedal, time/key signature, tempo (8 bytes): time i32, then
      control number u8 and value u8, or tempo mspq i32
    text (lyric, marker): time i32, string
"""

from __future__ import annotations

import numba
import numpy as np

from .vocabulary import DRUM_INSTRUMENT

NOTE_BYTES = 12
EVENT_BYTES = 8
LAYOUT_INST, LAYOUT_NOTES_AT, LAYOUT_N_NOTES, LAYOUT_CONTROLS_AT, LAYOUT_N_CONTROLS = range(5)


@numba.njit(cache=True, inline="always")
def u32(buf, at):
    return (
        np.int64(buf[at])
        | (np.int64(buf[at + 1]) << 8)
        | (np.int64(buf[at + 2]) << 16)
        | (np.int64(buf[at + 3]) << 24)
    )


@numba.njit(cache=True, inline="always")
def i32(buf, at):
    u = u32(buf, at)
    return u - ((u >> 31) << 32)


@numba.njit(cache=True, inline="always")
def i8(buf, at):
    u = np.int64(buf[at])
    return u - ((u >> 7) << 8)


@numba.njit(cache=True, nogil=True)
def _earliest(buf, at, n, stride, start):
    """The earliest of `start` and the times of n fixed-size elements from `at`."""
    for _ in range(n):
        start = min(start, i32(buf, at))
        at += stride
    return start


@numba.njit(cache=True, nogil=True)
def _skip_texts(buf, at, start):
    """Past a list of text events from `at`: (its end, earliest of `start` and its times)."""
    n = u32(buf, at)
    at += 4
    for _ in range(n):
        start = min(start, i32(buf, at))
        at += 8 + u32(buf, at + 4)
    return at, start


@numba.njit(cache=True, nogil=True)
def score_layout(buf):
    """Where a serialized score's notes, controls and tempos lie, and its earliest time.

    Returns (tpq, tracks, tempos_at, n_tempos, start): `tracks` is int64 [n_tracks, 5]
    (columns LAYOUT_*: instrument, byte offset and count of the notes, of the
    controls); `start` is the earliest event time of any kind, as `Score.start()`
    (0 for a score without events).
    """
    none = np.int64(1) << 40  # later than any int32 tick
    start = none
    n_tracks = u32(buf, 4)
    tracks = np.empty((n_tracks, 5), dtype=np.int64)
    at = 8
    for k in range(n_tracks):
        at += 4 + u32(buf, at)  # name
        program = np.int64(buf[at])
        drums = buf[at + 1] != 0
        at += 2
        tracks[k, LAYOUT_INST] = DRUM_INSTRUMENT if drums else min(program // 8, 14)
        for column, stride in ((LAYOUT_NOTES_AT, NOTE_BYTES), (LAYOUT_CONTROLS_AT, EVENT_BYTES)):
            n = u32(buf, at)
            tracks[k, column] = at + 4
            tracks[k, column + 1] = n
            start = _earliest(buf, at + 4, n, stride, start)
            at += 4 + n * stride
        for _ in range(2):  # pitch bends, pedals
            n = u32(buf, at)
            start = _earliest(buf, at + 4, n, EVENT_BYTES, start)
            at += 4 + n * EVENT_BYTES
        at, start = _skip_texts(buf, at, start)  # lyrics
    for _ in range(2):  # time signatures, key signatures
        n = u32(buf, at)
        start = _earliest(buf, at + 4, n, EVENT_BYTES, start)
        at += 4 + n * EVENT_BYTES
    n_tempos = u32(buf, at)
    tempos_at = at + 4
    start = _earliest(buf, tempos_at, n_tempos, EVENT_BYTES, start)
    at, start = _skip_texts(buf, tempos_at + n_tempos * EVENT_BYTES, start)  # markers
    return i32(buf, 0), tracks, tempos_at, n_tempos, 0 if start == none else start
