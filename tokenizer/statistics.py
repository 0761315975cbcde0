"""Statistics of the music in a symusic Score, for comparing generated music with real."""

from __future__ import annotations

import numpy as np
from symusic import Score


def polyphony(score: Score) -> float:
    """Mean number of pitches sounding at once, over the ticks where at least one sounds;
    NaN for a score with no pitched note of positive duration. Drum tracks are ignored.

    muspy's `polyphony` (the measure of the benchmarks' quality suite), computed on the
    notes' spans `[time, time + duration)` in the score's own ticks instead of a piano
    roll: a pitch sounding in two tracks at once counts once, and a note that starts
    where another ends does not overlap it.
    """
    if score.ticks_per_quarter <= 0:
        raise ValueError(f"ticks-per-quarter is {score.ticks_per_quarter}: no time")
    spans = [track.notes.numpy() for track in score.to("tick").tracks if not track.is_drum]
    time = np.concatenate([n["time"] for n in spans] or [[]]).astype(np.int64)
    end = time + np.concatenate([n["duration"] for n in spans] or [[]]).astype(np.int64)
    pitch = np.concatenate([n["pitch"] for n in spans] or [[]]).astype(np.int64)
    keep = end > time
    time, end, pitch = time[keep], end[keep], pitch[keep]
    if not time.size:
        return float("nan")
    sounding = _covered(time, end)
    # one pitch at a time: shift each pitch's spans past every other pitch's
    shift = pitch * (int(end.max()) - int(time.min()) + 1)
    pitch_ticks = _covered(time + shift, end + shift)
    return pitch_ticks / sounding


def _covered(start: np.ndarray, end: np.ndarray) -> float:
    """Length of the union of the spans `[start, end)`."""
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    # a span opens a new stretch when it starts at or after every earlier span's end
    reach = np.maximum.accumulate(end)
    opens = np.flatnonzero(np.concatenate(([True], start[1:] >= reach[:-1])))
    return float(np.sum(np.maximum.reduceat(end, opens) - start[opens]))
