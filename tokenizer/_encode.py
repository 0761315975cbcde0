"""Encoding: a serialized score -> ids, with the SPEC's note, sustain and tempo policies.

The score's notes, CC64 changes and tempo changes become event keys on the 15.625 ms
grid (see `event_key`), sorted into the SPEC's order at one instant, and `emit_ids`
writes them as ids, with state tokens only where the state changes.
"""

from __future__ import annotations

import numba
import numpy as np

from ._buffer import (
    EVENT_BYTES,
    LAYOUT_CONTROLS_AT,
    LAYOUT_INST,
    LAYOUT_N_CONTROLS,
    LAYOUT_N_NOTES,
    LAYOUT_NOTES_AT,
    NOTE_BYTES,
    i8,
    i32,
    score_layout,
)
from ._ids import (
    END,
    INSTRUMENT0,
    NOTE_OFF0,
    NOTE_ON0,
    NUM_PITCHES,
    SHIFT0,
    START,
    SUSTAIN_OFF,
    SUSTAIN_ON,
    TEMPO0,
    VELOCITY0,
)
from ._sort import heap_pop, heap_push, merge_streams, stable_sort
from ._tempo import BPM_PER_TEMPO_BIN, segment, tempo_map, tick_to_step
from .vocabulary import NUM_INSTRUMENTS, NUM_TEMPOS, NUM_TIME_SHIFTS, PITCH_MIN, TEMPO_MIN_BPM

SUSTAIN_CONTROL = 64  # CC64, the damper pedal
SUSTAIN_PRESSED = 64  # a CC64 value >= this presses the pedal
STEP_BITS = 24  # steps < 2**24: 72 hours of 15.625 ms, above TokenizerConfig's 48 h cap
NUM_CELLS = NUM_INSTRUMENTS << 7  # (instrument, pitch index) packed as inst << 7 | pitch

# Event kinds, in the order they take at one instant (SPEC).
KIND_TEMPO, KIND_NOTE_OFF, KIND_SUSTAIN, KIND_NOTE_ON = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True)
def encode_state(buf, max_step):
    """A serialized ScoreTick (see `_buffer.score_layout`) -> (ids, start, notes kept,
    replaced, dropped, last).

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
        tempo_time[a] = i32(buf, tempos_at + a * EVENT_BYTES)
        tempo_mspq[a] = i32(buf, tempos_at + a * EVENT_BYTES + 4)
    seg_tick, seg_sec, seg_spt, t_step, t_bin = tempo_map(
        tempo_time, tempo_mspq, tpq, TEMPO_MIN_BPM, BPM_PER_TEMPO_BIN, NUM_TEMPOS
    )
    keys, note_off, note_end, note_vel, pedal_key, pedal_on, last = _grid_events(
        buf, tracks, seg_tick, seg_sec, seg_spt, t_step[t_step.shape[0] - 1]
    )
    m = keys.shape[0]
    dropped = tracks[:, LAYOUT_N_NOTES].sum() - m
    if last > max_step:
        return np.empty(0, dtype=np.int16), start, 0, 0, dropped, last
    order, off, alive = _note_policy(keys, note_off, note_end)
    on_keys, on_vel, off_keys = _note_streams(keys, order, off, alive, note_vel)
    n_keep = on_keys.shape[0]
    sus_keys = _sustain_stream(pedal_key, pedal_on)
    tempo_keys = _tempo_stream(t_step, t_bin)
    all_keys, vel = merge_streams(on_keys, on_vel, off_keys, sus_keys, tempo_keys)
    return emit_ids(all_keys, vel), start, n_keep, m - n_keep, dropped, last


@numba.njit(cache=True, nogil=True)
def _grid_events(buf, tracks, seg_tick, seg_sec, seg_spt, last):
    """The score's notes (pitches 21..108) and CC64 changes on the grid, in file order.

    Returns, per note: onset key (on step << 11 | cell), off step, end tick and
    velocity bin; per CC64 change: step << 4 | instrument and 1 = down / 0 = up; and
    the latest step of these and of `last`.
    """
    n_notes = tracks[:, LAYOUT_N_NOTES].sum()
    n_controls = tracks[:, LAYOUT_N_CONTROLS].sum()
    note_key = np.empty(n_notes, dtype=np.int64)
    note_off = np.empty(n_notes, dtype=np.int64)
    note_end = np.empty(n_notes, dtype=np.int64)
    note_vel = np.empty(n_notes, dtype=np.int8)
    pedal_key = np.empty(n_controls, dtype=np.int64)
    pedal_on = np.empty(n_controls, dtype=np.int64)
    m = 0
    n_pedal = 0
    k_on = 0
    k_off = 0
    for k in range(tracks.shape[0]):
        inst = tracks[k, LAYOUT_INST]
        at = tracks[k, LAYOUT_NOTES_AT]
        for _ in range(tracks[k, LAYOUT_N_NOTES]):
            pitch = i8(buf, at + 8) - PITCH_MIN
            if 0 <= pitch < NUM_PITCHES:
                t = i32(buf, at)
                end = t + max(i32(buf, at + 4), 0)
                k_on = segment(t, seg_tick, k_on)
                on = tick_to_step(t, seg_tick, seg_sec, seg_spt, k_on)
                k_off = segment(end, seg_tick, k_off)
                off = tick_to_step(end, seg_tick, seg_sec, seg_spt, k_off)
                note_key[m] = (on << 11) | (inst << 7) | pitch
                note_off[m] = off
                note_end[m] = end
                note_vel[m] = min(max(i8(buf, at + 9), 1), 127) // 4
                last = max(last, off)
                m += 1
            at += NOTE_BYTES
        at = tracks[k, LAYOUT_CONTROLS_AT]
        for _ in range(tracks[k, LAYOUT_N_CONTROLS]):
            if buf[at + 4] == SUSTAIN_CONTROL:
                t = i32(buf, at)
                k_on = segment(t, seg_tick, k_on)
                step = tick_to_step(t, seg_tick, seg_sec, seg_spt, k_on)
                pedal_key[n_pedal] = (step << 4) | inst
                pedal_on[n_pedal] = 1 if buf[at + 5] >= SUSTAIN_PRESSED else 0
                last = max(last, step)
                n_pedal += 1
            at += EVENT_BYTES
    return (
        note_key[:m],
        note_off[:m],
        note_end[:m],
        note_vel[:m],
        pedal_key[:n_pedal],
        pedal_on[:n_pedal],
        last,
    )


@numba.njit(cache=True, nogil=True)
def _note_policy(keys, note_off, note_end):
    """The SPEC's note policy, in (onset, instrument, pitch) order; sorts `keys` in place.

    Returns (order, off, alive) by sorted position: the note's index in file order, its
    final off step, and whether it stays (of notes starting on one step in one cell only
    the one ending last, the first in file order on a tie).
    """
    m = keys.shape[0]
    # stable, so notes of one cell keep their file order: the order the policy needs
    order = np.arange(m)
    stable_sort(keys, order)
    off = np.empty(m, dtype=np.int64)
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
    return order, off, alive


@numba.njit(cache=True, nogil=True)
def _note_streams(keys, order, off, alive, note_vel):
    """The kept notes as two sorted event-key streams: (on keys, their velocity bins,
    off keys)."""
    m = keys.shape[0]
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
            n_heap = heap_pop(heap, n_heap)
        on_keys[e] = event_key(on, KIND_NOTE_ON, cell)
        on_vel[e] = note_vel[order[a]]
        e += 1
        n_heap = heap_push(heap, n_heap, event_key(off[a], KIND_NOTE_OFF, cell))
    while n_heap > 0:
        off_keys[n_off] = heap[0]
        n_off += 1
        n_heap = heap_pop(heap, n_heap)
    return on_keys, on_vel, off_keys


@numba.njit(cache=True, nogil=True)
def _sustain_stream(pedal_key, pedal_on):
    """CC64 changes -> sorted SUSTAIN event keys; the last change at one step holds."""
    n_pedal = pedal_key.shape[0]
    stable_sort(pedal_key, pedal_on)  # stable: file order within one step and instrument
    sus_keys = np.empty(n_pedal, dtype=np.int64)
    n_sus = 0
    for a in range(n_pedal):
        if a + 1 < n_pedal and pedal_key[a + 1] == pedal_key[a]:
            continue  # a later change at the same step holds
        cell = ((pedal_key[a] & 15) << 7) | pedal_on[a]
        sus_keys[n_sus] = event_key(pedal_key[a] >> 4, KIND_SUSTAIN, cell)
        n_sus += 1
    return sus_keys[:n_sus]


@numba.njit(cache=True, nogil=True)
def _tempo_stream(t_step, t_bin):
    """Tempo changes -> sorted TEMPO event keys; the last tempo at one step holds."""
    n_tempo = t_step.shape[0]
    tempo_keys = np.empty(n_tempo, dtype=np.int64)
    n_tk = 0
    for j in range(n_tempo):
        if j + 1 < n_tempo and t_step[j + 1] == t_step[j]:
            continue  # the last tempo at one step holds
        tempo_keys[n_tk] = event_key(t_step[j], KIND_TEMPO, t_bin[j])
        n_tk += 1
    return tempo_keys[:n_tk]


@numba.njit(cache=True, inline="always")
def event_key(step, kind, cell):
    # step (24 bits) | kind (2) | instrument (4) | value (7): the SPEC's order at one
    # instant, then instrument and pitch, so equal inputs give equal ids
    step = min(np.int64(step), (1 << STEP_BITS) - 1)
    return (step << 13) | (np.int64(kind) << 11) | cell


@numba.njit(cache=True, nogil=True)
def emit_ids(keys, vel):
    """Sorted event keys (see `event_key`) and velocity bins -> int16 ids, START ... END.

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
