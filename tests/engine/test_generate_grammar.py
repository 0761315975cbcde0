"""The grammar's mask (`Grammar`): it agrees with `stretto.tokenizer.validate` rule by
rule and token by token, and constrained sampling only produces valid pieces that
decode to notes. `validate` itself is tested in tests/tokenizer/test_grammar.py."""

from __future__ import annotations

import pytest
import torch

from stretto.engine.grammar import Grammar
from stretto.tokenizer import MidiTokenizer, Vocabulary, validate
from stretto.tokenizer.grammar import RULES

V = Vocabulary()
S, E, PAD = V.START, V.END, V.PAD
I0, VEL, ON60, OFF60 = V.instrument(0), V.velocity(64), V.note_on(60), V.note_off(60)
SHIFT = V.time_shift  # steps -> id


def test_real_music_is_valid_and_allowed_by_the_mask(windows):
    """Every next token of real music is allowed by the mask, and every token the mask
    forbids makes `validate` fail at that position."""
    ids = windows(300)  # [2, 300]
    grammar = Grammar(V, max_note_steps=10_000)
    state = grammar.initial_state(2, "cpu")
    grammar.advance(state, ids[:, 0])
    gen = torch.Generator().manual_seed(0)
    for i in range(1, 300):
        allowed = grammar.allowed(state)  # [2, V]
        assert allowed[torch.arange(2), ids[:, i]].all(), i
        if i % 15 == 0:
            for row in range(2):
                banned = (~allowed[row]).nonzero()[:, 0]
                pick = banned[torch.randint(len(banned), (4,), generator=gen)]
                for t in pick.tolist():
                    prefix = ids[row, :i].tolist() + [t]
                    found = validate(prefix, max_note_steps=10_000)
                    assert found and found[-1].position == i, (i, V.describe(t))
        grammar.advance(state, ids[:, i])
    for row in ids:
        assert validate(row, max_note_steps=10_000) == []


# -- the mask and validate agree --------------------------------------------------------
# Ids drawn by family, pitches from a few, short shifts often: sequences that break and
# keep every rule, with notes that sound, end, restart and outlive a small limit.
FAMILIES = [
    range(0, 4),
    V.NOTE_ON,
    V.NOTE_OFF,
    V.TIME_SHIFT,
    V.VELOCITY,
    range(V.SUSTAIN_ON, V.SUSTAIN_OFF + 1),
    V.TEMPO,
    V.INSTRUMENT,
]


def _random_ids(gen: torch.Generator, n: int, start: bool = True) -> list[int]:
    weights = torch.rand(len(FAMILIES), generator=gen) ** 2 + 0.02
    pitches = torch.randint(0, 88, (3,), generator=gen)
    out = [S] if start else []
    draws = torch.multinomial(weights, n - len(out), replacement=True, generator=gen)
    for family in draws.tolist():
        r = FAMILIES[family]
        pick = int(torch.randint(len(r), (1,), generator=gen))
        if r in (V.NOTE_ON, V.NOTE_OFF) and torch.rand(1, generator=gen) < 0.8:
            pick = int(pitches[pick % 3])
        elif r == V.TIME_SHIFT and torch.rand(1, generator=gen) < 0.6:
            pick %= 6
        elif r == V.INSTRUMENT:
            pick %= 3
        out.append(r[pick])
    return out


@pytest.mark.parametrize("max_note_steps", [1, 7, 512])
@pytest.mark.parametrize("seed", range(4), ids=[f"seed{s}" for s in range(4)])
def test_the_mask_breaks_the_rule_validate_names_at_every_position(seed, max_note_steps):
    """On sequences that break every rule, the mask's first broken rule for each next
    token is the one `validate` reports at that position (none where it reports none):
    both read the same state from the same ids, violations included."""
    gen = torch.Generator().manual_seed(seed)
    rows = [_random_ids(gen, 120, start=k % 6 != 0) for k in range(24)]
    grammar = Grammar(V, max_note_steps=max_note_steps)
    state = grammar.initial_state(len(rows), "cpu")
    ids = torch.tensor(rows)  # [24, 120]
    found = [
        {x.position: RULES.index(x.rule) for x in validate(row, max_note_steps=max_note_steps)}
        for row in rows
    ]
    seen = set()
    for pos in range(ids.shape[1]):
        got = grammar.broken_rule(state, ids[:, pos]).tolist()
        want = [f.get(pos, -1) for f in found]
        assert got == want, (pos, [V.describe(int(t)) for t in ids[:, pos]])
        seen.update(want)
        grammar.advance(state, ids[:, pos])
    assert seen == {-1, *range(len(RULES))}, "some rule never came up: draw other ids"


@pytest.mark.parametrize("seed", range(3), ids=[f"seed{s}" for s in range(3)])
def test_a_token_is_allowed_exactly_when_validate_stays_clean(seed):
    """From valid prefixes (a random walk over the mask, into the note limit and past
    END), every one of the 774 next tokens: allowed <=> appending it keeps `validate`
    clean."""
    gen = torch.Generator().manual_seed(seed)
    grammar = Grammar(V, max_note_steps=12)
    state = grammar.initial_state(1, "cpu")
    prefix: list[int] = []
    bias = torch.zeros(V.size)
    bias[V.END] = -4.0
    bias[V.TIME_SHIFT.start : V.TIME_SHIFT.start + 8] = 3.0
    for step in range(90):
        allowed = grammar.allowed(state)[0]
        if step % 6 == 0 or step == 89:
            for t in range(V.size):
                clean = validate([*prefix, t], max_note_steps=12) == []
                assert bool(allowed[t]) == clean, (step, V.describe(t))
        logits = (torch.randn(V.size, generator=gen) + bias).masked_fill(~allowed, -torch.inf)
        token = int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
        grammar.advance(state, torch.tensor([token]))
        prefix.append(token)
    assert validate(prefix, max_note_steps=12) == []


def _briefly_trained(make_model, windows):
    torch.manual_seed(0)
    model = make_model("transformer")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = {"input_ids": windows(128)}
    for _ in range(40):
        opt.zero_grad()
        model.loss(batch)["loss"].backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("mode", ["transformer", "vae", "vae_gan"])
def test_untrained_constrained_outputs_are_valid(make_model, mode):
    model = make_model(mode).eval()
    for seed in range(6):
        # A short note limit so the forced-release path is taken often.
        out = model.generate(
            max_new_tokens=160, seed=seed, batch_size=8, max_note_steps=24, top_p=0.98
        )
        for row in out:
            assert validate(row, max_note_steps=24) == [], (seed, validate(row, max_note_steps=24))


def test_trained_constrained_outputs_are_valid_and_decode_to_notes(make_model, windows, tmp_path):
    model = _briefly_trained(make_model, windows)
    tok = MidiTokenizer()
    with_notes = 0
    for seed in range(4):
        out = model.generate(max_new_tokens=200, seed=seed, batch_size=6, temperature=1.2)
        for j, row in enumerate(out):
            assert validate(row) == []
            path = tok.decode_to_file(row.numpy(), tmp_path / f"s{seed}-{j}.mid")
            score = tok.decode(row.numpy())
            with_notes += sum(len(t.notes) for t in score.tracks) > 0
            assert path.stat().st_size > 0
    assert with_notes == 24


def test_unconstrained_untrained_output_breaks_the_grammar(make_model):
    """The test above can fail: without the mask an untrained model breaks the rules."""
    model = make_model("transformer").eval()
    out = model.generate(max_new_tokens=100, seed=0, batch_size=4, constrained=False)
    assert all(validate(row) for row in out)


def test_mask_at_the_note_limit():
    """A note as old as the limit blocks every TIME_SHIFT until it is released; a
    younger one blocks exactly the shifts that would take it past the limit."""
    grammar = Grammar(V, max_note_steps=20)
    state = grammar.initial_state(2, "cpu")
    rows = [[S, I0, VEL, ON60, SHIFT(20)], [S, I0, VEL, ON60, SHIFT(15)]]
    for t in torch.tensor(rows).T:
        grammar.advance(state, t)
    allowed = grammar.allowed(state)
    shifts = allowed[:, V.TIME_SHIFT.start : V.TIME_SHIFT.stop]
    assert not shifts[0].any()
    assert shifts[1].nonzero()[:, 0].tolist() == list(range(5))  # 1..5 steps
    assert allowed[:, OFF60].all() and not allowed[:, OFF60 + 1].any()
    grammar.advance(state, torch.tensor([OFF60, V.instrument(3)]))
    allowed = grammar.allowed(state)
    assert allowed[0, V.TIME_SHIFT.start : V.TIME_SHIFT.stop].all()
    # Row 1 switched instrument: the note of instrument 0 still bounds time, and
    # cannot be released from instrument 3.
    assert allowed[1, V.TIME_SHIFT.start : V.TIME_SHIFT.stop].sum() == 5
    assert not allowed[1, V.NOTE_OFF.start : V.NOTE_OFF.stop].any()
