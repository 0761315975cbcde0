"""`MidiTokenizer`: MIDI (path, bytes or symusic.Score) <-> token ids.

The Python here only moves whole numpy arrays between symusic and the numba kernels
(`_encode`, `_decode`, `_tempo`): one step per track, never per note.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from symusic import ControlChange, Note, Score, Tempo, Track
from symusic.core import ScoreTick

from ._decode import (
    SKIP_AFTER_END,
    SKIP_ORPHAN_OFF,
    SKIP_REPLACED_ON,
    SKIP_SPECIAL,
    decode_ids,
)
from ._encode import SUSTAIN_CONTROL, encode_state
from ._tempo import tempo_ticks
from .config import TokenizerConfig
from .vocabulary import (
    DRUM_INSTRUMENT,
    NUM_INSTRUMENTS,
    NUM_TEMPOS,
    NUM_VELOCITIES,
    PITCH_MIN,
    STEP_SECONDS,
    STEPS_PER_SECOND,
    Vocabulary,
    tempo_bpm,
)

FAMILY_NAMES = (
    "Piano",
    "Chromatic Percussion",
    "Organ",
    "Guitar",
    "Bass",
    "Strings",
    "Ensemble",
    "Brass",
    "Reed",
    "Pipe",
    "Synth Lead",
    "Synth Pad",
    "Synth Effects",
    "Ethnic",
    "Percussive and Sound Effects",
    "Drums",
)


class MidiError(ValueError):
    """A MIDI input that cannot be tokenized; the message names the file and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass
class EncodeStats:
    """What `encode` left out or changed, for reports."""

    notes: int = 0
    dropped_pitch: int = 0
    replaced_same_onset: int = 0


@dataclass
class DecodeStats:
    """What `decode` skipped: see `_decode.decode_ids`."""

    notes: int = 0
    skipped_special: int = 0
    orphan_note_off: int = 0
    replaced_note_on: int = 0
    after_end: int = 0


class MidiTokenizer:
    """MIDI <-> ids of the 774-token event vocabulary (see docs/tokenizer.md).

    >>> tok = MidiTokenizer()
    >>> ids = tok.encode("song.mid")          # int16 [T], START ... END
    >>> score = tok.decode(ids)               # symusic.Score, ticks
    """

    def __init__(self, config: TokenizerConfig | None = None):
        self.config = config if config is not None else TokenizerConfig()
        self.vocab = Vocabulary()
        self.last_encode_stats = EncodeStats()
        self.last_decode_stats = DecodeStats()

    # -- encoding ----------------------------------------------------------------------
    def encode(self, source: str | os.PathLike | bytes | Score) -> np.ndarray:
        """MIDI -> int16 ids [T], START ... END. Raises `MidiError` for unusable input."""
        score, name = self._load(source)
        return self.encode_score(score, name)

    def encode_score(self, score: Score, name: str = "<score>") -> np.ndarray:
        if not isinstance(score, ScoreTick):
            score = score.to("tick")
        tpq = int(score.ticks_per_quarter)
        if tpq <= 0:
            raise MidiError(name, f"ticks-per-quarter is {tpq}: no time can be computed")
        # the whole score in one buffer, one call however many tracks (see _buffer)
        state = np.frombuffer(score.__getstate__(), dtype=np.uint8)
        max_step = math.floor(self.config.max_seconds * STEPS_PER_SECOND)
        ids, start, n_kept, replaced, dropped, last = encode_state(state, max_step)
        if start < 0:  # symusic's int32 ticks wrap when delta times add up past 2**31
            raise MidiError(
                name, f"an event lies at tick {start}: times overflow 32 bits or are negative"
            )
        if last > self.config.max_seconds * STEPS_PER_SECOND:
            end_s = last / STEPS_PER_SECOND
            raise MidiError(
                name,
                f"lasts {end_s:.1f} s ({end_s / 3600:.1f} h), over the "
                f"{self.config.max_seconds:.0f} s limit (TokenizerConfig.max_seconds)",
            )
        self.last_encode_stats = EncodeStats(
            notes=int(n_kept), dropped_pitch=int(dropped), replaced_same_onset=int(replaced)
        )
        return ids

    def read(self, source: str | os.PathLike | bytes | Score) -> Score:
        """MIDI -> symusic.Score (ticks) with the checks `encode` makes on its input (size,
        header, readability); raises `MidiError` naming the file and the reason."""
        score, name = self._load(source)
        if not isinstance(score, ScoreTick):
            score = score.to("tick")
        if int(score.ticks_per_quarter) <= 0:
            raise MidiError(name, f"ticks-per-quarter is {score.ticks_per_quarter}: no time")
        return score

    def _load(self, source) -> tuple[Score, str]:
        if isinstance(source, Score):
            return source, "<score>"
        if isinstance(source, bytes | bytearray | memoryview):
            return self._parse("<bytes>", bytes(source)), "<bytes>"
        name = os.fspath(source)
        try:
            size = os.stat(name).st_size
        except OSError as exc:
            raise MidiError(name, f"cannot read: {exc.strerror or exc}") from exc
        if size > self.config.max_file_bytes:
            raise MidiError(
                name,
                f"{size} bytes, over the {self.config.max_file_bytes} byte limit "
                "(TokenizerConfig.max_file_bytes)",
            )
        try:
            # the fast path: symusic reads the file itself (ScoreTick skips Score()'s
            # second stat and path conversion)
            return ScoreTick.from_file(name), name
        except Exception:  # the checks below give the reason
            pass
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise MidiError(name, f"cannot read: {exc.strerror or exc}") from exc
        return self._parse(name, data), name

    def _parse(self, name: str, data: bytes) -> Score:
        """Bytes -> Score, or MidiError with the reason (symusic's when it has no better)."""
        if len(data) > self.config.max_file_bytes:
            raise MidiError(name, f"{len(data)} bytes, over the byte limit")
        if len(data) < 14:
            raise MidiError(name, f"{len(data)} bytes is too short for a MIDI header")
        if data[:4] != b"MThd":
            kind = "a RIFF (RMID) wrapper" if data[:4] == b"RIFF" else "not a Standard MIDI File"
            raise MidiError(name, f"{kind}: no MThd header")
        if data[12] & 0x80:
            raise MidiError(name, "SMPTE time division (frames per second) is not supported")
        try:
            return Score.from_midi(data)
        except Exception as exc:  # symusic raises RuntimeError/ValueError with its reason
            raise MidiError(name, f"unreadable MIDI ({_one_line(exc)})") from exc

    # -- decoding ----------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | np.ndarray) -> Score:
        """Ids -> symusic.Score (ticks, tpq = config.decode_tpq); total on in-range ids.

        One track per instrument in use (drums: `is_drum`, channel 10), a tempo map from
        the TEMPO tokens (120 BPM before the first), sustain as CC64 controls (127/0).
        Ids outside [0, 774) raise ValueError naming the value.
        """
        ids = self._check_ids(ids)
        default_bin = min(self.config.default_velocity // 4, NUM_VELOCITIES - 1)
        (
            n_inst,
            n_pitch,
            n_on,
            n_off,
            n_vel,
            s_inst,
            s_step,
            s_on,
            t_step,
            t_bin,
            end_step,
            skipped,
        ) = decode_ids(ids, default_bin)
        self.last_decode_stats = DecodeStats(
            notes=int(n_inst.size),
            skipped_special=int(skipped[SKIP_SPECIAL]),
            orphan_note_off=int(skipped[SKIP_ORPHAN_OFF]),
            replaced_note_on=int(skipped[SKIP_REPLACED_ON]),
            after_end=int(skipped[SKIP_AFTER_END]),
        )

        mspq = np.rint(60e6 / np.array([tempo_bpm(b) for b in range(NUM_TEMPOS)])).astype(np.int64)
        if t_step.size == 0 or t_step[0] != 0:
            t_step = np.concatenate([[0], t_step]).astype(np.int64)
            tempo_mspq = np.concatenate([[500000], mspq[t_bin]]).astype(np.int64)
        else:
            tempo_mspq = mspq[t_bin]
        last_step = max(int(end_step), int(n_off.max()) if n_off.size else 0)
        tpq = self._decode_tpq(last_step, int(tempo_mspq.min()))
        to_ticks = _StepTicks(t_step, tempo_mspq, tpq)

        score = Score(tpq)
        score.tempos = Tempo.from_numpy(
            to_ticks(t_step).astype(np.int32), tempo_mspq.astype(np.int32)
        )
        for i in range(NUM_INSTRUMENTS):
            notes = np.flatnonzero(n_inst == i)
            pedal = np.flatnonzero(s_inst == i)
            if notes.size == 0 and pedal.size == 0:
                continue
            drums = i == DRUM_INSTRUMENT
            track = Track(FAMILY_NAMES[i], 0 if drums else i * 8, drums)
            if notes.size:
                notes = notes[np.lexsort((n_pitch[notes], n_on[notes]))]
                on = to_ticks(n_on[notes])
                off = to_ticks(n_off[notes])
                track.notes = Note.from_numpy(
                    on.astype(np.int32),
                    np.maximum(off - on, 1).astype(np.int32),
                    (n_pitch[notes].astype(np.int16) + PITCH_MIN).astype(np.int8),
                    (4 * n_vel[notes].astype(np.int16) + 2).astype(np.int8),
                )
            if pedal.size:
                track.controls = ControlChange.from_numpy(
                    to_ticks(s_step[pedal]).astype(np.int32),
                    np.full(pedal.size, SUSTAIN_CONTROL, dtype=np.uint8),
                    np.where(s_on[pedal] == 1, 127, 0).astype(np.uint8),
                )
            score.tracks.append(track)
        return score

    def decode_to_file(self, ids: Sequence[int] | np.ndarray, path: str | os.PathLike) -> Path:
        """Decode and write a Standard MIDI File at `path` (drums on channel 10)."""
        path = Path(path)
        self.decode(ids).dump_midi(str(path))
        return path

    def tokens(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """Readable tokens: ['START', 'TEMPO(118.7bpm)', 'INSTRUMENT(0)', 'NOTE_ON(60)', ...]."""
        ids = self._check_ids(ids)
        return [self.vocab.describe(int(t)) for t in ids]

    def _check_ids(self, ids) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"ids must be one-dimensional, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        bad = np.flatnonzero((arr < 0) | (arr >= self.vocab.size))
        if bad.size:
            raise ValueError(
                f"token id {int(arr[bad[0]])} at position {int(bad[0])} is outside the "
                f"vocabulary [0, {self.vocab.size})"
            )
        return arr

    def _decode_tpq(self, last_step: int, min_mspq: int) -> int:
        # keep every tick within int32: lower the resolution for absurdly long outputs
        ticks_per_step = STEP_SECONDS * 1e6 / min_mspq
        limit = (2**31 - 1) / max(1.0, (last_step + 1) * ticks_per_step)
        return max(1, min(self.config.decode_tpq, int(limit)))


class _StepTicks:
    """Grid steps -> ticks under a tempo map whose changes sit on steps.

    Each tempo change is placed on the tick nearest its exact time as measured by the
    ticks before it, so rounding never accumulates across changes: every returned
    tick is within half a tick of step x 15.625 ms.
    """

    def __init__(self, steps: np.ndarray, mspq: np.ndarray, tpq: int):
        self.steps = steps.astype(np.int64)
        self.sec_per_tick = mspq.astype(np.float64) / (1e6 * tpq)
        self.tick0, self.sec0 = tempo_ticks(self.steps, self.sec_per_tick)

    def __call__(self, steps: np.ndarray) -> np.ndarray:
        seg = np.maximum(np.searchsorted(self.steps, steps, side="right") - 1, 0)
        rel = (steps * STEP_SECONDS - self.sec0[seg]) / self.sec_per_tick[seg]
        return self.tick0[seg] + np.rint(rel).astype(np.int64)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
