"""Decoding: any in-range ids -> notes, sustain changes and tempo changes on the grid."""

from __future__ import annotations

import numba
import numpy as np

from ._ids import (
    END,
    INSTRUMENT0,
    NOTE_OFF0,
    NOTE_ON0,
    NUM_PITCHES,
    SHIFT0,
    START,
    SUSTAIN_ON,
    TEMPO0,
    VELOCITY0,
)
from .vocabulary import NUM_INSTRUMENTS

# Skip counters reported by `decode_ids`.
SKIP_SPECIAL, SKIP_ORPHAN_OFF, SKIP_REPLACED_ON, SKIP_AFTER_END = 0, 1, 2, 3
NUM_SKIP_COUNTERS = 4


@numba.njit(cache=True, nogil=True)
def decode_ids(ids, default_vel_bin):
    """In-range ids -> notes, sustain changes, tempo changes, skip counters.

    Total on any sequence: PAD/UNK/a late START are skipped, an orphan NOTE_OFF is
    skipped, a NOTE_ON on a sounding (instrument, pitch) ends the earlier note there
    (or replaces it when both start at the same step), a zero-length note lasts one
    step, and notes still open at END (or at the end of the ids) close there.
    Returns (note_inst, note_pitch, note_on, note_off, note_vel_bin,
    sus_inst, sus_step, sus_on, tempo_step, tempo_bin, end_step, skipped).
    """
    n_ids = ids.shape[0]
    note_inst = np.empty(n_ids, dtype=np.int8)
    note_pitch = np.empty(n_ids, dtype=np.int8)
    note_on = np.empty(n_ids, dtype=np.int64)
    note_off = np.empty(n_ids, dtype=np.int64)
    note_vel = np.empty(n_ids, dtype=np.int8)
    sus_inst = np.empty(n_ids, dtype=np.int8)
    sus_step = np.empty(n_ids, dtype=np.int64)
    sus_on = np.empty(n_ids, dtype=np.int8)
    tempo_step = np.empty(n_ids, dtype=np.int64)
    tempo_bin = np.empty(n_ids, dtype=np.int8)
    skipped = np.zeros(NUM_SKIP_COUNTERS, dtype=np.int64)
    open_note = np.full((NUM_INSTRUMENTS, NUM_PITCHES), -1, dtype=np.int64)
    sustain = np.zeros(NUM_INSTRUMENTS, dtype=np.int8)
    n_notes = 0
    n_sus = 0
    n_tempo = 0
    now = 0
    inst = 0
    vel = default_vel_bin
    pos = 0
    while pos < n_ids:
        t = ids[pos]
        pos += 1
        if t == END:
            skipped[SKIP_AFTER_END] = n_ids - pos
            break
        if t < NOTE_ON0:
            if not (t == START and pos == 1):
                skipped[SKIP_SPECIAL] += 1
        elif t < NOTE_OFF0:
            p = t - NOTE_ON0
            j = open_note[inst, p]
            if j >= 0 and note_on[j] == now:
                note_vel[j] = vel  # same start: the later note replaces the earlier
                skipped[SKIP_REPLACED_ON] += 1
                continue
            if j >= 0:
                note_off[j] = now
            note_inst[n_notes] = inst
            note_pitch[n_notes] = p
            note_on[n_notes] = now
            note_off[n_notes] = -1
            note_vel[n_notes] = vel
            open_note[inst, p] = n_notes
            n_notes += 1
        elif t < SHIFT0:
            p = t - NOTE_OFF0
            j = open_note[inst, p]
            if j < 0:
                skipped[SKIP_ORPHAN_OFF] += 1
                continue
            note_off[j] = max(now, note_on[j] + 1)
            open_note[inst, p] = -1
        elif t < VELOCITY0:
            now += t - SHIFT0 + 1
        elif t < SUSTAIN_ON:
            vel = t - VELOCITY0
        elif t < TEMPO0:
            v = 1 if t == SUSTAIN_ON else 0
            if sustain[inst] != v:
                sustain[inst] = v
                sus_inst[n_sus] = inst
                sus_step[n_sus] = now
                sus_on[n_sus] = v
                n_sus += 1
        elif t < INSTRUMENT0:
            if n_tempo > 0 and tempo_step[n_tempo - 1] == now:
                n_tempo -= 1  # the last TEMPO at one instant wins
            tempo_step[n_tempo] = now
            tempo_bin[n_tempo] = t - TEMPO0
            n_tempo += 1
        else:
            inst = t - INSTRUMENT0
    for i in range(NUM_INSTRUMENTS):
        for p in range(NUM_PITCHES):
            j = open_note[i, p]
            if j >= 0:
                note_off[j] = max(now, note_on[j] + 1)
    return (
        note_inst[:n_notes].copy(),
        note_pitch[:n_notes].copy(),
        note_on[:n_notes].copy(),
        note_off[:n_notes].copy(),
        note_vel[:n_notes].copy(),
        sus_inst[:n_sus].copy(),
        sus_step[:n_sus].copy(),
        sus_on[:n_sus].copy(),
        tempo_step[:n_tempo].copy(),
        tempo_bin[:n_tempo].copy(),
        now,
        skipped,
    )
