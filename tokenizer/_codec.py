"""numba kernels of the tokenizer: event arrays -> ids, ids -> note arrays, window state.

Everything here works on numpy arrays only; `midi.py` and `dataset.py` prepare the
arrays and wrap the results. Ids follow the layout of `vocabulary.Vocabulary`.
"""

from __future__ import annotations

import numba
import numpy as np

from .vocabulary import NUM_INSTRUMENTS, NUM_TIME_SHIFTS, Vocabulary

_V = Vocabulary()
START, END, PAD, UNK = _V.START, _V.END, _V.PAD, _V.UNK
NOTE_ON0 = _V.NOTE_ON.start
NOTE_OFF0 = _V.NOTE_OFF.start
SHIFT0 = _V.TIME_SHIFT.start
VELOCITY0 = _V.VELOCITY.start
SUSTAIN_ON, SUSTAIN_OFF = _V.SUSTAIN_ON, _V.SUSTAIN_OFF
TEMPO0 = _V.TEMPO.start
INSTRUMENT0 = _V.INSTRUMENT.start
VOCAB_SIZE = _V.size
NUM_PITCHES = _V.NOTE_ON.stop - _V.NOTE_ON.start

# Event kinds, in the order they take at one instant (SPEC).
KIND_TEMPO, KIND_NOTE_OFF, KIND_SUSTAIN, KIND_NOTE_ON = 0, 1, 2, 3

# Skip counters reported by `decode_ids`.
SKIP_SPECIAL, SKIP_ORPHAN_OFF, SKIP_REPLACED_ON, SKIP_AFTER_END = 0, 1, 2, 3
NUM_SKIP_COUNTERS = 4


@numba.njit(cache=True, nogil=True)
def emit_ids(step, kind, inst, value, vel):
    """Event arrays sorted by (step, kind, inst, value) -> int16 ids, START ... END.

    `value` is the pitch index (0..87) for notes, the tempo bin for TEMPO, 1/0 for
    SUSTAIN on/off. State tokens are emitted only when the state changes; sustain
    events that repeat an instrument's state are dropped.
    """
    n_events = step.shape[0]
    last_step = step[n_events - 1] if n_events > 0 else 0
    cap = 2 + 4 * n_events + last_step // NUM_TIME_SHIFTS + 1
    out = np.empty(cap, dtype=np.int16)
    n = 0
    out[n] = START
    n += 1
    now = 0
    cur_inst = -1
    cur_vel = -1
    cur_tempo = -1
    sustain = np.zeros(NUM_INSTRUMENTS, dtype=np.int8)
    for e in range(n_events):
        k = kind[e]
        i = inst[e]
        if k == KIND_TEMPO and value[e] == cur_tempo:
            continue
        if k == KIND_SUSTAIN and sustain[i] == value[e]:
            continue
        s = step[e]
        while s > now:
            d = min(s - now, NUM_TIME_SHIFTS)
            out[n] = SHIFT0 + d - 1
            n += 1
            now += d
        if k == KIND_TEMPO:
            out[n] = TEMPO0 + value[e]
            n += 1
            cur_tempo = value[e]
            continue
        if i != cur_inst:
            out[n] = INSTRUMENT0 + i
            n += 1
            cur_inst = i
        if k == KIND_SUSTAIN:
            sustain[i] = value[e]
            out[n] = SUSTAIN_ON if value[e] == 1 else SUSTAIN_OFF
        elif k == KIND_NOTE_OFF:
            out[n] = NOTE_OFF0 + value[e]
        else:
            if vel[e] != cur_vel:
                out[n] = VELOCITY0 + vel[e]
                n += 1
                cur_vel = vel[e]
            out[n] = NOTE_ON0 + value[e]
        n += 1
    out[n] = END
    n += 1
    return out[:n].copy()


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
    tempo = -1
    inst = -1
    vel = -1
    sustain = np.zeros(NUM_INSTRUMENTS, dtype=np.int8)
    open_vel = np.full((NUM_INSTRUMENTS, NUM_PITCHES), -1, dtype=np.int16)
    open_age = np.zeros((NUM_INSTRUMENTS, NUM_PITCHES), dtype=np.int64)
    for pos in range(start):
        t = ids[pos]
        if t < NOTE_ON0:
            continue
        if t < NOTE_OFF0:
            i = max(inst, 0)
            open_vel[i, t - NOTE_ON0] = max(vel, 0)
            open_age[i, t - NOTE_ON0] = pos
        elif t < SHIFT0:
            open_vel[max(inst, 0), t - NOTE_OFF0] = -1
        elif t < VELOCITY0:
            pass
        elif t < SUSTAIN_ON:
            vel = t - VELOCITY0
        elif t < TEMPO0:
            sustain[max(inst, 0)] = 1 if t == SUSTAIN_ON else 0
        elif t < INSTRUMENT0:
            tempo = t - TEMPO0
        else:
            inst = t - INSTRUMENT0
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
    # sounding notes, oldest first
    n_open = 0
    for i in range(NUM_INSTRUMENTS):
        for p in range(NUM_PITCHES):
            if open_vel[i, p] >= 0:
                n_open += 1
    keys = np.empty(n_open, dtype=np.int64)
    k = 0
    for i in range(NUM_INSTRUMENTS):
        for p in range(NUM_PITCHES):
            if open_vel[i, p] >= 0:
                keys[k] = open_age[i, p] * (NUM_INSTRUMENTS * NUM_PITCHES) + i * NUM_PITCHES + p
                k += 1
    keys.sort()
    for k in range(n_open):
        cell = keys[k] % (NUM_INSTRUMENTS * NUM_PITCHES)
        i = cell // NUM_PITCHES
        p = cell % NUM_PITCHES
        v = open_vel[i, p]
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
