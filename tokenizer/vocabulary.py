"""The fixed 774-id event vocabulary (SPEC, "The vocabulary") and the rules of its grammar.

One `Vocabulary` object is the single source of truth: the model takes its size from
it, and checkpoints and corpora store its `signature`, a hash of the layout below.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

# Physical meaning of the bins; shared with the numba encoder/decoder.
PITCH_MIN, PITCH_MAX = 21, 108
NUM_PITCHES = PITCH_MAX - PITCH_MIN + 1  # 88
NUM_TIME_SHIFTS = 512
STEP_SECONDS = 0.015625  # one TIME_SHIFT step: 15.625 ms (1/64 s)
STEPS_PER_SECOND = round(1 / STEP_SECONDS)  # 64
NUM_VELOCITIES = 32
NUM_TEMPOS = 32
TEMPO_MIN_BPM, TEMPO_MAX_BPM = 60.0, 200.0
NUM_INSTRUMENTS = 16
DRUM_INSTRUMENT = 15

# (family, size) in id order.
_LAYOUT: tuple[tuple[str, int], ...] = (
    ("SPECIAL", 4),
    ("NOTE_ON", NUM_PITCHES),
    ("NOTE_OFF", NUM_PITCHES),
    ("TIME_SHIFT", NUM_TIME_SHIFTS),
    ("VELOCITY", NUM_VELOCITIES),
    ("SUSTAIN", 2),
    ("TEMPO", NUM_TEMPOS),
    ("INSTRUMENT", NUM_INSTRUMENTS),
)
_SPECIALS = ("START", "END", "PAD", "UNK")

# -- the grammar of a piece -------------------------------------------------------------
# The rules a piece's ids follow, in the order they are checked (at most one is reported
# per position: the first that fails). Each rule binds some ids (`Vocabulary.
# grammar_bindings`) under a condition on the state the ids before it leave:
#   start             every id but START, at the first position
#   special           START, PAD, UNK, inside the piece (after the first id, before END)
#   after_end         every id but PAD, after END
#   instrument_first  NOTE_ON, NOTE_OFF, SUSTAIN_*, before the first INSTRUMENT
#   velocity_first    NOTE_ON, before the first VELOCITY
#   orphan_note_off   NOTE_OFF, when its pitch is not sounding in the current instrument
# Two forms check them: `stretto.tokenizer.validate` (numba, over whole sequences, on the
# tokenizer's token-state machine) and `stretto.engine.Grammar` (torch, a logits mask
# for sampling); tests hold the two to the same answer on every next id. Real music may
# hold a note for any length (pads, organ), so a note's length is no rule of the data:
# the limit `DEFAULT_MAX_NOTE_STEPS` is a generation-time sampling policy
# (`stretto.engine.Grammar`, checked on generated ids by `longest_note`). Likewise a
# window of real music may end (END) with no NOTE_ON in it (a tail of pedal and
# silence); that a generated piece holds a note before its END is generation's policy.
GRAMMAR_RULES: tuple[str, ...] = (
    "start",
    "special",
    "after_end",
    "instrument_first",
    "velocity_first",
    "orphan_note_off",
)
DEFAULT_MAX_NOTE_STEPS = 512  # 8 s of 15.625 ms steps: the longest note generation makes


def _family_ranges() -> dict[str, range]:
    ranges, start = {}, 0
    for name, size in _LAYOUT:
        ranges[name] = range(start, start + size)
        start += size
    return ranges


@dataclass(frozen=True)
class Vocabulary:
    """The event vocabulary: 774 ids in a fixed order.

    >>> vocab = Vocabulary()
    >>> vocab.size, vocab.note_on(60), vocab.describe(vocab.time_shift(8))
    (774, 43, 'TIME_SHIFT(125.0ms)')
    """

    START: int = 0
    END: int = 1
    PAD: int = 2
    UNK: int = 3
    SUSTAIN_ON: int = 724
    SUSTAIN_OFF: int = 725
    families: dict[str, range] = field(default_factory=_family_ranges, repr=False, compare=False)

    def __post_init__(self) -> None:
        ranges = self.families
        if tuple(ranges["SUSTAIN"]) != (self.SUSTAIN_ON, self.SUSTAIN_OFF):
            raise ValueError("Vocabulary layout and SUSTAIN ids disagree")
        if ranges["INSTRUMENT"].stop != 774:
            raise ValueError(f"Vocabulary has {ranges['INSTRUMENT'].stop} ids, expected 774")

    # -- sizes and ranges ----------------------------------------------------------
    @property
    def size(self) -> int:
        return self.families["INSTRUMENT"].stop

    def __len__(self) -> int:
        return self.size

    @property
    def NOTE_ON(self) -> range:  # noqa: N802 (family names read as the SPEC writes them)
        return self.families["NOTE_ON"]

    @property
    def NOTE_OFF(self) -> range:  # noqa: N802
        return self.families["NOTE_OFF"]

    @property
    def TIME_SHIFT(self) -> range:  # noqa: N802
        return self.families["TIME_SHIFT"]

    @property
    def VELOCITY(self) -> range:  # noqa: N802
        return self.families["VELOCITY"]

    @property
    def TEMPO(self) -> range:  # noqa: N802
        return self.families["TEMPO"]

    @property
    def INSTRUMENT(self) -> range:  # noqa: N802
        return self.families["INSTRUMENT"]

    @property
    def signature(self) -> str:
        """A stable hash of the layout (families, sizes, bin meanings)."""
        layout = {
            "families": [[name, r.start, r.stop] for name, r in self.families.items()],
            "specials": list(_SPECIALS),
            "pitches": [PITCH_MIN, PITCH_MAX],
            "step_seconds": STEP_SECONDS,
            "velocity": "b = v // 4, decodes to 4b + 2",
            "tempo_bpm": [TEMPO_MIN_BPM, TEMPO_MAX_BPM, NUM_TEMPOS],
            "instrument": "GM family program // 8 (120-127 -> 14), 15 = drums",
        }
        text = json.dumps(layout, sort_keys=True, separators=(",", ":"))
        return "stretto-vocab-v1-" + hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- building ids ----------------------------------------------------------------
    def note_on(self, pitch: int) -> int:
        return self.NOTE_ON.start + self._pitch_index(pitch)

    def note_off(self, pitch: int) -> int:
        return self.NOTE_OFF.start + self._pitch_index(pitch)

    def time_shift(self, steps: int) -> int:
        """The id that advances time by `steps` x 15.625 ms (1..512)."""
        if not 1 <= steps <= NUM_TIME_SHIFTS:
            raise ValueError(f"time shift of {steps} steps is outside 1..{NUM_TIME_SHIFTS}")
        return self.TIME_SHIFT.start + steps - 1

    def velocity(self, velocity: int) -> int:
        """The VELOCITY id for a MIDI velocity 1..127 (bin v // 4)."""
        if not 1 <= velocity <= 127:
            raise ValueError(f"MIDI velocity {velocity} is outside 1..127")
        return self.VELOCITY.start + velocity // 4

    def tempo(self, bpm: float) -> int:
        """The TEMPO id nearest `bpm` (clamped to 60..200 BPM)."""
        return self.TEMPO.start + tempo_bin(bpm)

    def instrument(self, index: int) -> int:
        if not 0 <= index < NUM_INSTRUMENTS:
            raise ValueError(f"instrument index {index} is outside 0..{NUM_INSTRUMENTS - 1}")
        return self.INSTRUMENT.start + index

    def _pitch_index(self, pitch: int) -> int:
        if not PITCH_MIN <= pitch <= PITCH_MAX:
            raise ValueError(f"pitch {pitch} is outside {PITCH_MIN}..{PITCH_MAX}")
        return pitch - PITCH_MIN

    # -- reading ids -------------------------------------------------------------------
    def family(self, token: int) -> str:
        """The family name of an id ('START', 'NOTE_ON', 'TIME_SHIFT', ...)."""
        self.check(token)
        if token < 4:
            return _SPECIALS[token]
        if token in self.families["SUSTAIN"]:
            return "SUSTAIN_ON" if token == self.SUSTAIN_ON else "SUSTAIN_OFF"
        for name, r in self.families.items():
            if token in r:
                return name
        raise AssertionError("unreachable: every id is in a family")

    def value(self, token: int) -> int:
        """The id's index inside its family (pitch for notes, bin otherwise)."""
        name = self.family(token)
        if name in ("NOTE_ON", "NOTE_OFF"):
            return token - self.families[name].start + PITCH_MIN
        if name in self.families:
            return token - self.families[name].start
        return 0

    def describe(self, token: int) -> str:
        """A readable token: `NOTE_ON(60)`, `TIME_SHIFT(125.0ms)`, `VELOCITY(66)`..."""
        name = self.family(token)
        b = self.value(token)
        if name in ("NOTE_ON", "NOTE_OFF"):
            return f"{name}({b})"
        if name == "TIME_SHIFT":
            return f"TIME_SHIFT({(b + 1) * STEP_SECONDS * 1000}ms)"
        if name == "VELOCITY":
            return f"VELOCITY({4 * b + 2})"
        if name == "TEMPO":
            return f"TEMPO({tempo_bpm(b):.1f}bpm)"
        if name == "INSTRUMENT":
            return "INSTRUMENT(drums)" if b == DRUM_INSTRUMENT else f"INSTRUMENT({b})"
        return name

    def grammar_bindings(self) -> tuple[int, ...]:
        """Per id, the rules that bind it: bit r is set when `GRAMMAR_RULES[r]` does."""
        bit = {name: 1 << r for r, name in enumerate(GRAMMAR_RULES)}
        binds = [bit["start"] | bit["after_end"]] * self.size
        for t in (self.START, self.PAD, self.UNK):
            binds[t] |= bit["special"]
        binds[self.START] &= ~bit["start"]
        binds[self.PAD] &= ~bit["after_end"]
        for t in self.NOTE_ON:
            binds[t] |= bit["instrument_first"] | bit["velocity_first"]
        for t in self.NOTE_OFF:
            binds[t] |= bit["instrument_first"] | bit["orphan_note_off"]
        for t in (self.SUSTAIN_ON, self.SUSTAIN_OFF):
            binds[t] |= bit["instrument_first"]
        return tuple(binds)

    def check(self, token: int) -> int:
        """`token` as an int, or ValueError naming it when it is outside [0, size)."""
        t = int(token)
        if not 0 <= t < self.size:
            raise ValueError(f"token id {t} is outside the vocabulary [0, {self.size})")
        return t


def tempo_bin(bpm: float) -> int:
    """Nearest of 32 bins spread linearly over 60..200 BPM (clamped)."""
    step = (TEMPO_MAX_BPM - TEMPO_MIN_BPM) / (NUM_TEMPOS - 1)
    b = round((float(bpm) - TEMPO_MIN_BPM) / step)
    return min(max(b, 0), NUM_TEMPOS - 1)


def tempo_bpm(b: int) -> float:
    """The BPM a TEMPO bin decodes to."""
    return TEMPO_MIN_BPM + b * (TEMPO_MAX_BPM - TEMPO_MIN_BPM) / (NUM_TEMPOS - 1)


def check_steps(name: str, steps: int) -> int:
    """`steps`, a length in grid steps named `name` (such as `max_note_steps`, the
    longest a note may sound), or ValueError naming it."""
    if not isinstance(steps, int) or isinstance(steps, bool):
        raise ValueError(f"{name} must be an int >= 1, got {steps!r}")
    if steps < 1:
        raise ValueError(f"{name} must be >= 1, got {steps}")
    return steps
