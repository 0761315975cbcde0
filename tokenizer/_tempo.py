"""Tempo maps: MIDI ticks <-> steps of the 15.625 ms grid, for encoding and decoding."""

from __future__ import annotations

import numba
import numpy as np

from .vocabulary import NUM_TEMPOS, STEP_SECONDS, STEPS_PER_SECOND, TEMPO_MAX_BPM, TEMPO_MIN_BPM

BPM_PER_TEMPO_BIN = (TEMPO_MAX_BPM - TEMPO_MIN_BPM) / (NUM_TEMPOS - 1)


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
        k = segment(ticks[j], seg_tick, k)
        out[j] = tick_to_step(np.int64(ticks[j]), seg_tick, seg_sec, seg_spt, k)
    return out


@numba.njit(cache=True, inline="always")
def tick_to_step(t, seg_tick, seg_sec, seg_spt, k):
    return np.int64(np.rint((seg_sec[k] + (t - seg_tick[k]) * seg_spt[k]) * STEPS_PER_SECOND))


@numba.njit(cache=True, inline="always")
def segment(t, seg_tick, hint):
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
