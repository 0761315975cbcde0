"""The token grammar as a logits mask for constrained sampling: `Grammar`.

The rules are the tokenizer's (`stretto.tokenizer.vocabulary.GRAMMAR_RULES`, with the
ids each binds in `Vocabulary.grammar_bindings`); `stretto.tokenizer.validate` checks
whole sequences against them on the tokenizer's token-state machine. `Grammar` is the
same rules as device-side state (`[B]` and `[B, 16, 88]` tensors): `allowed(state)` ->
`[B, V]` bool, `broken_rule(state, tokens)` -> `[B]` rule index, `advance(state,
tokens)`; no host synchronisation. It reads ids as the decoder does: NOTE_ON, NOTE_OFF
and SUSTAIN act on the current instrument (instrument 0 before any), a NOTE_ON on a
sounding pitch starts it again, END ends the piece. Tests hold it to `validate`: a token
is allowed exactly when appending it keeps `validate` clean, and a token that is not
breaks the rule `validate` names.

Generation adds sampling policies on top of the rules (`sampling_logits`):

- A piece holds a note: END is forbidden until a NOTE_ON was sampled (data may end a
  window without one; a generated piece that does is empty).

- The note limit (`max_note_steps`): data may hold notes of any length, generation
  holds none longer. `at_limit="freeze"` forbids every TIME_SHIFT that would take the
  oldest sounding note past the limit (at the limit time stops until it is released);
  `at_limit="release"` forbids the same shifts and, once the oldest note has reached
  the limit, forces its release: only its NOTE_OFF when it sounds on the current
  instrument, else only the INSTRUMENT token of its instrument (the NOTE_OFF follows).
  Either way no generated note is longer than the limit; under "release" time never
  stops (`stretto.tokenizer.grammar.longest_note` checks generated ids).
- The silence limit (`max_silence_steps`): while no note sounds, a TIME_SHIFT that
  would make the silence (since the last note ended, or since the start) longer than
  the limit is forbidden, so a piece neither opens with nor holds a longer silence
  (`stretto.tokenizer.grammar.longest_silence` checks generated ids); the next token
  starts a note, or changes instrument, velocity or tempo first.
- The NOTE_OFF family (`note_off`): the grammar forbids a NOTE_OFF of a silent pitch.
  `"mask"` removes those ids and renormalizes over every allowed id. `"spread"` keeps
  the family's probability and gives it to the sounding pitches: with `z` the logits,
  `A` the ids the rules and the limit allow, `F` the NOTE_OFF ids that only
  `orphan_note_off` forbids or that are allowed, and `S = F & A` the NOTE_OFFs of
  pitches sounding on the current instrument, the family's probability is
  `P(F) = sum_F exp(z) / sum_(A | F) exp(z)`; the transform adds
  `logsumexp(z[F]) - logsumexp(z[S])` to `z[S]`, so that after it each id of `A` outside
  `S` keeps `exp(z_t) / sum_(A | F) exp(z)` and `S` shares `P(F)` in proportion to
  `exp(z)`. With `S` empty the family gets nothing (the plain mask).
- A NOTE_ON of a sounding pitch (`note_on`): the rules allow it (the note is struck
  again: the sounding one ends there), but encoded data never holds one, since the
  tokenizer ends a note with its NOTE_OFF before the next note of its pitch starts.
  `"restrike"` samples it as the model scores it. `"off-first"` gives its probability
  to that pitch's NOTE_OFF, after the NOTE_OFF family's policy: the note is released
  as the data would release it, and the model then decides whether to strike it again.

END does not require closing the notes still sounding: the decoder closes them at END.
A sequence without END is valid (generation may stop at its token budget). The order of
events at one instant (TEMPO, NOTE_OFFs, SUSTAIN, NOTE_ONs in encoded data) is not a
rule: the decoder reads any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stretto.tokenizer.vocabulary import (
    DEFAULT_MAX_NOTE_STEPS,
    GRAMMAR_RULES,
    Vocabulary,
    check_steps,
)

__all__ = [
    "AT_LIMIT_POLICIES",
    "DEFAULT_MAX_NOTE_STEPS",
    "DEFAULT_MAX_SILENCE_STEPS",
    "GRAMMAR_RULES",
    "NOTE_OFF_POLICIES",
    "NOTE_ON_POLICIES",
    "Grammar",
    "GrammarState",
    "check_policies",
]

NOTE_OFF_POLICIES = ("spread", "mask")
_ORPHAN = GRAMMAR_RULES.index("orphan_note_off")
AT_LIMIT_POLICIES = ("release", "freeze")
NOTE_ON_POLICIES = ("restrike", "off-first")
# The longest silence generation makes: 2 s of 15.625 ms steps. Of the 126 training
# files of the dev corpus's split (quality suite, seed 0), 102 never fall silent for
# longer (per-file longest silence: median 0.72 s, 75th percentile 1.73 s).
DEFAULT_MAX_SILENCE_STEPS = 128
_TABLES: dict[tuple[str, torch.device], dict[str, torch.Tensor]] = {}


def check_policies(note_off: str, at_limit: str, note_on: str) -> None:
    """ValueError naming the parameter when a sampling policy is not one of its choices."""
    for name, value, choices in (
        ("note_off", note_off, NOTE_OFF_POLICIES),
        ("at_limit", at_limit, AT_LIMIT_POLICIES),
        ("note_on", note_on, NOTE_ON_POLICIES),
    ):
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass
class GrammarState:
    """Per-sequence grammar state on the device; `B` sequences."""

    started: torch.Tensor  # [B] bool: the first token was read
    inst: torch.Tensor  # [B] long, -1 before the first INSTRUMENT
    has_vel: torch.Tensor  # [B] bool
    has_note: torch.Tensor  # [B] bool
    ended: torch.Tensor  # [B] bool
    age: torch.Tensor  # [B, 16, 88] long: steps since onset, -1 = not sounding
    quiet: torch.Tensor  # [B] long: steps with no note sounding since one last did

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor of the state (`Grammar.advance` writes them in place)."""
        return tuple(getattr(self, name) for name in self.__dataclass_fields__)


class Grammar:
    """The grammar's rules as a logits mask over `[B, V]`, and the generation policies
    (`max_note_steps`, the longest note generation makes; `max_silence_steps`, the
    longest silence) on top (see the module docstring)."""

    def __init__(
        self,
        vocab: Vocabulary | None = None,
        *,
        max_note_steps: int = DEFAULT_MAX_NOTE_STEPS,
        max_silence_steps: int = DEFAULT_MAX_SILENCE_STEPS,
    ):
        self.max_note_steps = check_steps("max_note_steps", max_note_steps)
        self.max_silence_steps = check_steps("max_silence_steps", max_silence_steps)
        self.vocab = v = vocab or Vocabulary()
        if v.NOTE_ON.stop != v.NOTE_OFF.start:  # `_off_first` slices the two side by side
            raise ValueError("the vocabulary's NOTE_OFF ids must follow its NOTE_ON ids")
        self.n_inst, self.n_pitch = len(v.INSTRUMENT), len(v.NOTE_ON)
        self._signature = v.signature  # the tables' key (a hash: not read while tracing)

    def tables(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The constant per-id tables the masks read, built once per vocabulary and
        device and shared by every `Grammar` (a compiled step holds them as static)."""
        device = torch.device(device)
        key = (self._signature, device)
        if key not in _TABLES:
            v = self.vocab
            ids = torch.arange(v.size, device=device)
            bits = torch.tensor(v.grammar_bindings(), device=device)
            rules = torch.arange(len(GRAMMAR_RULES), device=device)
            shift = (ids >= v.TIME_SHIFT.start) & (ids < v.TIME_SHIFT.stop)
            _TABLES[key] = {
                "ids": ids,
                "binds": ((bits[None, :] >> rules[:, None]) & 1).bool(),  # [R, V]
                "shift_steps": torch.where(shift, ids - v.TIME_SHIFT.start + 1, 0),  # [V]
                "note_off": (ids >= v.NOTE_OFF.start) & (ids < v.NOTE_OFF.stop),  # [V]
                # [V] the pitch index a NOTE_OFF releases (0 for other ids)
                "off_pitch": (ids - v.NOTE_OFF.start).clamp(0, self.n_pitch - 1),
            }
        return _TABLES[key]

    def initial_state(self, batch: int, device: torch.device | str) -> GrammarState:
        device = torch.device(device)

        def flags() -> torch.Tensor:
            return torch.zeros(batch, dtype=torch.bool, device=device)

        return GrammarState(
            started=flags(),
            inst=torch.full((batch,), -1, dtype=torch.long, device=device),
            has_vel=flags(),
            has_note=flags(),
            ended=flags(),
            age=torch.full((batch, self.n_inst, self.n_pitch), -1, dtype=torch.long, device=device),
            quiet=torch.zeros(batch, dtype=torch.long, device=device),
        )

    @staticmethod
    def to(state: GrammarState, device: torch.device | str) -> GrammarState:
        """The same state on `device`."""
        return GrammarState(**{k: getattr(state, k).to(device) for k in state.__dataclass_fields__})

    @staticmethod
    def _when(state: GrammarState) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The rules' conditions after `state`: `[B, 1]` bool per rule but
        orphan_note_off (the rule breaks for the ids it binds where its condition holds),
        and `[B, 88]` bool, the pitches silent on the current instrument inside the piece
        (orphan_note_off's, per pitch)."""
        live = (state.started & ~state.ended)[:, None]  # [B, 1]: inside the piece
        when = {
            "start": ~state.started[:, None],
            "special": live,
            "after_end": state.ended[:, None],
            "instrument_first": live & (state.inst < 0)[:, None],
            "velocity_first": live & ~state.has_vel[:, None],
        }
        rows = torch.arange(state.inst.shape[0], device=state.inst.device)
        silent = live & (state.age[rows, state.inst.clamp(min=0)] < 0)  # [B, 88]
        return when, silent

    def _broken(self, state: GrammarState, cols: torch.Tensor) -> torch.Tensor:
        """`[R, B, C]` bool: rule r is broken by the token `cols[b, c]` (`[B, C]` long)
        after `state`; the rules' conditions, in `GRAMMAR_RULES` order."""
        tb = self.tables(state.inst.device)
        when, silent = self._when(state)
        when["orphan_note_off"] = silent.gather(1, tb["off_pitch"][cols])
        broken = torch.stack([when[rule].expand_as(cols) for rule in GRAMMAR_RULES])
        return broken & tb["binds"][:, cols]

    def _broken_vocab(self, state: GrammarState) -> tuple[torch.Tensor, torch.Tensor]:
        """`_broken` for every id of the vocabulary, split: (`[B, V]` bool, a rule other
        than orphan_note_off is broken by the id; `[B, V]` bool, orphan_note_off is).
        Broadcasts and one slice instead of `_broken`'s gathers, which made the compiled
        mask and sampling about twice as slow at batch 32 (docs/engine.md, "Where a
        step's time goes")."""
        tb = self.tables(state.inst.device)
        v = self.vocab
        b = state.inst.shape[0]
        when, silent = self._when(state)
        others = torch.zeros(b, v.size, dtype=torch.bool, device=silent.device)
        for r, rule in enumerate(GRAMMAR_RULES):
            if r != _ORPHAN:
                others = others | (when[rule] & tb["binds"][r])
        before = torch.zeros(b, v.NOTE_OFF.start, dtype=torch.bool, device=silent.device)
        after = torch.zeros(b, v.size - v.NOTE_OFF.stop, dtype=torch.bool, device=silent.device)
        orphan = torch.cat([before, silent, after], 1) & tb["binds"][_ORPHAN]
        return others, orphan

    def allowed(self, state: GrammarState) -> torch.Tensor:
        """`[B, V]` bool: the tokens that may come next. Never empty (START first; then
        TEMPO, VELOCITY and INSTRUMENT are always allowed before END; only PAD after it)."""
        others, orphan = self._broken_vocab(state)
        return ~(others | orphan)

    def sampling_logits(
        self,
        state: GrammarState,
        logits: torch.Tensor,
        *,
        note_off: str,
        at_limit: str,
        note_on: str,
    ) -> torch.Tensor:
        """`logits` `[B, V]` (already divided by the temperature) with the rules and the
        generation policies applied: forbidden ids at -inf, under `note_off="spread"`
        the NOTE_OFF family's probability moved onto the sounding pitches, and under
        `note_on="off-first"` each sounding pitch's NOTE_ON probability onto its
        NOTE_OFF (module docstring). On the device, no host synchronisation; top-k /
        top-p come after."""
        check_policies(note_off, at_limit, note_on)
        z = self._note_off_logits(state, logits, note_off=note_off, at_limit=at_limit)
        if note_on == "restrike":
            return z
        return self._off_first(state, z)

    def _off_first(self, state: GrammarState, z: torch.Tensor) -> torch.Tensor:
        """`z` (`[B, V]`, the rules and the other policies applied) with the probability
        of each allowed NOTE_ON of a pitch sounding on the current instrument moved onto
        that pitch's NOTE_OFF (which the rules allow; where the note limit forces a
        release, every NOTE_ON is already forbidden and nothing moves)."""
        v = self.vocab
        _, silent = self._when(state)
        sounding = ~silent & (state.started & ~state.ended)[:, None]  # [B, 88]
        on = z[:, v.NOTE_ON.start : v.NOTE_ON.stop]
        off = z[:, v.NOTE_OFF.start : v.NOTE_OFF.stop]
        moves = sounding & on.isfinite()
        off = torch.where(moves, torch.logaddexp(off, on), off)
        on = on.masked_fill(moves, float("-inf"))
        return torch.cat([z[:, : v.NOTE_ON.start], on, off, z[:, v.NOTE_OFF.stop :]], 1)

    def _note_off_logits(
        self, state: GrammarState, logits: torch.Tensor, *, note_off: str, at_limit: str
    ) -> torch.Tensor:
        """`sampling_logits` before the NOTE_ON policy."""
        tb = self.tables(state.inst.device)
        others, orphan = self._broken_vocab(state)  # [B, V] each
        allowed = ~(others | orphan)
        policy = self._limit_mask(state, at_limit)  # [B, V]
        live = state.started & ~state.ended
        empty = (live & ~state.has_note)[:, None] & (tb["ids"] == self.vocab.END)  # [B, V]
        policy = policy & ~empty
        allowed &= policy
        z = logits.float()
        if note_off == "mask":
            return z.masked_fill(~allowed, float("-inf"))
        # F: NOTE_OFFs that only orphan_note_off forbids, or allowed ones
        family = tb["note_off"] & ~others & policy  # [B, V]
        sounding = family & allowed  # S  [B, V]
        lse_family = z.masked_fill(~family, float("-inf")).logsumexp(-1, keepdim=True)  # [B, 1]
        lse_sounding = z.masked_fill(~sounding, float("-inf")).logsumexp(-1, keepdim=True)
        # where S is empty (or all -inf) there is nothing to move mass onto: no gain
        # (and no -inf - -inf = NaN)
        gain = torch.where(lse_sounding.isfinite(), lse_family - lse_sounding, 0.0)
        z = torch.where(sounding, z + gain, z)
        return z.masked_fill(~allowed, float("-inf"))

    def _limit_mask(self, state: GrammarState, at_limit: str) -> torch.Tensor:
        """`[B, V]` bool: the ids the note limit leaves while notes sound, and the
        silence limit while none does."""
        tb = self.tables(state.inst.device)
        v = self.vocab
        live = (state.started & ~state.ended)[:, None]  # [B, 1]
        flat = state.age.flatten(1)  # [B, 16*88]
        oldest, cell = flat.max(1)  # [B]; -1 when nothing sounds
        sounding = (oldest >= 0)[:, None]
        shift = tb["shift_steps"][None, :]  # [1, V], 0 for other ids
        too_long = oldest[:, None] + shift > self.max_note_steps
        too_quiet = state.quiet[:, None] + shift > self.max_silence_steps
        too_far = torch.where(sounding, too_long, too_quiet)
        keep = ~(live & too_far & (shift > 0))  # [B, V]
        if at_limit == "freeze":
            return keep
        # release: the oldest note at (or past) the limit must end before anything else
        inst, pitch = cell // self.n_pitch, cell % self.n_pitch  # [B]
        on_inst = state.inst == inst
        forced = torch.where(on_inst, v.NOTE_OFF.start + pitch, v.INSTRUMENT.start + inst)
        due = live[:, 0] & (oldest >= self.max_note_steps)  # [B]
        only = tb["ids"][None, :] == forced[:, None]  # [B, V]
        return torch.where(due[:, None], only, keep)

    def broken_rule(self, state: GrammarState, tokens: torch.Tensor) -> torch.Tensor:
        """`[B]` long: the index in `GRAMMAR_RULES` of the first rule each next token
        (`[B]` long) breaks, -1 where it is allowed."""
        broken = self._broken(state, tokens[:, None])[:, :, 0]  # [R, B]
        first = broken.int().argmax(0)
        return torch.where(broken.any(0), first, -1)

    def advance(self, state: GrammarState, tokens: torch.Tensor) -> None:
        """Update `state` in place with the next token of every sequence (`[B]` long):
        its tensors keep their storage, so a compiled step can hold them as static."""
        v = self.vocab
        t = tokens
        live = ~state.ended
        state.started |= True
        is_inst = live & (t >= v.INSTRUMENT.start) & (t < v.INSTRUMENT.stop)
        state.inst.copy_(torch.where(is_inst, t - v.INSTRUMENT.start, state.inst))
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
        state.age.copy_(flat.scatter(1, cell, new[:, None]).view_as(age))
        sounds = (state.age >= 0).flatten(1).any(1)  # [B]
        state.quiet.copy_(torch.where(sounds, 0, state.quiet + steps))
        state.ended |= live & (t == v.END)
