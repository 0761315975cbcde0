"""Constrained sampling never emits what `validate` rejects, nor a note longer than its
limit (`longest_note`).

Two samplers: a random walk over `Grammar.sampling_logits` (hypothesis: seeds,
note-length limits, both policies of each kind, biases towards time shifts, note-ons
and END), and `MusicModel.generate` of an untrained tiny model under constraints at
several temperatures.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stretto.engine import ModelConfig, MusicModel
from stretto.engine.grammar import Grammar
from stretto.tokenizer import Vocabulary, validate
from stretto.tokenizer.grammar import longest_note, longest_silence

V = Vocabulary()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**16),
    max_note_steps=st.sampled_from([1, 2, 7, 64, 512]),
    max_silence_steps=st.sampled_from([1, 5, 64, 10_000]),
    shift_bias=st.floats(-3.0, 6.0),
    note_bias=st.floats(-3.0, 3.0),
    end_bias=st.floats(-8.0, 2.0),
    length=st.integers(1, 200),
    note_off=st.sampled_from(["spread", "mask"]),
    at_limit=st.sampled_from(["release", "freeze"]),
    note_on=st.sampled_from(["restrike", "off-first"]),
)
def test_random_walk_over_the_grammar_mask_validates(
    seed,
    max_note_steps,
    max_silence_steps,
    shift_bias,
    note_bias,
    end_bias,
    length,
    note_off,
    at_limit,
    note_on,
):
    grammar = Grammar(V, max_note_steps=max_note_steps, max_silence_steps=max_silence_steps)
    bias = torch.zeros(V.size)
    bias[V.TIME_SHIFT.start : V.TIME_SHIFT.stop] = shift_bias
    bias[V.NOTE_ON.start : V.NOTE_OFF.stop] = note_bias
    bias[V.END] = end_bias
    policies = dict(note_off=note_off, at_limit=at_limit, note_on=note_on)
    ids = _walk(grammar, bias, batch=4, length=length, seed=seed, **policies)
    for row in ids:
        assert validate(row) == [], row.tolist()
        assert longest_note(row) <= max_note_steps, row.tolist()
        assert longest_silence(row) <= max_silence_steps, row.tolist()


def _walk(grammar, bias, *, batch, length, seed, **policies) -> torch.Tensor:
    """Ids `[batch, 1 + length]` from START, each next id drawn from random logits plus
    `bias` under the mask and its policies (which must always leave an id to draw)."""
    gen = torch.Generator().manual_seed(seed)
    state = grammar.initial_state(batch, "cpu")
    ids = torch.full((batch, 1), V.START, dtype=torch.long)
    grammar.advance(state, ids[:, 0])
    for _ in range(length):
        logits = grammar.sampling_logits(
            state,
            torch.randn(batch, V.size, generator=gen) + bias,
            **policies,
        )
        assert (logits > float("-inf")).any(dim=1).all(), "the mask left nothing to sample"
        token = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
        grammar.advance(state, token)
        ids = torch.cat([ids, token[:, None]], dim=1)
    return ids


def _silent_walk(max_silence_steps: int) -> torch.Tensor:
    """A walk whose logits favour TIME_SHIFT and hold NOTE_ONs back."""
    bias = torch.zeros(V.size)
    bias[V.TIME_SHIFT.start : V.TIME_SHIFT.stop] = 4.0
    bias[V.NOTE_ON.start : V.NOTE_ON.stop] = -2.0
    grammar = Grammar(V, max_silence_steps=max_silence_steps)
    policies = dict(note_off="spread", at_limit="release", note_on="off-first")
    return _walk(grammar, bias, batch=8, length=120, seed=0, **policies)


def test_the_silence_limit_holds_where_the_walk_would_go_past_it():
    free = max(longest_silence(row) for row in _silent_walk(100_000))
    assert free > 64  # without the limit the walk falls silent for longer
    for row in _silent_walk(64):
        assert validate(row) == [], row.tolist()
        assert longest_silence(row) <= 64, row.tolist()


@pytest.mark.parametrize(
    "temperature, max_note_steps",
    [(1.0, 512), (3.0, 8), (10.0, 1)],
    ids=["T1-steps512", "T3-steps8", "T10-steps1"],
)
def test_generate_under_constraints_validates(temperature, max_note_steps):
    torch.manual_seed(0)
    model = MusicModel(ModelConfig.from_vocab(V, mode="transformer", preset="tiny")).eval()
    out = model.generate(
        max_new_tokens=128,
        temperature=temperature,
        seed=7,
        batch_size=3,
        constrained=True,
        max_note_steps=max_note_steps,
    )
    assert out.shape[0] == 3
    for row in out:
        assert validate(row) == [], row.tolist()
        assert longest_note(row) <= max_note_steps, row.tolist()
