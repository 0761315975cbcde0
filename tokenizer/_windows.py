"""Windows over a file's ids: instant boundaries, and the state prefix that lets a window
decode on its own (the state of the token-state machine, `_state`, written as ids)."""

from __future__ import annotations

import numba
import numpy as np

from ._ids import (
    INSTRUMENT0,
    NOTE_ON0,
    NUM_PITCHES,
    SHIFT0,
    START,
    SUSTAIN_ON,
    TEMPO0,
    VELOCITY0,
)
from ._state import INST, NOTE_ID, NOTE_POS, NOTE_VEL, TEMPO, VEL, advance, new_state
from .vocabulary import NUM_INSTRUMENTS


@numba.njit(cache=True, nogil=True)
def snap_to_boundary(ids, pos):
    """The last instant boundary at or before `pos`: a TIME_SHIFT position, or 0."""
    while pos > 0 and not (SHIFT0 <= ids[pos] < VELOCITY0):
        pos -= 1
    return pos


@numba.njit(cache=True, nogil=True)
def state_prefix(ids, start, max_len):
    """Tokens that restore, at time 0, the decoder state reached after `ids[:start]`.

    START, the tempo, SUSTAIN_ON of every instrument whose pedal is down, NOTE_ON of
    the notes still sounding (oldest first, as many as fit in `max_len`), then the
    current INSTRUMENT and VELOCITY. Empty when `start` is 0.
    """
    out = np.empty(max(max_len, 0), dtype=np.int16)
    if start <= 0:
        return out[:0]
    s, sustain, notes = new_state()
    for pos in range(start):
        advance(s, sustain, notes, ids[pos])
    tempo, inst, vel = s[TEMPO], s[INST], s[VEL]
    # the state tokens that must fit whatever else is dropped
    reserve = 1 + (1 if tempo >= 0 else 0) + (1 if inst >= 0 else 0) + (1 if vel >= 0 else 0)
    if max_len < reserve:
        return out[:0]
    n = 0
    out[n] = START
    n += 1
    if tempo >= 0:
        out[n] = TEMPO0 + tempo
        n += 1
    e_inst = -1
    e_vel = -1
    budget = max_len - reserve
    for i in range(NUM_INSTRUMENTS):
        if sustain[i] == 1 and budget >= 2:
            out[n] = INSTRUMENT0 + i
            out[n + 1] = SUSTAIN_ON
            n += 2
            budget -= 2
            e_inst = i
    for cell in _sounding_oldest_first(notes):
        i = cell // NUM_PITCHES
        p = cell % NUM_PITCHES
        v = max(notes[i, p, NOTE_VEL], 0)
        need = 1 + (1 if i != e_inst else 0) + (1 if v != e_vel else 0)
        if need > budget:
            break
        if i != e_inst:
            out[n] = INSTRUMENT0 + i
            n += 1
            e_inst = i
        if v != e_vel:
            out[n] = VELOCITY0 + v
            n += 1
            e_vel = v
        out[n] = NOTE_ON0 + p
        n += 1
        budget -= need
    if inst >= 0 and inst != e_inst:
        out[n] = INSTRUMENT0 + inst
        n += 1
    if vel >= 0 and vel != e_vel:
        out[n] = VELOCITY0 + vel
        n += 1
    return out[:n].copy()


@numba.njit(cache=True, nogil=True)
def _sounding_oldest_first(notes):
    """The sounding (instrument, pitch) cells as `i * 88 + p`, oldest NOTE_ON first."""
    n_open = 0
    for i in range(NUM_INSTRUMENTS):
        for p in range(NUM_PITCHES):
            if notes[i, p, NOTE_ID] >= 0:
                n_open += 1
    keys = np.empty(n_open, dtype=np.int64)
    k = 0
    for i in range(NUM_INSTRUMENTS):
        for p in range(NUM_PITCHES):
            if notes[i, p, NOTE_ID] >= 0:
                keys[k] = (
                    notes[i, p, NOTE_POS] * (NUM_INSTRUMENTS * NUM_PITCHES) + i * NUM_PITCHES + p
                )
                k += 1
    keys.sort()
    return keys % (NUM_INSTRUMENTS * NUM_PITCHES)


@numba.njit(cache=True, nogil=True)
def build_window(ids, start, seq_len, max_prefix, pad):
    """One window: state prefix + ids from `start`, trimmed and right-padded to seq_len.

    Returns (window int64[seq_len], n_real, body_end) where body_end is the index in
    `ids` one past the last copied token.
    """
    prefix = state_prefix(ids, start, min(max_prefix, seq_len - 1))
    out = np.full(seq_len, pad, dtype=np.int64)
    n = prefix.shape[0]
    for j in range(n):
        out[j] = prefix[j]
    stop = min(ids.shape[0], start + seq_len - n)
    # do not end on state tokens whose event was cut off
    while (
        stop > start + 1
        and ids[stop - 1] >= VELOCITY0
        and (ids[stop - 1] < SUSTAIN_ON or ids[stop - 1] >= INSTRUMENT0)
    ):
        stop -= 1
    for pos in range(start, stop):
        out[n] = ids[pos]
        n += 1
    return out, n, stop
