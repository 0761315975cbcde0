"""The token grammar a piece's ids follow: `validate` reports every position that breaks it.

The rules, their order and the ids each binds are `vocabulary.GRAMMAR_RULES` and
`Vocabulary.grammar_bindings` (docs/engine.md, "Generation"). The ids are read through the
tokenizer's token-state machine (`_state`), the one that decoding and window prefixes
use, so a rule is judged on the state the decoder would be in: for instance a NOTE_ON
before any INSTRUMENT breaks `instrument_first` and then sounds on instrument 0, as it
decodes. `stretto.engine.Grammar` is the same rules as a logits mask for sampling.

A note's length is no rule: real music holds notes for any time (pads, organ; one file
of the dev corpus holds a note 139 s). The limit generation keeps (`max_note_steps`,
8 s by default) is a sampling policy of `stretto.engine.Grammar`; `longest_note`
measures what a sequence holds, to check generated ids against it. Silence is no rule
either; `longest_silence` measures the longest a sequence holds, which generation keeps
at most its `max_silence_steps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numba
import numpy as np

if TYPE_CHECKING:
    import torch

from ._ids import NOTE_OFF0
from ._state import (
    ENDED,
    INST,
    NOW,
    POS,
    VEL,
    advance,
    new_state,
    oldest_age,
    sounding,
)
from .vocabulary import GRAMMAR_RULES, Vocabulary

RULES = GRAMMAR_RULES
RULE_START = RULES.index("start")
RULE_SPECIAL = RULES.index("special")
RULE_AFTER_END = RULES.index("after_end")
RULE_INSTRUMENT_FIRST = RULES.index("instrument_first")
RULE_VELOCITY_FIRST = RULES.index("velocity_first")
RULE_ORPHAN_NOTE_OFF = RULES.index("orphan_note_off")

_BINDINGS = np.array(Vocabulary().grammar_bindings(), dtype=np.int64)


class Violation(NamedTuple):
    """One broken rule: the token's position, the rule's name, the token and a sentence."""

    position: int
    rule: str
    token: int
    message: str


def validate(
    ids: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    vocab: Vocabulary | None = None,
) -> list[Violation]:
    """Every rule `ids` (a 1-D sequence of in-range ids) breaks, in position order.

    At most one violation per position (the first rule in `RULES` order that fails).
    An empty list means the sequence is valid. Out-of-range ids raise ValueError.
    A torch tensor is read on the host.
    """
    v = vocab or Vocabulary()
    arr = _ids(ids, v, "validate")
    positions, rules, details = _violations(arr, _BINDINGS)
    return [
        _violation(v, int(p), int(r), int(arr[p]), int(d))
        for p, r, d in zip(positions, rules, details, strict=True)
    ]


def longest_note(
    ids: Sequence[int] | np.ndarray | torch.Tensor, *, vocab: Vocabulary | None = None
) -> int:
    """The longest a note of `ids` sounds, in steps (15.625 ms), as the decoder reads
    them; a note still sounding at END or at the last id counts up to there. 0 when no
    note sounds. Generation keeps this at most its `max_note_steps`."""
    v = vocab or Vocabulary()
    return int(_longest_note(_ids(ids, v, "longest_note")))


def longest_silence(
    ids: Sequence[int] | np.ndarray | torch.Tensor, *, vocab: Vocabulary | None = None
) -> int:
    """The longest time `ids` holds with no note sounding, in steps (15.625 ms), as the
    decoder reads them: from the start to the first note, between notes, and from the
    last note to END or the last id. 0 when time never moves in silence. Generation
    keeps this at most its `max_silence_steps`."""
    v = vocab or Vocabulary()
    return int(_longest_silence(_ids(ids, v, "longest_silence")))


def _ids(ids, v: Vocabulary, who: str) -> np.ndarray:
    """`ids` as a 1-D int64 array of in-range ids (a torch tensor is read on the host)."""
    if hasattr(ids, "detach"):  # a torch tensor, on any device
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{who} takes one sequence [N], got shape {list(arr.shape)}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{who} takes integer token ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = np.flatnonzero((arr < 0) | (arr >= v.size))
    if bad.size:
        raise ValueError(f"token id {int(arr[bad[0]])} is outside the vocabulary [0, {v.size})")
    return arr


@numba.njit(cache=True, nogil=True)
def _longest_silence(ids):
    longest = quiet = 0
    s, sustain, notes = new_state()
    for pos in range(ids.shape[0]):
        if s[ENDED] == 1:
            break
        silent = oldest_age(s, notes) < 0
        before = s[NOW]
        advance(s, sustain, notes, ids[pos])
        if silent and s[NOW] != before:  # time moved with nothing sounding
            quiet += s[NOW] - before
            longest = max(longest, quiet)
        elif oldest_age(s, notes) >= 0:
            quiet = 0
    return longest


@numba.njit(cache=True, nogil=True)
def _longest_note(ids):
    longest = 0
    s, sustain, notes = new_state()
    for pos in range(ids.shape[0]):
        if s[ENDED] == 1:
            break
        t = ids[pos]
        before = s[NOW]
        advance(s, sustain, notes, t)
        if s[NOW] != before:  # time moved: every sounding note grew
            longest = max(longest, oldest_age(s, notes))
    return longest


def _violation(v: Vocabulary, pos: int, rule: int, t: int, detail: int) -> Violation:
    name = v.describe(t)
    messages = {
        RULE_START: f"the sequence starts with {name}, not START",
        RULE_SPECIAL: f"{name} inside the piece",
        RULE_AFTER_END: f"{name} after END",
        RULE_INSTRUMENT_FIRST: f"{name} before any INSTRUMENT",
        RULE_VELOCITY_FIRST: f"{name} before any VELOCITY",
        RULE_ORPHAN_NOTE_OFF: f"{name}: pitch not sounding in {detail}",
    }
    return Violation(pos, RULES[rule], t, messages[rule])


@numba.njit(cache=True, nogil=True)
def _violations(ids, bindings):
    """(positions, rules, details) of every position of `ids` that breaks a rule; the
    detail is the instrument for `orphan_note_off`."""
    n = ids.shape[0]
    positions = np.empty(n, dtype=np.int64)
    rules = np.empty(n, dtype=np.int64)
    details = np.zeros(n, dtype=np.int64)
    k = 0
    s, sustain, notes = new_state()
    for pos in range(n):
        t = ids[pos]
        rule = _first_broken(s, notes, t, bindings[t])
        if rule >= 0:
            positions[k] = pos
            rules[k] = rule
            if rule == RULE_ORPHAN_NOTE_OFF:
                details[k] = s[INST]
            k += 1
        advance(s, sustain, notes, t)
    return positions[:k].copy(), rules[:k].copy(), details[:k].copy()


@numba.njit(cache=True, nogil=True, _nrt=False)
def _first_broken(s, notes, t, binds):
    """The first rule (in RULES order) that id `t` breaks after the state `s`, or -1.

    `binds` has bit r set when rule r binds `t` (`Vocabulary.grammar_bindings`); here
    are the rules' conditions on the state (see `vocabulary.GRAMMAR_RULES`).
    """
    if s[ENDED] == 1:
        return RULE_AFTER_END if _bound(binds, RULE_AFTER_END) else -1
    if s[POS] == 0:
        return RULE_START if _bound(binds, RULE_START) else -1
    if _bound(binds, RULE_SPECIAL):
        return RULE_SPECIAL
    if _bound(binds, RULE_INSTRUMENT_FIRST) and s[INST] < 0:
        return RULE_INSTRUMENT_FIRST
    if _bound(binds, RULE_VELOCITY_FIRST) and s[VEL] < 0:
        return RULE_VELOCITY_FIRST
    if _bound(binds, RULE_ORPHAN_NOTE_OFF) and not sounding(notes, s[INST], t - NOTE_OFF0):
        return RULE_ORPHAN_NOTE_OFF
    return -1


@numba.njit(cache=True, inline="always")
def _bound(binds, rule):
    return (binds >> rule) & 1 == 1
