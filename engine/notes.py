"""The note state: what is sounding at every position, read from the ids before it.

A NOTE_OFF names a pitch of the current instrument, so a decoder that closes its notes
must know, at every position, which pitches are sounding. Attention alone cannot keep
that for long notes: a window of 32 tokens forgets a NOTE_ON after a fraction of a
second, and block summaries are means that cannot say "this pitch is still on". With
`ModelConfig.note_state` the decoder is told, at each position, after reading the id
there (so that position's logits predict the next id with it):

- which of the 88 pitches sound on the current instrument (`sounding`, `[B, N, 88]`);
- how many notes sound on any instrument (`count`, `[B, N]`);
- how long the oldest sounding note has lasted, in time steps (`age`, `[B, N]`, -1 when
  nothing sounds);
- the current instrument (`inst`, `[B, N]`), the pitch of the last note it struck
  (`last`, `[B, N]`, -1 before its first) and which instruments have struck a note so
  far (`played`, `[B, N, 16]`): with `ModelConfig.instrument_state`, so that a piece
  keeps to its instruments and their registers long after the tokens that set them
  left the window.

The ids are read as the tokenizer's token-state machine reads them
(`stretto.tokenizer._state`): NOTE_ON and NOTE_OFF act on the current instrument
(instrument 0 before any INSTRUMENT), a NOTE_ON on a sounding pitch starts the note
again, a NOTE_OFF on a silent pitch does nothing, TIME_SHIFT b advances b + 1 steps,
and nothing after END changes the state.

Two ways to the same numbers: `note_features(ids)` over a whole sequence at once (scans
over positions on the device: training, scoring, a prompt), and `NoteTracker`, the state
kept in place one id at a time beside the decoding caches (`MusicModel.new_cache`).
Tests hold both to the tokenizer's state machine.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from stretto.kernels import HierarchicalKVCache
from stretto.tokenizer.vocabulary import Vocabulary

_V = Vocabulary()
NUM_INSTRUMENTS = len(_V.INSTRUMENT)
NUM_PITCHES = len(_V.NOTE_ON)
CELLS = NUM_INSTRUMENTS * NUM_PITCHES
# Age buckets: 0 = nothing sounds; 1 + floor(log2(age + 1)), capped (ages past 2^10
# steps, 16 s at 64 steps/s, share the last bucket).
AGE_BUCKETS = 12
COUNT_BUCKETS = 16  # notes sounding: 0..14, and 15 for 15 or more
_NEVER = torch.iinfo(torch.int64).max


class NoteFeatures(NamedTuple):
    """The note state after each position: `sounding` `[B, N, 88]` bool, `count`
    `[B, N]` long, `age` `[B, N]` long (-1 when nothing sounds), `inst` `[B, N]` long,
    `last` `[B, N]` long (pitch index, -1 before the instrument's first note), `played`
    `[B, N, 16]` bool, `held` `[B, N, 88]` long (time steps each pitch of the current
    instrument has sounded, -1 where it is silent)."""

    sounding: torch.Tensor
    count: torch.Tensor
    age: torch.Tensor
    inst: torch.Tensor
    last: torch.Tensor
    played: torch.Tensor
    held: torch.Tensor


class _Scan(NamedTuple):
    features: NoteFeatures
    inst: torch.Tensor  # [B] the current instrument after the last position
    now: torch.Tensor  # [B] time steps after the last position
    onset: torch.Tensor  # [B, CELLS] onset step of each note still sounding, -1 if silent
    last: torch.Tensor  # [B, 16] each instrument's last pitch struck, -1 before its first
    ended: torch.Tensor  # [B] an END was read


def _kinds(ids: torch.Tensor):
    """Per id: (is NOTE_ON, is NOTE_OFF, pitch index, TIME_SHIFT steps, is INSTRUMENT)."""
    v = _V
    is_on = (ids >= v.NOTE_ON.start) & (ids < v.NOTE_ON.stop)
    is_off = (ids >= v.NOTE_OFF.start) & (ids < v.NOTE_OFF.stop)
    pitch = torch.where(is_on, ids - v.NOTE_ON.start, ids - v.NOTE_OFF.start)
    pitch = pitch.clamp(0, NUM_PITCHES - 1)
    is_shift = (ids >= v.TIME_SHIFT.start) & (ids < v.TIME_SHIFT.stop)
    steps = torch.where(is_shift, ids - v.TIME_SHIFT.start + 1, 0)
    is_inst = (ids >= v.INSTRUMENT.start) & (ids < v.INSTRUMENT.stop)
    return is_on, is_off, pitch, steps, is_inst


def _scan(ids: torch.Tensor, real: torch.Tensor | None = None) -> _Scan:
    """Every note as an interval of positions: a NOTE_ON at j sounds at j..e-1, where e
    is the next NOTE_ON or NOTE_OFF of the same (instrument, pitch) cell (or N). The
    features are then sums and minima over intervals: differences summed along the
    positions, never a per-cell scan (`cummax` over [B, N, 1408] cost 10x more)."""
    b, n = ids.shape
    dev = ids.device
    ids = ids.long()
    is_end = ids == _V.END
    if real is not None:  # padded positions are never read
        is_end = is_end & real
    ends_before = is_end.long().cumsum(1) - is_end.long()
    live = ends_before == 0  # an END itself is read; what follows is not
    if real is not None:
        live = live & real
    is_on, is_off, pitch, steps, is_inst = _kinds(ids)
    is_on, is_off, is_inst = is_on & live, is_off & live, is_inst & live
    pos = torch.arange(n, device=dev).expand(b, n)
    last_inst = torch.where(is_inst, pos, -1).cummax(1).values  # [B, N]
    inst = torch.where(
        last_inst >= 0, ids.gather(1, last_inst.clamp(min=0)) - _V.INSTRUMENT.start, 0
    )
    now = torch.where(live, steps, 0).cumsum(1)  # [B, N]
    cell = inst * NUM_PITCHES + pitch  # [B, N]
    # e for every event: sort the events by (cell, position), read the next in the order.
    key = torch.where(is_on | is_off, cell, CELLS) * n + pos
    key_sorted, order = key.sort(1)
    same = key_sorted[:, 1:] // n == key_sorted[:, :-1] // n
    next_sorted = torch.where(same, key_sorted[:, 1:] % n, n)
    next_sorted = torch.cat([next_sorted, torch.full((b, 1), n, device=dev)], 1)
    # back to positions by a gather through the inverse order, not a scatter into an
    # empty tensor: torch.compile (Inductor, CPU, torch 2.13) miscompiled the scatter
    # whenever `end` was not an output, and every feature read from it came out wrong
    end = next_sorted.gather(1, order.argsort(1))  # [B, N]
    end = torch.where(is_on, end, n)  # only NOTE_ONs open intervals
    on = is_on.long()
    # notes sounding: +1 at each onset, -1 at its end
    diff = torch.zeros(b, n + 1, dtype=torch.long, device=dev)
    diff.scatter_add_(1, pos, on).scatter_add_(1, end, -on)
    count = diff.cumsum(1)[:, :n]
    # the oldest sounding note at i: the least onset position j among intervals with
    # e > i (the least such j is <= i whenever any note sounds at i)
    first = torch.full((b, n + 1), n, dtype=torch.long, device=dev)
    first.scatter_reduce_(1, end, torch.where(is_on, pos, n), "amin")
    oldest = first.flip(1).cummin(1).values.flip(1)[:, 1:]  # min over e > i
    age = torch.where(count > 0, now - now.gather(1, oldest.clamp(max=n - 1)), -1)
    # the onset of each pitch sounding on the current instrument: the same differences
    # per pitch (+(onset + 1) where a note starts, minus that where it ends; a cell's
    # notes never overlap), one instrument at a time (a [B, N, 16 x 88] table would
    # outgrow the activations)
    since = torch.zeros(b, n, NUM_PITCHES, dtype=torch.int32, device=dev)
    for i in range(NUM_INSTRUMENTS):
        mine = (on * (cell // NUM_PITCHES == i) * (now + 1)).to(torch.int32)
        per_pitch = torch.zeros(b, (n + 1) * NUM_PITCHES, dtype=torch.int32, device=dev)
        per_pitch.scatter_add_(1, pos * NUM_PITCHES + pitch, mine)
        per_pitch.scatter_add_(1, end * NUM_PITCHES + pitch, -mine)
        cells = per_pitch.view(b, n + 1, NUM_PITCHES)[:, :n].cumsum(1, dtype=torch.int32)
        since += cells * (inst == i)[..., None]
    sounding = since > 0
    held = torch.where(sounding, now[..., None] - (since.long() - 1), -1)
    # each instrument's last NOTE_ON at or before each position, and its pitch
    instruments = torch.arange(NUM_INSTRUMENTS, device=dev)
    struck = (inst[..., None] == instruments) & is_on[..., None]
    latest = torch.where(struck, pos[..., None], -1).cummax(1).values  # [B, N, 16]
    pitches = pitch.gather(1, latest.clamp(min=0).view(b, -1)).view(b, n, NUM_INSTRUMENTS)
    last_pitch = torch.where(latest >= 0, pitches, -1)  # [B, N, 16]
    last = last_pitch.gather(2, inst[..., None])[..., 0]
    # the state after the last position, for a tracker
    still = is_on & (end == n)
    onset = torch.full((b, CELLS + 1), -1, dtype=torch.long, device=dev)
    onset.scatter_(1, torch.where(still, cell, CELLS), torch.where(still, now, -1))
    return _Scan(
        NoteFeatures(sounding, count, age, inst, last, latest >= 0, held),
        inst[:, -1],
        now[:, -1],
        onset[:, :CELLS],
        last_pitch[:, -1],
        is_end.any(1),
    )


def _features(
    onset: torch.Tensor, inst: torch.Tensor, now: torch.Tensor, last: torch.Tensor
) -> NoteFeatures:
    """The features from the onsets `[B, CELLS]` (-1 = silent), instrument and time `[B]`
    and each instrument's last pitch `[B, 16]` (-1 = none yet)."""
    on = onset >= 0
    rows = torch.arange(on.shape[0], device=on.device)
    since = onset.view(-1, NUM_INSTRUMENTS, NUM_PITCHES)[rows, inst]
    sounding = since >= 0
    oldest = torch.where(on, onset, _NEVER).amin(-1)
    age = torch.where(on.any(-1), now - oldest, -1)
    mine = last.gather(1, inst[:, None])[:, 0]
    held = torch.where(sounding, now[:, None] - since, -1)
    return NoteFeatures(sounding, on.sum(-1), age, inst, mine, last >= 0, held)


def note_features(ids: torch.Tensor, real: torch.Tensor | None = None) -> NoteFeatures:
    """The note state after every position of `ids` `[B, N]` (see the module docstring);
    ids where `real` `[B, N]` bool is False (padding) are not read."""
    if ids.dim() != 2:
        raise ValueError(f"note_features takes ids [B, N], got shape {list(ids.shape)}")
    return _scan(ids, real).features


class NoteTracker:
    """The note state of `batch` sequences kept on the device, one id at a time.

    `load(ids)` reads a prompt `[B, N]` at once and returns its features; `advance(ids)`
    reads one id per sequence `[B]` in place and returns the features after it
    (`[B, 1, ...]`). The tensors are allocated once and written in place
    (`tensors()`), so a compiled or graphed decoding step can hold them as static inputs.
    """

    def __init__(self, batch: int, device: torch.device | str) -> None:
        def zeros(*shape: int, dtype=torch.long) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.inst = zeros(batch)
        self.now = zeros(batch)
        self.onset = zeros(batch, CELLS) - 1
        self.last = zeros(batch, NUM_INSTRUMENTS) - 1
        self.ended = zeros(batch, dtype=torch.bool)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.inst, self.now, self.onset, self.last, self.ended)

    def load(self, ids: torch.Tensor, real: torch.Tensor | None = None) -> NoteFeatures:
        scan = _scan(ids, real)
        self.inst.copy_(scan.inst)
        self.now.copy_(scan.now)
        self.onset.copy_(scan.onset)
        self.last.copy_(scan.last)
        self.ended.copy_(scan.ended)
        return scan.features

    def advance(self, ids: torch.Tensor, real: torch.Tensor | None = None) -> NoteFeatures:
        ids = ids.long()
        live = ~self.ended if real is None else ~self.ended & real
        is_on, is_off, pitch, steps, is_inst = _kinds(ids)
        self.inst.copy_(torch.where(live & is_inst, ids - _V.INSTRUMENT.start, self.inst))
        self.now.add_(torch.where(live, steps, 0))
        cell = (self.inst * NUM_PITCHES + pitch)[:, None]  # [B, 1]
        current = self.onset.gather(1, cell)[:, 0]
        new = torch.where(live & is_on, self.now, torch.where(live & is_off, -1, current))
        self.onset.scatter_(1, cell, new[:, None])
        mine = self.last.gather(1, self.inst[:, None])[:, 0]
        self.last.scatter_(1, self.inst[:, None], torch.where(live & is_on, pitch, mine)[:, None])
        self.ended.logical_or_(live & (ids == _V.END))
        f = _features(self.onset, self.inst, self.now, self.last)
        return NoteFeatures(*(x[:, None] for x in f))


class DecodeCache(list):
    """`MusicModel.new_cache`: one `HierarchicalKVCache` per decoder block, and the
    `NoteTracker` of the decoded sequences (`notes`, None without the note and the
    instrument state)."""

    def __init__(self, layers: list[HierarchicalKVCache], notes: NoteTracker | None) -> None:
        super().__init__(layers)
        self.notes = notes

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the caches hold (`HierarchicalKVCache.tensors()` of each block,
        then the note tracker's)."""
        held = tuple(t for layer in self for t in layer.tensors())
        return held if self.notes is None else (*held, *self.notes.tensors())


def age_bucket(age: torch.Tensor) -> torch.Tensor:
    """0 for silence (-1), else 1 + floor(log2(age + 1)) time steps, up to AGE_BUCKETS - 1."""
    octave = torch.log2((age + 1).clamp(min=1).to(torch.float32)).floor().long()
    return torch.where(age >= 0, 1 + octave, 0).clamp(max=AGE_BUCKETS - 1)


class NoteEmbedding(nn.Module):
    """The note state as a `[B, N, C]` addition to the decoder's token embeddings: a
    linear map of the sounding pitches plus an embedding of the count and of the age
    bucket of the oldest note."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.pitches = nn.Linear(NUM_PITCHES, d_model, bias=False)
        self.count = nn.Embedding(COUNT_BUCKETS, d_model)
        self.age = nn.Embedding(AGE_BUCKETS, d_model)

    def forward(self, f: NoteFeatures) -> torch.Tensor:
        dtype = self.pitches.weight.dtype
        return (
            self.pitches(f.sounding.to(dtype))
            + self.count(f.count.clamp(max=COUNT_BUCKETS - 1))
            + self.age(age_bucket(f.age))
        )


class InstrumentEmbedding(nn.Module):
    """The instrument state as a `[B, N, C]` addition to the decoder's token embeddings:
    embeddings of the current instrument and of its last pitch (or none yet), plus a
    linear map of the instruments the piece has played."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.current = nn.Embedding(NUM_INSTRUMENTS, d_model)
        self.last = nn.Embedding(NUM_PITCHES + 1, d_model)
        self.played = nn.Linear(NUM_INSTRUMENTS, d_model, bias=False)

    def forward(self, f: NoteFeatures) -> torch.Tensor:
        played = self.played(f.played.to(self.played.weight.dtype))
        return self.current(f.inst) + self.last(f.last + 1) + played


# The gains are stored divided by this. Adam moves a parameter by about its learning rate
# per step, and the gains the data asks for are several nats (the quality suite's rows
# record each trained model's mean gains), out of reach of a short run when stored as is.
STATE_LOGIT_SCALE = 30.0


class StateLogits(nn.Module):
    """The state added straight to the logits of the tokens it governs, by learned gains
    (zero at first): with the note state, `release[p] + release_age[a]` on NOTE_OFF p
    (a: `age_bucket` of the steps p has sounded) and `restrike[p]` on NOTE_ON p where
    pitch p sounds on the current instrument; with the instrument state,
    `replay[k]` on INSTRUMENT k once instrument k has struck a note.

    The embeddings give the decoder the same facts, but it has to learn to carry them
    through every layer to the head, which a short run does not do: see the quality
    suite's `new-instrument` rows (`benchmarks/quality_cause.py`) and docs/engine.md.
    """

    def __init__(self, notes: bool, instruments: bool) -> None:
        super().__init__()

        def gain(size: int, on: bool) -> nn.Parameter | None:
            return nn.Parameter(torch.zeros(size)) if on else None

        self.release = gain(NUM_PITCHES, notes)
        self.release_age = gain(AGE_BUCKETS, notes)
        self.restrike = gain(NUM_PITCHES, notes)
        self.replay = gain(NUM_INSTRUMENTS, instruments)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a model saved before `release_age` existed was trained without it: gains 0
        key = prefix + "release_age"
        if self.release_age is not None and prefix + "release" in state_dict:
            state_dict.setdefault(key, torch.zeros_like(self.release_age))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, logits: torch.Tensor, f: NoteFeatures) -> torch.Tensor:
        """`logits` `[B, N, V]` with the gains added where `f` (the state after each
        position) says they apply."""
        dtype = logits.dtype

        def times(gain: torch.Tensor) -> torch.Tensor:
            return (gain * STATE_LOGIT_SCALE).to(dtype)

        adds: list[tuple[range, torch.Tensor]] = []
        if self.release is not None:
            sounding = f.sounding.to(dtype)
            adds.append((_V.NOTE_ON, sounding * times(self.restrike)))
            by_age = times(self.release_age)[age_bucket(f.held)]  # silent: masked below
            adds.append((_V.NOTE_OFF, sounding * (times(self.release) + by_age)))
        if self.replay is not None:
            adds.append((_V.INSTRUMENT, f.played.to(dtype) * times(self.replay)))
        pieces, at = [], 0
        for family, add in sorted(adds, key=lambda a: a[0].start):  # one new tensor
            pieces += [
                logits[..., at : family.start],
                logits[..., family.start : family.stop] + add,
            ]
            at = family.stop
        return torch.cat([*pieces, logits[..., at:]], -1)
