"""The token grammar that generated music must follow, as a checker and as a logits mask.

Rules (names as `validate` reports them):

- `start`: the first token is START.
- `special`: no PAD, UNK or START after the first position (before END).
- `after_end`: nothing but PAD (batch padding) after END.
- `instrument_first`: NOTE_ON, NOTE_OFF and SUSTAIN act on the current instrument, so
  an INSTRUMENT comes before the first of them.
- `velocity_first`: a VELOCITY comes before the first NOTE_ON. The codec keeps one
  velocity state across instruments (a VELOCITY is emitted only when it changes), so
  one VELOCITY before the first NOTE_ON of the piece is what the encoder produces.
- `orphan_note_off`: a NOTE_OFF only for a pitch sounding in the current instrument.
- `note_too_long`: no TIME_SHIFT takes a sounding note past `max_note_steps` steps of
  15.625 ms (default 512 = 8 s); once a note is that old, only tokens that do not
  advance time are allowed until it is released (NOTE_OFF, after an INSTRUMENT switch
  if it belongs to another instrument).
- `empty_end`: END closes a piece with at least one NOTE_ON.

END does not require closing the notes still sounding: the decoder closes them at END
(see the tokenizer's decoding rules), and none of them can be longer than the limit,
because time cannot advance past it. A sequence without END is valid (generation may
stop at its token budget). The order of events at one instant (TEMPO, NOTE_OFFs,
SUSTAIN, NOTE_ONs in encoded data) is not a rule: the decoder reads any order.

`validate(ids)` reports every position that breaks a rule. `Grammar` is the same set of
rules as device-side state (`[B]` and `[B, 16, 88]` tensors) for constrained sampling:
`allowed(state)` -> `[B, V]` bool, `advance(state, tokens)`; no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from stretto.tokenizer.vocabulary import Vocabulary

DEFAULT_MAX_NOTE_STEPS = 512  # 8 s of 15.625 ms steps
RULES = (
    "start",
    "special",
    "after_end",
    "instrument_first",
    "velocity_first",
    "orphan_note_off",
    "note_too_long",
    "empty_end",
)


class Violation(NamedTuple):
    """One broken rule: the token's position, the rule's name, the token and a sentence."""

    position: int
    rule: str
    token: int
    message: str


def validate(
    ids, *, max_note_steps: int = DEFAULT_MAX_NOTE_STEPS, vocab: Vocabulary | None = None
) -> list[Violation]:
    """Every rule `ids` (a 1-D sequence of in-range ids) breaks, in position order.

    At most one violation per position (the first rule in `RULES` order that fails).
    An empty list means the sequence is valid. Out-of-range ids raise ValueError.
    """
    v = vocab or Vocabulary()
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"validate takes one sequence [N], got shape {list(ids.shape)}")
        ids = ids.tolist()
    ids = [int(t) for t in ids]
    for t in ids:
        if not 0 <= t < v.size:
            raise ValueError(f"token id {t} is outside the vocabulary [0, {v.size})")
    _check_steps(max_note_steps)
    note_on0, note_off0 = v.NOTE_ON.start, v.NOTE_OFF.start
    out: list[Violation] = []
    inst = -1
    has_vel = has_note = ended = False
    onset: dict[tuple[int, int], int] = {}  # (instrument, pitch) -> onset step
    now = 0

    def bad(pos: int, rule: str, message: str) -> None:
        if not out or out[-1].position != pos:  # one violation per position
            out.append(Violation(pos, rule, ids[pos], message))

    for pos, t in enumerate(ids):
        family = v.family(t)
        if ended:
            if t != v.PAD:
                bad(pos, "after_end", f"{v.describe(t)} after END")
            continue
        if pos == 0:
            if t == v.START:
                continue
            bad(pos, "start", f"the sequence starts with {v.describe(t)}, not START")
        if t in (v.START, v.PAD, v.UNK):
            bad(pos, "special", f"{v.describe(t)} inside the piece")
        elif family in ("NOTE_ON", "NOTE_OFF", "SUSTAIN_ON", "SUSTAIN_OFF") and inst < 0:
            bad(pos, "instrument_first", f"{v.describe(t)} before any INSTRUMENT")
        elif family == "NOTE_ON":
            if not has_vel:
                bad(pos, "velocity_first", f"{v.describe(t)} before any VELOCITY")
            onset[(inst, t - note_on0)] = now
            has_note = True
        elif family == "NOTE_OFF":
            if onset.pop((inst, t - note_off0), None) is None:
                bad(pos, "orphan_note_off", f"{v.describe(t)}: pitch not sounding in {inst}")
        elif family == "TIME_SHIFT":
            now += t - v.TIME_SHIFT.start + 1
            oldest = min(onset.values(), default=now)
            if now - oldest > max_note_steps:
                bad(
                    pos,
                    "note_too_long",
                    f"{v.describe(t)} keeps a note sounding {now - oldest} steps "
                    f"(> max_note_steps={max_note_steps})",
                )
        elif family == "VELOCITY":
            has_vel = True
        elif family == "INSTRUMENT":
            inst = t - v.INSTRUMENT.start
        elif t == v.END:
            ended = True
            if not has_note:
                bad(pos, "empty_end", "END before any NOTE_ON")
    return out


def _check_steps(max_note_steps: int) -> None:
    if not isinstance(max_note_steps, int) or isinstance(max_note_steps, bool):
        raise ValueError(f"max_note_steps must be an int >= 1, got {max_note_steps!r}")
    if max_note_steps < 1:
        raise ValueError(f"max_note_steps must be >= 1, got {max_note_steps}")


@dataclass
class GrammarState:
    """Per-sequence grammar state on the device; `B` sequences."""

    inst: torch.Tensor  # [B] long, -1 before the first INSTRUMENT
    has_vel: torch.Tensor  # [B] bool
    has_note: torch.Tensor  # [B] bool
    ended: torch.Tensor  # [B] bool
    age: torch.Tensor  # [B, 16, 88] long: steps since onset, -1 = not sounding


class Grammar:
    """The rules of `validate` as a logits mask over `[B, V]` (see the module docstring)."""

    def __init__(
        self, vocab: Vocabulary | None = None, *, max_note_steps: int = DEFAULT_MAX_NOTE_STEPS
    ):
        _check_steps(max_note_steps)
        self.vocab = v = vocab or Vocabulary()
        self.max_note_steps = max_note_steps
        self.n_inst, self.n_pitch = len(v.INSTRUMENT), len(v.NOTE_ON)
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _table(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._tables:
            v = self.vocab
            ids = torch.arange(v.size, device=device)

            def fam(r: range) -> torch.Tensor:
                return (ids >= r.start) & (ids < r.stop)

            shift_steps = torch.where(fam(v.TIME_SHIFT), ids - v.TIME_SHIFT.start + 1, 0)
            base = torch.ones(v.size, dtype=torch.bool, device=device)
            base[[v.START, v.PAD, v.UNK]] = False
            self._tables[device] = {
                "base": base,
                "note_on": fam(v.NOTE_ON),
                "note_off": fam(v.NOTE_OFF),
                "shift": fam(v.TIME_SHIFT),
                "shift_steps": shift_steps,  # [V] steps each id advances (0 = none)
                "sustain": (ids == v.SUSTAIN_ON) | (ids == v.SUSTAIN_OFF),
                "end": ids == v.END,
                "pad": ids == v.PAD,
            }
        return self._tables[device]

    def initial_state(self, batch: int, device) -> GrammarState:
        device = torch.device(device)
        return GrammarState(
            inst=torch.full((batch,), -1, dtype=torch.long, device=device),
            has_vel=torch.zeros(batch, dtype=torch.bool, device=device),
            has_note=torch.zeros(batch, dtype=torch.bool, device=device),
            ended=torch.zeros(batch, dtype=torch.bool, device=device),
            age=torch.full((batch, self.n_inst, self.n_pitch), -1, dtype=torch.long, device=device),
        )

    @staticmethod
    def to(state: GrammarState, device) -> GrammarState:
        """The same state on `device`."""
        return GrammarState(**{k: getattr(state, k).to(device) for k in state.__dataclass_fields__})

    def allowed(self, state: GrammarState) -> torch.Tensor:
        """`[B, V]` bool: the tokens that may come next. Never empty (TEMPO, VELOCITY and
        INSTRUMENT are always allowed before END; only PAD after it)."""
        tb = self._table(state.inst.device)
        b = state.inst.shape[0]
        has_inst = state.inst >= 0  # [B]
        rows = torch.arange(b, device=state.inst.device)
        sounding = state.age[rows, state.inst.clamp(min=0)] >= 0  # [B, 88]
        oldest = state.age.flatten(1).amax(1)  # [B]; -1 when nothing sounds
        # Steps time may still advance; unbounded (the longest shift) when nothing sounds.
        room = torch.where(oldest >= 0, self.max_note_steps - oldest, len(self.vocab.TIME_SHIFT))
        ok = tb["base"].expand(b, -1).clone()  # [B, V]
        ok &= ~tb["note_on"] | (has_inst & state.has_vel)[:, None]
        ok &= ~tb["sustain"] | has_inst[:, None]
        ok &= ~tb["end"] | state.has_note[:, None]
        ok &= ~tb["shift"] | (tb["shift_steps"][None, :] <= room[:, None])
        off = ok[:, self.vocab.NOTE_OFF.start : self.vocab.NOTE_OFF.stop]
        ok[:, self.vocab.NOTE_OFF.start : self.vocab.NOTE_OFF.stop] = (
            off & sounding & has_inst[:, None]
        )
        return torch.where(state.ended[:, None], tb["pad"][None, :], ok)

    def advance(self, state: GrammarState, tokens: torch.Tensor) -> None:
        """Update `state` in place with the next token of every sequence (`[B]` long)."""
        v = self.vocab
        t = tokens
        live = ~state.ended
        is_inst = live & (t >= v.INSTRUMENT.start) & (t < v.INSTRUMENT.stop)
        state.inst = torch.where(is_inst, t - v.INSTRUMENT.start, state.inst)
        state.has_vel |= live & (t >= v.VELOCITY.start) & (t < v.VELOCITY.stop)
        is_on = live & (t >= v.NOTE_ON.start) & (t < v.NOTE_ON.stop)
        is_off = live & (t >= v.NOTE_OFF.start) & (t < v.NOTE_OFF.stop)
        state.has_note |= is_on
        steps = torch.where(
            live & (t >= v.TIME_SHIFT.start) & (t < v.TIME_SHIFT.stop),
            t - v.TIME_SHIFT.start + 1,
            0,
        )  # [B]
        age = state.age
        age = torch.where(age >= 0, age + steps[:, None, None], age)
        pitch = torch.where(is_on, t - v.NOTE_ON.start, t - v.NOTE_OFF.start).clamp(
            0, self.n_pitch - 1
        )
        cell = (state.inst.clamp(min=0) * self.n_pitch + pitch)[:, None]  # [B, 1]
        flat = age.flatten(1)  # [B, 16*88]
        current = flat.gather(1, cell)[:, 0]
        new = torch.where(is_on, 0, torch.where(is_off, -1, current))
        state.age = flat.scatter(1, cell, new[:, None]).view_as(age)
        state.ended |= live & (t == v.END)
