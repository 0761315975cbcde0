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
from stretto.tokenizer.grammar import longest_note

V = Vocabulary()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**16),
    max_note_steps=st.sampled_from([1, 2, 7, 64, 512]),
    shift_bias=st.floats(-3.0, 6.0),
    note_bias=st.floats(-3.0, 3.0),
    end_bias=st.floats(-8.0, 2.0),
    length=st.integers(1, 200),
    note_off=st.sampled_from(["spread", "mask"]),
    at_limit=st.sampled_from(["release", "freeze"]),
)
def test_random_walk_over_the_grammar_mask_validates(
    seed, max_note_steps, shift_bias, note_bias, end_bias, length, note_off, at_limit
):
    gen = torch.Generator().manual_seed(seed)
    grammar = Grammar(V, max_note_steps=max_note_steps)
    batch = 4
    state = grammar.initial_state(batch, "cpu")
    ids = torch.full((batch, 1), V.START, dtype=torch.long)
    grammar.advance(state, ids[:, 0])
    bias = torch.zeros(V.size)
    bias[V.TIME_SHIFT.start : V.TIME_SHIFT.stop] = shift_bias
    bias[V.NOTE_ON.start : V.NOTE_OFF.stop] = note_bias
    bias[V.END] = end_bias
    for _ in range(length):
        logits = grammar.sampling_logits(
            state,
            torch.randn(batch, V.size, generator=gen) + bias,
            note_off=note_off,
            at_limit=at_limit,
        )
        assert (logits > float("-inf")).any(dim=1).all(), "the mask left nothing to sample"
        token = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
        grammar.advance(state, token)
        ids = torch.cat([ids, token[:, None]], dim=1)
    for row in ids:
        assert validate(row) == [], row.tolist()
        assert longest_note(row) <= max_note_steps, row.tolist()


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
