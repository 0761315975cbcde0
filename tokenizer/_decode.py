"""Decoding: any in-range ids -> notes, sustain changes and tempo changes on the grid.

The ids are read through the token-state machine (`_state`); what it reports as doing
nothing (specials, orphan NOTE_OFFs) or as replacing a note is counted here.
"""

from __future__ import annotations

import numba
import numpy as np

from ._ids import NOTE_ON0, SUSTAIN_ON
from ._state import (
    CLOSED,
    DID_END,
    DID_NOTE_OFF,
    DID_NOTE_ON,
    DID_ORPHAN_OFF,
    DID_REPLACE,
    DID_SPECIAL,
    DID_SUSTAIN,
    DID_TEMPO,
    INST,
    NOTE_ID,
    NOTES,
    NOW,
    TEMPO,
    VEL,
    advance,
    new_state,
)

# Skip counters reported by `decode_ids`.
SKIP_SPECIAL, SKIP_ORPHAN_OFF, SKIP_REPLACED_ON, SKIP_AFTER_END = 0, 1, 2, 3
NUM_SKIP_COUNTERS = 4


@numba.njit(cache=True, nogil=True)
def decode_ids(ids, default_vel_bin):
    """In-range ids -> notes, sustain changes, tempo changes, skip counters.

    Total on any sequence: PAD/UNK/a late START are skipped, an orphan NOTE_OFF is
    skipped, a NOTE_ON on a sounding (instrument, pitch) ends the earlier note there
    (or replaces it when both start at the same step), a zero-length note lasts one
    step, and notes still open at END (or at the end of the ids) close there. Notes
    before the first VELOCITY take `default_vel_bin`.
    Returns (note_inst, note_pitch, note_on, note_off, note_vel_bin,
    sus_inst, sus_step, sus_on, tempo_step, tempo_bin, end_step, skipped).
    """
    n_ids = ids.shape[0]
    note_pitch = np.empty(n_ids, dtype=np.int8)
    note_inst = np.empty(n_ids, dtype=np.int8)
    note_on = np.empty(n_ids, dtype=np.int64)
    note_off = np.empty(n_ids, dtype=np.int64)
    note_vel = np.empty(n_ids, dtype=np.int8)
    sus = np.empty((n_ids, 3), dtype=np.int64)  # instrument, step, 1 = down / 0 = up
    tempo = np.empty((n_ids, 2), dtype=np.int64)  # step, bin
    skipped = np.zeros(NUM_SKIP_COUNTERS, dtype=np.int64)
    s, sustain, notes = new_state()
    n_sus = 0
    n_tempo = 0
    for pos in range(n_ids):
        t = ids[pos]
        did = advance(s, sustain, notes, t)
        now = s[NOW]
        vel = s[VEL] if s[VEL] >= 0 else default_vel_bin
        j = s[CLOSED]
        if did == DID_END:
            skipped[SKIP_AFTER_END] = n_ids - pos - 1
            break
        if did == DID_SPECIAL:
            skipped[SKIP_SPECIAL] += 1
        elif did == DID_ORPHAN_OFF:
            skipped[SKIP_ORPHAN_OFF] += 1
        elif did == DID_REPLACE:
            note_vel[j] = vel  # same start: the later note replaces the earlier
            skipped[SKIP_REPLACED_ON] += 1
        elif did == DID_NOTE_ON:
            if j >= 0:
                note_off[j] = now
            k = s[NOTES] - 1
            note_inst[k] = max(s[INST], 0)
            note_pitch[k] = t - NOTE_ON0
            note_on[k] = now
            note_off[k] = -1
            note_vel[k] = vel
        elif did == DID_NOTE_OFF:
            note_off[j] = max(now, note_on[j] + 1)
        elif did == DID_SUSTAIN:
            sus[n_sus, 0] = max(s[INST], 0)
            sus[n_sus, 1] = now
            sus[n_sus, 2] = 1 if t == SUSTAIN_ON else 0
            n_sus += 1
        elif did == DID_TEMPO:
            if n_tempo > 0 and tempo[n_tempo - 1, 0] == now:
                n_tempo -= 1  # the last TEMPO at one instant wins
            tempo[n_tempo, 0] = now
            tempo[n_tempo, 1] = s[TEMPO]
            n_tempo += 1
    n_notes = s[NOTES]
    for j in notes[:, :, NOTE_ID].flat:
        if j >= 0:  # still sounding: closes at the end
            note_off[j] = max(s[NOW], note_on[j] + 1)
    return (
        note_inst[:n_notes].copy(),
        note_pitch[:n_notes].copy(),
        note_on[:n_notes].copy(),
        note_off[:n_notes].copy(),
        note_vel[:n_notes].copy(),
        sus[:n_sus, 0].astype(np.int8),
        sus[:n_sus, 1].copy(),
        sus[:n_sus, 2].astype(np.int8),
        tempo[:n_tempo, 0].copy(),
        tempo[:n_tempo, 1].astype(np.int8),
        s[NOW],
        skipped,
    )
