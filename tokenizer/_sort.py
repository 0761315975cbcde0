"""Sorting for the encoder: a stable natural merge sort, a binary min-heap, a 4-way merge.

numpy's stable argsort costs a full O(n log n) sort; symusic's tracks come in time
order, so the encoder's keys form a few long runs and these sort in near-linear time.
"""

from __future__ import annotations

import numba
import numpy as np

SORT_RUN = 32  # `stable_sort` insertion-sorts runs of this length before merging
NO_KEY = 1 << 62  # after every event key: an exhausted stream in `merge_streams`


@numba.njit(cache=True, nogil=True)
def merge_streams(on_keys, on_vel, off_keys, sus_keys, tempo_keys):
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
def heap_push(heap, n, key):
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
def heap_pop(heap, n):
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
def stable_sort(keys, payload):
    """Sort `keys` in place, stably, moving `payload` along (numpy's kind="stable" order).

    A natural merge sort: ascending runs (extended to SORT_RUN by insertion) are merged
    pairwise, and a merge moves only the overlapping middle of its two runs. symusic's
    tracks come in time order, so the keys here form a few long runs and sort in
    near-linear time.
    """
    n = keys.shape[0]
    bounds, n_runs = _natural_runs(keys, payload)
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
            if r + 1 < n_runs:
                _merge_runs(keys, payload, lo, bounds[r + 1], bounds[r + 2], key_buf, payload_buf)
        bounds[merged] = n
        n_runs = merged


@numba.njit(cache=True, nogil=True)
def _natural_runs(keys, payload):
    """Split `keys` into ascending runs of at least SORT_RUN (the last may be shorter),
    insertion-sorting where a run is too short. Returns (bounds, n_runs): run r is
    `[bounds[r], bounds[r + 1])`."""
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
    return bounds, n_runs


@numba.njit(cache=True, nogil=True)
def _merge_runs(keys, payload, lo, mid, hi, key_buf, payload_buf):
    """Merge the sorted runs `[lo, mid)` and `[mid, hi)` in place, stably."""
    if keys[mid - 1] <= keys[mid]:
        return
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
