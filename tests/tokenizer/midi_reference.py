"""Test helpers: the SPEC's round-trip expectations computed independently of the encoder.

Times come from symusic's own tick -> second conversion (`Score.to("second")`), not
from the tokenizer's tempo map, so a mistake in either shows up as a failure.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from symusic import Score

STEP = 0.015625
PITCH_MIN, PITCH_MAX = 21, 108
# Reference times are float64; a decoded score places times on ticks (0.26 ms at most
# at tpq 3840 and 60 BPM) and symusic's seconds are float32: 0.5 ms covers both.
TIME_EPS = 0.5e-3
# symusic's own tick -> second conversion accumulates float32 error over many tempo
# changes (0.54 ms measured on pm_example.mid, 420 tempo changes).
SYMUSIC_EPS = 1e-3

SHARED_MIDI = Path(__file__).resolve().parents[3] / "shared" / "midi"


def corpus_names(env: str, sub: str) -> list[str]:
    """File names of a shared corpus at collection time (empty where it is absent)."""
    folder = Path(os.environ.get(env, SHARED_MIDI / sub))
    if not folder.is_dir():
        return []
    exts = {".mid", ".midi", ".kar"}
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in exts)


def family(program: int, is_drum: bool) -> int:
    return 15 if is_drum else min(program // 8, 14)


def seconds_of_ticks(score: Score, ticks: np.ndarray) -> np.ndarray:
    """Ticks -> seconds in float64 under the score's tempo map (120 BPM until the first)."""
    tempo = score.tempos.numpy()
    t = np.concatenate([[0], tempo["time"].astype(np.int64)])
    spq = np.concatenate([[0.5], tempo["mspq"].astype(np.float64) / 1e6])
    order = np.argsort(t, kind="stable")
    t, spq = t[order], spq[order]
    start = np.concatenate([[0.0], np.cumsum(np.diff(t) * spq[:-1])]) / score.ticks_per_quarter
    seg = np.searchsorted(t, ticks, side="right") - 1
    return start[seg] + (ticks - t[seg]) * spq[seg] / score.ticks_per_quarter


def score_notes(score: Score) -> dict[str, np.ndarray]:
    """All notes of a tick score: inst, pitch, on, off (float64 seconds), vel, end_tick.

    The float64 times are checked against symusic's own (float32) conversion.
    """
    sec = score.to("second")
    cols = {k: [] for k in ("inst", "pitch", "on", "off", "vel", "end_tick")}
    for track, track_s in zip(score.tracks, sec.tracks, strict=True):
        n = track.notes.numpy()
        start = n["time"].astype(np.int64)
        end = start + n["duration"].astype(np.int64)
        on = seconds_of_ticks(score, start)
        np.testing.assert_allclose(on, track_s.notes.numpy()["time"], atol=SYMUSIC_EPS, rtol=0)
        cols["inst"].append(np.full(start.size, family(track.program, track.is_drum)))
        cols["pitch"].append(n["pitch"].astype(np.int64))
        cols["on"].append(on)
        cols["off"].append(seconds_of_ticks(score, end))
        cols["vel"].append(n["velocity"].astype(np.int64))
        cols["end_tick"].append(end)
    return {
        k: (np.concatenate(v) if v else np.zeros(0, np.float64 if k in ("on", "off") else int))
        for k, v in cols.items()
    }


def expected_notes(score: Score) -> dict[str, np.ndarray]:
    """What decoding must give back, before tolerances (SPEC encoding rules).

    Out-of-range pitches are dropped; per (instrument, pitch), of the notes starting on
    one grid step only the one ending last in ticks stays (first in file order on a
    tie); a note lasts at least one step; a note still sounding when the next one of
    its pitch starts ends there.
    """
    n = score_notes(score)
    keep = (n["pitch"] >= PITCH_MIN) & (n["pitch"] <= PITCH_MAX)
    n = {k: v[keep] for k, v in n.items()}
    q = np.rint(n["on"] / STEP).astype(np.int64)
    order = np.lexsort((-n["end_tick"], q, n["pitch"], n["inst"]))
    n = {k: v[order] for k, v in n.items()}
    q = q[order]
    same = (n["inst"][1:] == n["inst"][:-1]) & (n["pitch"][1:] == n["pitch"][:-1])
    dup = np.zeros(q.size, dtype=bool)
    dup[1:] = same & (q[1:] == q[:-1])
    n = {k: v[~dup] for k, v in n.items()}
    q = q[~dup]
    same = (n["inst"][1:] == n["inst"][:-1]) & (n["pitch"][1:] == n["pitch"][:-1])
    same = np.append(same, False)[: q.size]
    off = np.maximum(n["off"], (q + 1) * STEP)
    next_on = np.append(q[1:], 0)[: q.size] * STEP
    n["off"] = np.where(same, np.minimum(off, next_on), off)
    n["q"] = q
    return n


def sorted_notes(score: Score) -> dict[str, np.ndarray]:
    n = score_notes(score)
    order = np.lexsort((n["on"], n["pitch"], n["inst"]))
    return {k: v[order] for k, v in n.items()}


def assert_round_trip(original: Score, decoded: Score) -> None:
    """The SPEC tolerances: onsets within half a step, offsets within one step, velocity
    within 2, pitches equal, instruments by family (drums stay drums)."""
    exp = expected_notes(original)
    got = sorted_notes(decoded)
    assert got["on"].size == exp["on"].size, (
        f"{got['on'].size} notes decoded, {exp['on'].size} expected"
    )
    np.testing.assert_array_equal(got["inst"], exp["inst"], err_msg="instrument family")
    np.testing.assert_array_equal(got["pitch"], exp["pitch"], err_msg="pitch")
    on_err = np.abs(got["on"] - exp["on"])
    assert on_err.max(initial=0) <= STEP / 2 + TIME_EPS, f"onset off by {on_err.max():.6f} s"
    off_err = np.abs(got["off"] - exp["off"])
    assert off_err.max(initial=0) <= STEP + TIME_EPS, f"offset off by {off_err.max():.6f} s"
    vel_err = np.abs(got["vel"] - exp["vel"])
    assert vel_err.max(initial=0) <= 2, f"velocity off by {vel_err.max()}"


def sustain_instruments(score: Score) -> set[int]:
    """Instrument families with at least one CC64 >= 64 (pedal down)."""
    out = set()
    for track in score.tracks:
        c = track.controls.numpy()
        if ((c["number"] == 64) & (c["value"] >= 64)).any():
            out.add(family(track.program, track.is_drum))
    return out


# -- hand-assembled Standard MIDI Files (for what symusic's writer cannot express) --------
def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def smf(tracks: list[list[tuple[int, bytes]]], tpq: int = 480) -> bytes:
    """A format-1 file from per-track lists of (delta ticks, raw event bytes)."""
    out = struct.pack(">4sIHHH", b"MThd", 6, 1, len(tracks), tpq)
    for events in tracks:
        body = b"".join(_vlq(d) + ev for d, ev in events) + b"\x00\xff\x2f\x00"
        out += struct.pack(">4sI", b"MTrk", len(body)) + body
    return out
