"""The token-state machine: what each id does to the state a reader of ids keeps.

Decoding (`_decode.decode_ids`), window prefixes (`_windows.state_prefix`) and the
grammar check (`grammar.validate`) read ids through `advance`, so they agree on what
any sequence means:

- NOTE_ON, NOTE_OFF and SUSTAIN act on the current instrument; before the first
  INSTRUMENT, on instrument 0.
- NOTE_ON on a silent (instrument, pitch) starts a note there. On a sounding one it
  ends that note and starts a new one, or, at the note's own onset step, replaces it
  (one note: the later NOTE_ON's velocity and position).
- NOTE_OFF ends the sounding note of its (instrument, pitch); with none sounding it
  changes nothing (an orphan).
- TIME_SHIFT b advances time by b + 1 steps; VELOCITY, TEMPO and INSTRUMENT set their
  state; SUSTAIN sets the current instrument's pedal.
- END marks the end (what comes after is the reader's affair); PAD, UNK and a START
  after the first position change nothing.

The state is three arrays, made by `new_state`:

- `s`, int64 [NUM_SLOTS]: INST, VEL, TEMPO (bins; -1 before the first such id), NOW
  (steps), POS (ids read), NOTES (notes started), ENDED (1 after END), CLOSED (the
  note the last id ended or replaced, -1 if none).
- `sustain`, int8 [16]: 1 where an instrument's pedal is down.
- `notes`, int64 [16, 88, 4]: per (instrument, pitch) the sounding note's NOTE_ID
  (its index among the notes started; -1 when silent), NOTE_STEP (onset step),
  NOTE_POS (position of its NOTE_ON) and NOTE_VEL (velocity bin, -1 before any).
"""

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

INST, VEL, TEMPO, NOW, POS, NOTES, ENDED, CLOSED = range(8)
NUM_SLOTS = 8
NOTE_ID, NOTE_STEP, NOTE_POS, NOTE_VEL = range(4)

# The functions called once per id are compiled without NRT (`_nrt=False`): they only
# read and write the arrays they are given, and with NRT numba increfs and decrefs every
# array argument on every call (atomic operations that the inliner keeps), which made
# decoding 5-10x and window prefixes 20-50x slower than the same loop written inline.

# What `advance` did with an id.
(
    DID_START,  # START at the first position
    DID_SPECIAL,  # PAD, UNK, a later START: nothing
    DID_END,
    DID_NOTE_ON,  # a note started (s[CLOSED]: the sounding note it ended, or -1)
    DID_REPLACE,  # the note s[CLOSED], started at this step, took the new velocity
    DID_NOTE_OFF,  # the note s[CLOSED] ended
    DID_ORPHAN_OFF,  # NOTE_OFF of a silent pitch: nothing
    DID_SHIFT,
    DID_VELOCITY,
    DID_SUSTAIN,  # the pedal changed
    DID_SUSTAIN_HELD,  # the pedal was already so: nothing
    DID_TEMPO,
    DID_INSTRUMENT,
) = range(13)


@numba.njit(cache=True, nogil=True)
def new_state():
    """The state before any id: (s, sustain, notes), see the module docstring."""
    s = np.zeros(NUM_SLOTS, dtype=np.int64)
    s[INST] = s[VEL] = s[TEMPO] = s[CLOSED] = -1
    sustain = np.zeros(NUM_INSTRUMENTS, dtype=np.int8)
    notes = np.full((NUM_INSTRUMENTS, NUM_PITCHES, 4), -1, dtype=np.int64)
    return s, sustain, notes


@numba.njit(cache=True, nogil=True, _nrt=False)
def advance(s, sustain, notes, t):
    """Read id `t` (in range): update the state in place and return what it did (DID_*)."""
    pos = s[POS]
    s[POS] = pos + 1
    s[CLOSED] = -1
    if t < NOTE_ON0:
        if t == END:
            s[ENDED] = 1
            return DID_END
        return DID_START if t == START and pos == 0 else DID_SPECIAL
    i = max(s[INST], 0)
    if t < NOTE_OFF0:
        return _note_on(s, notes, i, t - NOTE_ON0, pos)
    if t < SHIFT0:
        p = t - NOTE_OFF0
        if notes[i, p, NOTE_ID] < 0:
            return DID_ORPHAN_OFF
        s[CLOSED] = notes[i, p, NOTE_ID]
        notes[i, p, NOTE_ID] = -1
        return DID_NOTE_OFF
    if t < VELOCITY0:
        s[NOW] += t - SHIFT0 + 1
        return DID_SHIFT
    if t < SUSTAIN_ON:
        s[VEL] = t - VELOCITY0
        return DID_VELOCITY
    if t < TEMPO0:
        v = 1 if t == SUSTAIN_ON else 0
        if sustain[i] == v:
            return DID_SUSTAIN_HELD
        sustain[i] = v
        return DID_SUSTAIN
    if t < INSTRUMENT0:
        s[TEMPO] = t - TEMPO0
        return DID_TEMPO
    s[INST] = t - INSTRUMENT0
    return DID_INSTRUMENT


@numba.njit(cache=True, nogil=True, _nrt=False)
def _note_on(s, notes, i, p, pos):
    j = notes[i, p, NOTE_ID]
    s[CLOSED] = j
    notes[i, p, NOTE_POS] = pos
    notes[i, p, NOTE_VEL] = s[VEL]
    if j >= 0 and notes[i, p, NOTE_STEP] == s[NOW]:
        return DID_REPLACE
    notes[i, p, NOTE_ID] = s[NOTES]
    notes[i, p, NOTE_STEP] = s[NOW]
    s[NOTES] += 1
    return DID_NOTE_ON


@numba.njit(cache=True, nogil=True, _nrt=False)
def sounding(notes, inst, p):
    """Whether pitch index `p` sounds in instrument `inst` (instrument 0 before any)."""
    return notes[max(inst, 0), p, NOTE_ID] >= 0


@numba.njit(cache=True, nogil=True, _nrt=False)
def oldest_age(s, notes):
    """Steps since the onset of the oldest sounding note, or -1 when none sounds."""
    oldest = s[NOW] + 1
    for i in range(NUM_INSTRUMENTS):
        for p in range(NUM_PITCHES):
            if notes[i, p, NOTE_ID] >= 0:
                oldest = min(oldest, notes[i, p, NOTE_STEP])
    return s[NOW] - oldest
