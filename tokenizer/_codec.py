"""numba kernels of the tokenizer: event arrays -> ids, ids -> note arrays, window state.

Everything here works on numpy arrays only; `midi.py` and `dataset.py` prepare the
arrays and wrap the results. Ids follow the layout of `vocabulary.Vocabulary`.
"""

from __future__ import annotations

import numba
import numpy as np

from .vocabulary import (
    DRUM_INSTRUMENT,
    NUM_INSTRUMENTS,
    NUM_TEMPOS,
    NUM_TIME_SHIFTS,
    PITCH_MIN,
    STEP_SECONDS,
    TEMPO_MAX_BPM,
    TEMPO_MIN_BPM,
    Vocabulary,
)

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
STEPS_PER_SECOND = round(1 / STEP_SECONDS)  # 64
SUSTAIN_CONTROL = 64  # CC64, the damper pedal

# Event kinds, in the order they take at one instant (SPEC).
KIND_TEMPO, KIND_NOTE_OFF, KIND_SUSTAIN, KIND_NOTE_ON = 0, 1, 2, 3

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


STEP_BITS = 24  # steps < 2**24: 72 hours of 15.625 ms, above TokenizerConfig's 48 h cap
BPM_PER_TEMPO_BIN = (TEMPO_MAX_BPM - TEMPO_MIN_BPM) / (NUM_TEMPOS - 1)
SORT_RUN = 32  # `_stable_sort` insertion-sorts runs of this length before merging
NUM_CELLS = NUM_INSTRUMENTS << 7  # (instrument, pitch index) packed as inst << 7 | pitch
NO_KEY = 1 << 62  # after every event key: an exhausted stream in `_merge_streams`

# -- symusic's serialized score ----------------------------------------------------------
# `ScoreTick.__getstate__()` (symusic 0.6, zpp_bits, little-endian) is the whole score in
# one buffer made by one C++ call, however many tracks it has: the tokenizer reads it
# instead of asking every track for its `numpy()` tables (a few microseconds each).
# A list is a u32 count then its elements; a string is a u32 length then its bytes.
#   score: tpq i32, tracks, time_signatures, key_signatures, tempos, markers
#   track: name, program u8, is_drum u8, notes, controls, pitch_bends, pedals, lyrics
#   note (12 bytes): time i32, duration i32, pitch i8, velocity i8, 2 bytes padding
#   control, pitch bend, pedal, time/key signature, tempo (8 bytes): time i32, then
#     control number u8 and value u8, or tempo mspq i32
#   text (lyric, marker): time i32, string
NOTE_BYTES = 12
EVENT_BYTES = 8
LAYOUT_INST, LAYOUT_NOTES_AT, LAYOUT_N_NOTES, LAYOUT_CONTROLS_AT, LAYOUT_N_CONTROLS = range(5)


@numba.njit(cache=True, inline="always")
def _u32(buf, at):
    return (
        np.int64(buf[at])
        | (np.int64(buf[at + 1]) << 8)
        | (np.int64(buf[at + 2]) << 16)
        | (np.int64(buf[at + 3]) << 24)
    )


@numba.njit(cache=True, inline="always")
def _i32(buf, at):
    u = _u32(buf, at)
    return u - ((u >> 31) << 32)


@numba.njit(cache=True, inline="always")
def _i8(buf, at):
    u = np.int64(buf[at])
    return u - ((u >> 7) << 8)


@numba.njit(cache=True, nogil=True)
def _earliest(buf, at, n, stride, start):
    """The earliest of `start` and the times of n fixed-size elements from `at`."""
    for _ in range(n):
        start = min(start, _i32(buf, at))
        at += stride
    return start


@numba.njit(cache=True, nogil=True)
def _skip_texts(buf, at, start):
    """Past a list of text events from `at`: (its end, earliest of `start` and its times)."""
    n = _u32(buf, at)
    at += 4
    for _ in range(n):
        start = min(start, _i32(buf, at))
        at += 8 + _u32(buf, at + 4)
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
    n_tracks = _u32(buf, 4)
    tracks = np.empty((n_tracks, 5), dtype=np.int64)
    at = 8
    for k in range(n_tracks):
        at += 4 + _u32(buf, at)  # name
        program = np.int64(buf[at])
        drums = buf[at + 1] != 0
        at += 2
        tracks[k, LAYOUT_INST] = DRUM_INSTRUMENT if drums else min(program // 8, 14)
        for column, stride in ((LAYOUT_NOTES_AT, NOTE_BYTES), (LAYOUT_CONTROLS_AT, EVENT_BYTES)):
            n = _u32(buf, at)
            tracks[k, column] = at + 4
            tracks[k, column + 1] = n
            start = _earliest(buf, at + 4, n, stride, start)
            at += 4 + n * stride
        for _ in range(2):  # pitch bends, pedals
            n = _u32(buf, at)
            start = _earliest(buf, at + 4, n, EVENT_BYTES, start)
            at += 4 + n * EVENT_BYTES
        at, start = _skip_texts(buf, at, start)  # lyrics
    for _ in range(2):  # time signatures, key signatures
        n = _u32(buf, at)
        start = _earliest(buf, at + 4, n, EVENT_BYTES, start)
        at += 4 + n * EVENT_BYTES
    n_tempos = _u32(buf, at)
    tempos_at = at + 4
    start = _earliest(buf, tempos_at, n_tempos, EVENT_BYTES, start)
    at, start = _skip_texts(buf, tempos_at + n_tempos * EVENT_BYTES, start)  # markers
    return _i32(buf, 0), tracks, tempos_at, n_tempos, 0 if start == none else start


@numba.njit(cache=True, nogil=True)
def encode_state(buf, max_step):
    """A serialized ScoreTick (see `score_layout`) -> (ids, start, notes kept, replaced,
    dropped, last).

    Applies the SPEC's policies: pitches outside 21..108 are dropped and counted; per
    (instrument, pitch), of the notes starting on one step only the one ending last
    stays (the first in file order on a tie); a note lasts at least one step; a note
    still sounding when the next of its pitch starts ends there. The last tempo and the
    last CC64 state (per instrument) at one step hold. `last` is the grid step of the
    latest event. No ids are made (empty ids) when `start` is negative or `last`
    exceeds `max_step` (which must stay below 2**STEP_BITS): the caller refuses the file.
    """
    tpq, tracks, tempos_at, n_tempos, start = score_layout(buf)
    if start < 0:
        return np.empty(0, dtype=np.int16), start, 0, 0, 0, 0
    tempo_time = np.empty(n_tempos, dtype=np.int64)
    tempo_mspq = np.empty(n_tempos, dtype=np.int64)
    for a in range(n_tempos):
        tempo_time[a] = _i32(buf, tempos_at + a * EVENT_BYTES)
        tempo_mspq[a] = _i32(buf, tempos_at + a * EVENT_BYTES + 4)
    seg_tick, seg_sec, seg_spt, t_step, t_bin = tempo_map(
        tempo_time, tempo_mspq, tpq, TEMPO_MIN_BPM, BPM_PER_TEMPO_BIN, NUM_TEMPOS
    )
    n_notes = tracks[:, LAYOUT_N_NOTES].sum()
    n_controls = tracks[:, LAYOUT_N_CONTROLS].sum()

    # -- notes and CC64 changes on the grid -----------------------------------------
    # per note: onset key (on step << 11 | cell), off step, end tick, velocity bin
    note_key = np.empty(n_notes, dtype=np.int64)
    note_off = np.empty(n_notes, dtype=np.int64)
    note_end = np.empty(n_notes, dtype=np.int64)
    note_vel = np.empty(n_notes, dtype=np.int8)
    # per CC64 change: step << 4 | instrument, 1 = down / 0 = up
    pedal_key = np.empty(n_controls, dtype=np.int64)
    pedal_on = np.empty(n_controls, dtype=np.int64)
    m = 0
    n_pedal = 0
    last = t_step[t_step.shape[0] - 1]
    k_on = 0
    k_off = 0
    for k in range(tracks.shape[0]):
        inst = tracks[k, LAYOUT_INST]
        at = tracks[k, LAYOUT_NOTES_AT]
        for _ in range(tracks[k, LAYOUT_N_NOTES]):
            pitch = _i8(buf, at + 8) - PITCH_MIN
            if 0 <= pitch < NUM_PITCHES:
                t = _i32(buf, at)
                end = t + max(_i32(buf, at + 4), 0)
                k_on = _segment(t, seg_tick, k_on)
                on = _tick_to_step(t, seg_tick, seg_sec, seg_spt, k_on)
                k_off = _segment(end, seg_tick, k_off)
                off = _tick_to_step(end, seg_tick, seg_sec, seg_spt, k_off)
                note_key[m] = (on << 11) | (inst << 7) | pitch
                note_off[m] = off
                note_end[m] = end
                note_vel[m] = min(max(_i8(buf, at + 9), 1), 127) // 4
                last = max(last, off)
                m += 1
            at += NOTE_BYTES
        at = tracks[k, LAYOUT_CONTROLS_AT]
        for _ in range(tracks[k, LAYOUT_N_CONTROLS]):
            if buf[at + 4] == SUSTAIN_CONTROL:
                t = _i32(buf, at)
                k_on = _segment(t, seg_tick, k_on)
                step = _tick_to_step(t, seg_tick, seg_sec, seg_spt, k_on)
                pedal_key[n_pedal] = (step << 4) | inst
                pedal_on[n_pedal] = 1 if buf[at + 5] >= 64 else 0
                last = max(last, step)
                n_pedal += 1
            at += EVENT_BYTES
    dropped = n_notes - m
    if last > max_step:
        return np.empty(0, dtype=np.int16), start, 0, 0, dropped, last

    # -- the note policy, in (onset, instrument, pitch) order -----------------------
    # stable, so notes of one cell keep their file order: the order the policy needs
    keys = note_key[:m]
    order = np.arange(m)
    _stable_sort(keys, order)
    off = np.empty(m, dtype=np.int64)  # final off step, by sorted position
    alive = np.ones(m, dtype=np.bool_)
    latest = np.full(NUM_CELLS, -1, dtype=np.int64)  # sorted position of a cell's last note
    for a in range(m):
        j = order[a]
        on = keys[a] >> 11
        cell = keys[a] & (NUM_CELLS - 1)
        off[a] = max(note_off[j], on + 1)  # a note lasts at least one step
        p = latest[cell]
        if p >= 0 and keys[p] == keys[a]:
            if note_end[j] > note_end[order[p]]:  # same start: the one ending last stays
                alive[p] = False
                latest[cell] = a
            else:
                alive[a] = False
            continue
        if p >= 0 and off[p] > on:
            off[p] = on  # the earlier note ends where the later begins
        latest[cell] = a

    # -- event streams, each sorted by event key ------------------------------------
    n_keep = 0
    for a in range(m):
        n_keep += alive[a]
    on_keys = np.empty(n_keep, dtype=np.int64)
    on_vel = np.empty(n_keep, dtype=np.int8)
    off_keys = np.empty(n_keep, dtype=np.int64)
    # every kept note ends after it starts, so a pending NOTE_OFF earlier than the next
    # onset's step + 1 precedes all later ones: a heap of the sounding notes sorts them
    heap = np.empty(n_keep, dtype=np.int64)
    n_heap = 0
    e = 0
    n_off = 0
    for a in range(m):
        if not alive[a]:
            continue
        on = keys[a] >> 11
        cell = keys[a] & (NUM_CELLS - 1)
        while n_heap > 0 and heap[0] < (on + 1) << 13:
            off_keys[n_off] = heap[0]
            n_off += 1
            n_heap = _heap_pop(heap, n_heap)
        on_keys[e] = _event_key(on, KIND_NOTE_ON, cell)
        on_vel[e] = note_vel[order[a]]
        e += 1
        n_heap = _heap_push(heap, n_heap, _event_key(off[a], KIND_NOTE_OFF, cell))
    while n_heap > 0:
        off_keys[n_off] = heap[0]
        n_off += 1
        n_heap = _heap_pop(heap, n_heap)

    pedal_key = pedal_key[:n_pedal]
    pedal_on = pedal_on[:n_pedal]
    _stable_sort(pedal_key, pedal_on)  # stable: file order within one step and instrument
    sus_keys = np.empty(n_pedal, dtype=np.int64)
    n_sus = 0
    for a in range(n_pedal):
        if a + 1 < n_pedal and pedal_key[a + 1] == pedal_key[a]:
            continue  # a later change at the same step holds
        cell = ((pedal_key[a] & 15) << 7) | pedal_on[a]
        sus_keys[n_sus] = _event_key(pedal_key[a] >> 4, KIND_SUSTAIN, cell)
        n_sus += 1

    n_tempo = t_step.shape[0]
    tempo_keys = np.empty(n_tempo, dtype=np.int64)
    n_tk = 0
    for j in range(n_tempo):
        if j + 1 < n_tempo and t_step[j + 1] == t_step[j]:
            continue  # the last tempo at one step holds
        tempo_keys[n_tk] = _event_key(t_step[j], KIND_TEMPO, t_bin[j])
        n_tk += 1

    all_keys, vel = _merge_streams(on_keys, on_vel, off_keys, sus_keys[:n_sus], tempo_keys[:n_tk])
    return emit_ids(all_keys, vel), start, n_keep, m - n_keep, dropped, last


@numba.njit(cache=True, inline="always")
def _event_key(step, kind, cell):
    # step (24 bits) | kind (2) | instrument (4) | value (7): the SPEC's order at one
    # instant, then instrument and pitch, so equal inputs give equal ids
    step = min(np.int64(step), (1 << STEP_BITS) - 1)
    return (step << 13) | (np.int64(kind) << 11) | cell


@numba.njit(cache=True, nogil=True)
def _merge_streams(on_keys, on_vel, off_keys, sus_keys, tempo_keys):
    """Four sorted key streams -> one sorted stream and its velocity bins (0 but note-ons).

    Keys of different streams differ in their kind bits, so the merge has no ties.
    """
    n = on_keys.shape[0] + off_keys.shape[0] + sus_keys.shape[0] + tempo_keys.shape[0]
    keys = np.empty(n, dtype=np.int64)
    vel = np.zeros(n, dtype=np.int8)
    i_on = i_off = i_sus = i_tempo = 0
    for e in range(n):
        k_on = on_keys[i_on] if i_on < on_keys.shape[0] else NO_KEY
        k_off = off_keys[i_off] if i_off < off_keys.shape[0] else NO_KEY
        k_sus = sus_keys[i_sus] if i_sus < sus_keys.shape[0] else NO_KEY
        k_tempo = tempo_keys[i_tempo] if i_tempo < tempo_keys.shape[0] else NO_KEY
        key = min(min(k_on, k_off), min(k_sus, k_tempo))
        keys[e] = key
        if key == k_on:
            vel[e] = on_vel[i_on]
            i_on += 1
        elif key == k_off:
            i_off += 1
        elif key == k_sus:
            i_sus += 1
        else:
            i_tempo += 1
    return keys, vel


@numba.njit(cache=True, inline="always")
def _heap_push(heap, n, key):
    """Add `key` to the binary min-heap `heap[:n]`; returns its new size."""
    a = n
    while a > 0:
        parent = (a - 1) >> 1
        if heap[parent] <= key:
            break
        heap[a] = heap[parent]
        a = parent
    heap[a] = key
    return n + 1


@numba.njit(cache=True, inline="always")
def _heap_pop(heap, n):
    """Remove the least key `heap[0]` of the binary min-heap `heap[:n]`; returns its new size."""
    n -= 1
    key = heap[n]
    a = 0
    while True:
        child = 2 * a + 1
        if child >= n:
            break
        if child + 1 < n and heap[child + 1] < heap[child]:
            child += 1
        if key <= heap[child]:
            break
        heap[a] = heap[child]
        a = child
    heap[a] = key
    return n


@numba.njit(cache=True, nogil=True)
def _stable_sort(keys, payload):
    """Sort `keys` in place, stably, moving `payload` along (numpy's kind="stable" order).

    A natural merge sort: ascending runs (extended to SORT_RUN by insertion) are merged
    pairwise, and a merge moves only the overlapping middle of its two runs. symusic's
    tracks come in time order, so the keys here form a few long runs and sort in
    near-linear time.
    """
    n = keys.shape[0]
    bounds = np.empty(n // SORT_RUN + 2, dtype=np.int64)  # run starts, then n
    n_runs = 0
    i = 0
    while i < n:
        bounds[n_runs] = i
        n_runs += 1
        j = i + 1
        while j < n and keys[j - 1] <= keys[j]:
            j += 1
        if j - i < SORT_RUN and j < n:
            stop = min(i + SORT_RUN, n)
            for a in range(j, stop):
                k = keys[a]
                if keys[a - 1] <= k:
                    continue
                v = payload[a]
                b = a - 1
                while b >= i and keys[b] > k:
                    keys[b + 1] = keys[b]
                    payload[b + 1] = payload[b]
                    b -= 1
                keys[b + 1] = k
                payload[b + 1] = v
            j = stop
            while j < n and keys[j - 1] <= keys[j]:
                j += 1
        i = j
    bounds[n_runs] = n
    if n_runs <= 1:
        return
    key_buf = np.empty(n, dtype=keys.dtype)
    payload_buf = np.empty(n, dtype=payload.dtype)
    while n_runs > 1:
        merged = 0
        for r in range(0, n_runs, 2):
            lo = bounds[r]
            bounds[merged] = lo
            merged += 1
            if r + 1 == n_runs:
                continue
            mid = bounds[r + 1]
            hi = bounds[r + 2]
            if keys[mid - 1] <= keys[mid]:
                continue
            # left keys <= the right run's first stay where they are (stability)...
            i = lo + np.searchsorted(keys[lo:mid], keys[mid], side="right")
            # ...and so do right keys >= the left run's last
            stop = mid + np.searchsorted(keys[mid:hi], keys[mid - 1], side="left")
            for a in range(i, mid):
                key_buf[a] = keys[a]
                payload_buf[a] = payload[a]
            a = i
            b = mid
            out = i
            while a < mid and b < stop:
                if keys[b] < key_buf[a]:
                    keys[out] = keys[b]
                    payload[out] = payload[b]
                    b += 1
                else:
                    keys[out] = key_buf[a]
                    payload[out] = payload_buf[a]
                    a += 1
                out += 1
            while a < mid:
                keys[out] = key_buf[a]
                payload[out] = payload_buf[a]
                a += 1
                out += 1
        bounds[merged] = n
        n_runs = merged


@numba.njit(cache=True, nogil=True)
def emit_ids(keys, vel):
    """Sorted event keys (see `_event_key`) and velocity bins -> int16 ids, START ... END.

    `value` is the pitch index (0..87) for notes, the tempo bin for TEMPO, 1/0 for
    SUSTAIN on/off. State tokens are emitted only when the state changes; sustain
    events that repeat an instrument's state are dropped.
    """
    n_events = keys.shape[0]
    last_step = keys[n_events - 1] >> 13 if n_events > 0 else 0
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
        key = keys[e]
        k = (key >> 11) & 3
        i = (key >> 7) & 15
        value = key & 127
        if k == KIND_TEMPO and value == cur_tempo:
            continue
        if k == KIND_SUSTAIN and sustain[i] == value:
            continue
        s = key >> 13
        while s > now:
            d = min(s - now, NUM_TIME_SHIFTS)
            out[n] = SHIFT0 + d - 1
            n += 1
            now += d
        if k == KIND_TEMPO:
            out[n] = TEMPO0 + value
            n += 1
            cur_tempo = value
            continue
        if i != cur_inst:
            out[n] = INSTRUMENT0 + i
            n += 1
            cur_inst = i
        if k == KIND_SUSTAIN:
            sustain[i] = value
            out[n] = SUSTAIN_ON if value == 1 else SUSTAIN_OFF
        elif k == KIND_NOTE_OFF:
            out[n] = NOTE_OFF0 + value
        else:
            if vel[e] != cur_vel:
                out[n] = VELOCITY0 + vel[e]
                n += 1
                cur_vel = vel[e]
            out[n] = NOTE_ON0 + value
        n += 1
    out[n] = END
    n += 1
    return out[:n].copy()


@numba.njit(cache=True, nogil=True)
def ticks_to_steps(ticks, seg_tick, seg_sec, seg_spt):
    """Ticks -> grid steps (round half to even) under a piecewise-constant tempo map.

    Segment k starts at tick `seg_tick[k]` (sorted, the first is 0) and second
    `seg_sec[k]` and lasts `seg_spt[k]` seconds per tick. Seconds are float64, so
    rounding happens once, on absolute time.
    """
    n = ticks.shape[0]
    out = np.empty(n, dtype=np.int64)
    k = 0
    for j in range(n):
        k = _segment(ticks[j], seg_tick, k)
        out[j] = _tick_to_step(np.int64(ticks[j]), seg_tick, seg_sec, seg_spt, k)
    return out


@numba.njit(cache=True, inline="always")
def _tick_to_step(t, seg_tick, seg_sec, seg_spt, k):
    return np.int64(np.rint((seg_sec[k] + (t - seg_tick[k]) * seg_spt[k]) * STEPS_PER_SECOND))


@numba.njit(cache=True, inline="always")
def _segment(t, seg_tick, hint):
    """The last segment starting at or before tick `t` (0 before the first).

    `hint` is tried first: a track's notes come in time order, so it is usually the
    segment of the previous note, and the binary search is skipped.
    """
    n_seg = seg_tick.shape[0]
    if n_seg == 1:
        return 0
    if seg_tick[hint] <= t and (hint + 1 == n_seg or t < seg_tick[hint + 1]):
        return hint
    return max(np.searchsorted(seg_tick, t, side="right") - 1, 0)


@numba.njit(cache=True, nogil=True)
def tempo_map(ticks, mspq, tpq, tempo_min_bpm, bpm_per_bin, n_bins):
    """symusic tempo columns -> segments for `ticks_to_steps` and the TEMPO changes.

    Returns (seg_tick, seg_sec, seg_spt, change_step, change_bin): segments start at
    the tempo events (stable in time order; 120 BPM from tick 0 until the first), and
    each event's grid step and nearest tempo bin (clamped to the vocabulary's range).
    """
    order = np.argsort(ticks, kind="mergesort")
    n = ticks.shape[0]
    lead = 1 if n == 0 or ticks[order[0]] > 0 else 0
    m = n + lead
    seg_tick = np.empty(m, dtype=np.int64)
    seg_mspq = np.empty(m, dtype=np.float64)
    if lead:
        seg_tick[0] = 0
        seg_mspq[0] = 500000.0
    for a in range(n):
        seg_tick[a + lead] = ticks[order[a]]
        q = mspq[order[a]]
        seg_mspq[a + lead] = q if q > 0 else 500000.0
    seg_spt = seg_mspq / (1e6 * tpq)
    seg_sec = np.zeros(m, dtype=np.float64)
    for a in range(1, m):
        seg_sec[a] = seg_sec[a - 1] + (seg_tick[a] - seg_tick[a - 1]) * seg_spt[a - 1]
    change_step = ticks_to_steps(seg_tick, seg_tick, seg_sec, seg_spt)
    change_bin = np.empty(m, dtype=np.int64)
    for a in range(m):
        b = np.rint((60e6 / seg_mspq[a] - tempo_min_bpm) / bpm_per_bin)
        change_bin[a] = np.int64(min(max(b, 0.0), n_bins - 1.0))
    return seg_tick, seg_sec, seg_spt, change_step, change_bin


@numba.njit(cache=True, nogil=True)
def tempo_ticks(steps, sec_per_tick):
    """Tick and realised second of each tempo change of a decoded score.

    Each change goes on the tick nearest its exact time as measured by the ticks
    before it, so rounding never accumulates across changes.
    """
    n = steps.shape[0]
    tick0 = np.zeros(n, dtype=np.int64)
    sec0 = np.zeros(n, dtype=np.float64)
    for j in range(1, n):
        dt = np.rint((steps[j] * STEP_SECONDS - sec0[j - 1]) / sec_per_tick[j - 1])
        tick0[j] = tick0[j - 1] + np.int64(dt)
        sec0[j] = sec0[j - 1] + dt * sec_per_tick[j - 1]
    return tick0, sec0
