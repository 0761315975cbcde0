"""The grammar's mask (`Grammar`): it agrees with `stretto.tokenizer.validate` rule by
rule and token by token, its generation policies (the note limit under "release" and
"freeze", the NOTE_OFF family under "spread" and "mask", a sounding pitch's NOTE_ON
under "restrike" and "off-first") do what they say, and
constrained sampling only produces valid pieces, with no note over the limit, that
decode to notes. `validate` itself is tested in tests/tokenizer/test_grammar.py."""

from __future__ import annotations

import pytest
import torch

from stretto.engine.grammar import DEFAULT_MAX_SILENCE_STEPS, Grammar
from stretto.tokenizer import MidiTokenizer, Vocabulary, validate
from stretto.tokenizer.grammar import RULES, longest_note, longest_silence

V = Vocabulary()
S, E, PAD = V.START, V.END, V.PAD
I0, VEL, ON60, OFF60 = V.instrument(0), V.velocity(64), V.note_on(60), V.note_off(60)
SHIFT = V.time_shift  # steps -> id


def test_real_music_is_valid_and_allowed_by_the_mask(windows):
    """Every next token of real music is allowed by the mask, and every token the mask
    forbids makes `validate` fail at that position."""
    ids = windows(300)  # [2, 300]
    grammar = Grammar(V)
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
                    found = validate(prefix)
                    assert found and found[-1].position == i, (i, V.describe(t))
        grammar.advance(state, ids[:, i])
    for row in ids:
        assert validate(row) == []


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


@pytest.mark.parametrize("seed", range(3), ids=[f"seed{s}" for s in range(3)])
def test_the_whole_vocabularys_rules_equal_the_rules_of_each_id(seed):
    """`allowed` and `sampling_logits` read every id's rules by broadcasting
    (`_broken_vocab`); `broken_rule` reads the given ids' rules by gathering
    (`_broken`): on sequences that break every rule, the two agree at every position,
    for every id, rule by rule (orphan_note_off apart, the others together)."""
    gen = torch.Generator().manual_seed(seed)
    rows = [_random_ids(gen, 120, start=k % 6 != 0) for k in range(24)]
    grammar = Grammar(V)
    state = grammar.initial_state(len(rows), "cpu")
    ids = torch.tensor(rows)
    cols = torch.arange(V.size).expand(len(rows), -1)
    orphan_rule = RULES.index("orphan_note_off")
    for pos in range(ids.shape[1]):
        broken = grammar._broken(state, cols)  # [R, B, V]
        others, orphan = grammar._broken_vocab(state)
        assert torch.equal(orphan, broken[orphan_rule]), pos
        rest = torch.cat([broken[:orphan_rule], broken[orphan_rule + 1 :]]).any(0)
        assert torch.equal(others, rest), pos
        grammar.advance(state, ids[:, pos])


@pytest.mark.parametrize("max_note_steps", [1, 7, 512])
@pytest.mark.parametrize("seed", range(4), ids=[f"seed{s}" for s in range(4)])
def test_the_mask_breaks_the_rule_validate_names_at_every_position(seed, max_note_steps):
    """On sequences that break every rule, the mask's first broken rule for each next
    token is the one `validate` reports at that position (none where it reports none):
    both read the same state from the same ids, violations included. The note limit is
    a generation policy, not a rule: `allowed` and `broken_rule` do not depend on it."""
    gen = torch.Generator().manual_seed(seed)
    rows = [_random_ids(gen, 120, start=k % 6 != 0) for k in range(24)]
    grammar = Grammar(V, max_note_steps=max_note_steps)
    state = grammar.initial_state(len(rows), "cpu")
    ids = torch.tensor(rows)  # [24, 120]
    found = [{x.position: RULES.index(x.rule) for x in validate(row)} for row in rows]
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
    """From valid prefixes (a random walk over the mask, with long notes and past END),
    every one of the 774 next tokens: allowed <=> appending it keeps `validate` clean."""
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
                clean = validate([*prefix, t]) == []
                assert bool(allowed[t]) == clean, (step, V.describe(t))
        logits = (torch.randn(V.size, generator=gen) + bias).masked_fill(~allowed, -torch.inf)
        token = int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
        grammar.advance(state, torch.tensor([token]))
        prefix.append(token)
    assert validate(prefix) == []


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


POLICIES = [
    pytest.param("spread", "release", "off-first", id="spread-release-off-first"),
    pytest.param("mask", "freeze", "restrike", id="mask-freeze-restrike"),
    pytest.param("spread", "freeze", "off-first", id="spread-freeze-off-first"),
    pytest.param("mask", "release", "restrike", id="mask-release-restrike"),
]


@pytest.mark.parametrize("note_off, at_limit, note_on", POLICIES)
@pytest.mark.parametrize("mode", ["transformer", "vae", "vae_gan"])
def test_untrained_constrained_outputs_are_valid(make_model, mode, note_off, at_limit, note_on):
    model = make_model(mode).eval()
    for seed in range(3):
        # A short note limit so the limit's policy is taken often.
        out = model.generate(
            max_new_tokens=160,
            seed=seed,
            batch_size=8,
            max_note_steps=24,
            max_silence_steps=16,
            top_p=0.98,
            note_off=note_off,
            at_limit=at_limit,
            note_on=note_on,
        )
        for row in out:
            assert validate(row) == [], (seed, validate(row))
            assert longest_note(row) <= 24, seed
            assert longest_silence(row) <= 16, seed


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


def _state_after(grammar: Grammar, rows: list[list[int]]):
    state = grammar.initial_state(len(rows), "cpu")
    for t in torch.tensor(rows).T:
        grammar.advance(state, t)
    return state


def _allowed(grammar, state, note_off="mask", at_limit="freeze") -> torch.Tensor:
    logits = torch.zeros(state.inst.shape[0], V.size)
    out = grammar.sampling_logits(
        state, logits, note_off=note_off, at_limit=at_limit, note_on="restrike"
    )
    return out > float("-inf")


def test_freeze_at_the_note_limit():
    """ "freeze": a note as old as the limit blocks every TIME_SHIFT until it is
    released; a younger one blocks exactly the shifts that would take it past the
    limit. The rules alone (`allowed`) block no shift."""
    grammar = Grammar(V, max_note_steps=20)
    state = _state_after(grammar, [[S, I0, VEL, ON60, SHIFT(20)], [S, I0, VEL, ON60, SHIFT(15)]])
    assert grammar.allowed(state)[:, V.TIME_SHIFT.start : V.TIME_SHIFT.stop].all()
    allowed = _allowed(grammar, state)
    shifts = allowed[:, V.TIME_SHIFT.start : V.TIME_SHIFT.stop]
    assert not shifts[0].any()
    assert shifts[1].nonzero()[:, 0].tolist() == list(range(5))  # 1..5 steps
    assert allowed[:, OFF60].all() and not allowed[:, OFF60 + 1].any()
    grammar.advance(state, torch.tensor([OFF60, V.instrument(3)]))
    allowed = _allowed(grammar, state)
    # Row 0 released its note: nothing sounds, so the silence limit bounds time instead
    free = allowed[0, V.TIME_SHIFT.start : V.TIME_SHIFT.stop].nonzero()[:, 0].tolist()
    assert free == list(range(DEFAULT_MAX_SILENCE_STEPS))
    # Row 1 switched instrument: the note of instrument 0 still bounds time, and
    # cannot be released from instrument 3.
    assert allowed[1, V.TIME_SHIFT.start : V.TIME_SHIFT.stop].sum() == 5
    assert not allowed[1, V.NOTE_OFF.start : V.NOTE_OFF.stop].any()


def test_release_at_the_note_limit_forces_the_oldest_note_off():
    """ "release": below the limit it blocks the same shifts as "freeze"; once the oldest
    note reaches the limit the only next token is its NOTE_OFF (on its instrument) or
    the INSTRUMENT that gets there, then the NOTE_OFF; after it time moves again."""
    grammar = Grammar(V, max_note_steps=20)
    on62 = V.note_on(62)
    rows = [
        [S, I0, VEL, ON60, SHIFT(4), VEL, on62, SHIFT(16)],  # 60 is 20 steps old, on instrument 0
        [S, I0, VEL, ON60, SHIFT(4), V.instrument(3), on62, SHIFT(16)],  # on instrument 3
        [S, I0, VEL, ON60, SHIFT(4), VEL, on62, SHIFT(15)],  # 19 steps: one more step allowed
    ]
    state = _state_after(grammar, rows)
    allowed = _allowed(grammar, state, at_limit="release")
    assert allowed[0].nonzero()[:, 0].tolist() == [OFF60]
    assert allowed[1].nonzero()[:, 0].tolist() == [I0]
    assert allowed[2, V.TIME_SHIFT.start : V.TIME_SHIFT.stop].nonzero()[:, 0].tolist() == [0]
    assert allowed[2, V.NOTE_ON.start : V.NOTE_OFF.stop].any()
    grammar.advance(state, torch.tensor([OFF60, I0, SHIFT(1)]))
    allowed = _allowed(grammar, state, at_limit="release")
    # row 0: 62 is 16 steps old, 4 more allowed; row 1: now on instrument 0, the NOTE_OFF;
    # row 2: 60 reached the limit, its release is forced
    assert allowed[0, V.TIME_SHIFT.start : V.TIME_SHIFT.stop].sum() == 4
    assert allowed[1].nonzero()[:, 0].tolist() == [OFF60]
    assert allowed[2].nonzero()[:, 0].tolist() == [OFF60]


def test_release_never_freezes_time():
    """Greedy sampling from logits that want the longest TIME_SHIFT, then NOTE_ONs:
    under "release" time keeps moving and no note outlives the limit; under "freeze" the
    same logits stop time for good."""
    bias = torch.full((1, V.size), -10.0)
    bias[0, V.NOTE_ON.start : V.NOTE_ON.stop] = 0.0
    bias[0, V.TIME_SHIFT.start : V.TIME_SHIFT.stop] = torch.linspace(1.0, 5.0, len(V.TIME_SHIFT))
    bias[0, I0] = bias[0, VEL] = -5.0
    times = {}
    for at_limit in ("release", "freeze"):
        grammar = Grammar(V, max_note_steps=30)
        state = _state_after(grammar, [[S, I0, VEL, ON60]])
        ids = [S, I0, VEL, ON60]
        for _ in range(200):
            z = grammar.sampling_logits(
                state, bias, note_off="spread", at_limit=at_limit, note_on="restrike"
            )
            token = z.argmax(-1)
            grammar.advance(state, token)
            ids.append(int(token))
        assert validate(ids) == []
        assert longest_note(ids) <= 30
        shifts = [t for t in ids[-50:] if t in V.TIME_SHIFT]
        times[at_limit] = len(shifts)
    assert times["release"] > 0 and times["freeze"] == 0


def test_spread_moves_the_note_off_family_onto_the_sounding_pitches():
    """A planted case: the model puts 60% on the NOTE_OFF of a silent pitch, 10% on each
    of two sounding pitches' NOTE_OFFs (in the ratio 3:1 between them), 20% elsewhere.
    "spread" keeps the family's 80% and splits it 3:1 over the sounding pitches; the
    other ids keep their probability; "mask" renormalizes the silent 60% over all."""
    grammar = Grammar(V)
    on62, off62, off64 = V.note_on(62), V.note_off(62), V.note_off(64)
    state = _state_after(grammar, [[S, I0, VEL, ON60, on62, SHIFT(2)]])
    allowed = grammar.allowed(state)[0]
    p = torch.full((V.size,), 1e-30)
    p[off64] = 0.60  # silent pitch
    p[OFF60], p[off62] = 0.075, 0.025  # sounding pitches
    p[V.TIME_SHIFT.start] = 0.20
    rest = allowed.clone()
    rest[[off64, OFF60, off62, V.TIME_SHIFT.start]] = False
    p[rest] = 0.10 / rest.sum()
    p = p / p.sum()
    logits = p.log()[None]
    spread = grammar.sampling_logits(
        state, logits, note_off="spread", at_limit="release", note_on="restrike"
    )
    q = spread.softmax(-1)[0]
    # the ids the rules and the note limit allow (the limit drops the two longest
    # shifts), plus the silent pitch's NOTE_OFF
    kept = _allowed(grammar, state, at_limit="release")[0]
    assert int((allowed & ~kept).sum()) == 2
    total = float(p[kept].sum() + p[off64])
    assert torch.allclose(q[OFF60], torch.tensor(0.70 * 0.75 / total), rtol=1e-4)
    assert torch.allclose(q[off62], torch.tensor(0.70 * 0.25 / total), rtol=1e-4)
    assert q[off64] == 0
    assert torch.allclose(q[V.TIME_SHIFT.start], torch.tensor(0.20 / total), rtol=1e-4)
    assert torch.allclose(q.sum(), torch.tensor(1.0))
    masked = grammar.sampling_logits(
        state, logits, note_off="mask", at_limit="release", note_on="restrike"
    )
    r = masked.softmax(-1)[0]
    assert torch.allclose(r[OFF60], torch.tensor(0.075 / (total - 0.60)), rtol=1e-4)
    # nothing sounds on the current instrument: the family gets nothing
    grammar.advance(state, torch.tensor([V.instrument(2)]))
    q = grammar.sampling_logits(
        state, logits, note_off="spread", at_limit="release", note_on="restrike"
    )
    assert (q[0, V.NOTE_OFF.start : V.NOTE_OFF.stop] == float("-inf")).all()
    masked = grammar.sampling_logits(
        state, logits, note_off="mask", at_limit="release", note_on="restrike"
    )
    assert torch.allclose(q.softmax(-1), masked.softmax(-1))


def test_spread_is_batched_and_keeps_the_family_mass():
    """Random logits over a batch of states: under "spread" the sounding NOTE_OFFs hold
    exactly the probability the whole (unmasked) NOTE_OFF family had, split in the
    model's proportions; rows with nothing sounding match "mask"."""
    grammar = Grammar(V)
    on62 = V.note_on(62)
    rows = [
        [S, I0, VEL, ON60, on62, SHIFT(3)],
        [S, I0, VEL, ON60, V.instrument(5), SHIFT(3)],  # nothing sounds on instrument 5
        [S, I0, VEL, ON60, SHIFT(3), OFF60],
    ]
    state = _state_after(grammar, rows)
    logits = torch.randn(3, V.size, generator=torch.Generator().manual_seed(0)) * 3
    allowed = grammar.allowed(state)
    off = torch.zeros(V.size, dtype=torch.bool)
    off[V.NOTE_OFF.start : V.NOTE_OFF.stop] = True
    q = grammar.sampling_logits(
        state, logits, note_off="spread", at_limit="release", note_on="restrike"
    ).softmax(-1)
    m = grammar.sampling_logits(
        state, logits, note_off="mask", at_limit="release", note_on="restrike"
    ).softmax(-1)
    kept = _allowed(grammar, state, at_limit="release")  # the rules and the note limit
    widened = logits.masked_fill(~(kept | off), float("-inf")).softmax(-1)
    sounding = allowed[0] & off
    assert sounding.sum() == 2
    assert torch.allclose(q[0, sounding].sum(), widened[0, off].sum(), rtol=1e-5)
    ratio = logits[0, sounding].softmax(-1)
    assert torch.allclose(q[0, sounding] / q[0, sounding].sum(), ratio, rtol=1e-5)
    assert torch.allclose(q[0, ~off], widened[0, ~off], rtol=1e-5, atol=1e-9)
    assert torch.allclose(q[1:], m[1:], atol=1e-7)


def test_off_first_moves_a_sounding_pitchs_note_on_onto_its_note_off():
    """A planted case: pitches 60 and 62 sound. The model puts 30% on striking 60
    again, 10% on its NOTE_OFF, 10% on a silent pitch's NOTE_ON, the rest elsewhere.
    "off-first" gives NOTE_OFF 60 the 40% and NOTE_ON 60 nothing, 62 likewise, and
    leaves every other id (the silent pitch's NOTE_ON) as "restrike" has it; on another
    instrument, where nothing sounds, the two are the same."""
    grammar = Grammar(V)
    on62, on64, off62 = V.note_on(62), V.note_on(64), V.note_off(62)
    state = _state_after(grammar, [[S, I0, VEL, ON60, on62, SHIFT(2)]])
    p = torch.full((V.size,), 1e-6)
    p[ON60], p[OFF60], p[on64], p[off62] = 0.30, 0.10, 0.10, 0.05
    logits = (p / p.sum()).log()[None]
    policies = dict(note_off="mask", at_limit="freeze")
    restrike = grammar.sampling_logits(state, logits, **policies, note_on="restrike").softmax(-1)
    first = grammar.sampling_logits(state, logits, **policies, note_on="off-first").softmax(-1)
    assert first[0, ON60] == 0 and restrike[0, ON60] > 0.25
    assert torch.allclose(first[0, OFF60], restrike[0, OFF60] + restrike[0, ON60])
    assert first[0, on62] == 0
    assert torch.allclose(first[0, off62], restrike[0, off62] + restrike[0, on62])
    others = torch.ones(V.size, dtype=torch.bool)
    others[[ON60, OFF60, on62, off62]] = False
    assert torch.allclose(first[0, others], restrike[0, others])
    assert first[0, on64] > 0.08
    grammar.advance(state, torch.tensor([V.instrument(2)]))
    restrike = grammar.sampling_logits(state, logits, **policies, note_on="restrike")
    assert torch.equal(
        grammar.sampling_logits(state, logits, **policies, note_on="off-first"), restrike
    )


@pytest.mark.parametrize("note_off", ["spread", "mask"])
def test_off_first_is_batched_and_keeps_the_mass(note_off):
    """Random logits over states that sound, that sound on another instrument and that
    are at the note limit ("release" forces one id): "off-first" equals "restrike" with
    each sounding pitch's NOTE_ON probability added to its NOTE_OFF."""
    grammar = Grammar(V, max_note_steps=4)
    on62 = V.note_on(62)
    rows = [
        [S, I0, VEL, ON60, on62, SHIFT(3)],
        [S, I0, VEL, ON60, V.instrument(5), SHIFT(3)],
        [S, I0, VEL, ON60, on62, SHIFT(4)],  # at the limit: only OFF60 may come
    ]
    state = _state_after(grammar, rows)
    logits = torch.randn(3, V.size, generator=torch.Generator().manual_seed(1)) * 3
    policies = dict(note_off=note_off, at_limit="release")
    r = grammar.sampling_logits(state, logits, **policies, note_on="restrike").softmax(-1)
    f = grammar.sampling_logits(state, logits, **policies, note_on="off-first").softmax(-1)
    on, off = slice(V.NOTE_ON.start, V.NOTE_ON.stop), slice(V.NOTE_OFF.start, V.NOTE_OFF.stop)
    expected = r.clone()
    moves = (r[:, off] > 0) & (r[:, on] > 0)
    assert moves.sum(1).tolist() == [2, 0, 0]
    expected[:, off] += torch.where(moves, r[:, on], 0.0)
    expected[:, on] = torch.where(moves, 0.0, r[:, on])
    assert torch.allclose(f, expected, atol=1e-7)
    assert torch.allclose(f.sum(-1), torch.ones(3))


def test_off_first_generates_no_struck_again_note(make_model):
    """An untrained model, which strikes sounding pitches again under "restrike", never
    does under "off-first", and its pieces stay valid."""
    from stretto.tokenizer import _state as st

    model = make_model("transformer").eval()

    def struck_again(note_on: str) -> int:
        ids = model.generate(max_new_tokens=300, seed=0, batch_size=4, note_on=note_on)
        count = 0
        for row in ids.tolist():
            assert validate(row) == []
            s, sustain, notes = st.new_state()
            for t in row:
                if V.NOTE_ON.start <= t < V.NOTE_ON.stop:
                    inst = max(int(s[st.INST]), 0)
                    count += int(notes[inst, t - V.NOTE_ON.start, st.NOTE_ID] >= 0)
                if st.advance(s, sustain, notes, t) == st.DID_END:
                    break
        return count

    assert struck_again("restrike") > 0
    assert struck_again("off-first") == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"note_off": "drop"}, "note_off must be one of", id="note_off"),
        pytest.param({"at_limit": "stop"}, "at_limit must be one of", id="at_limit"),
        pytest.param({"note_on": "again"}, "note_on must be one of", id="note_on"),
        pytest.param({"note_off": None}, "note_off", id="note_off-None"),
    ],
)
def test_bad_policies_raise(make_model, kwargs, match):
    model = make_model("transformer").eval()
    with pytest.raises(ValueError, match=match):
        model.generate(max_new_tokens=4, **kwargs)


@pytest.mark.parametrize("constrained", [True, False])
def test_a_generated_piece_holds_a_note_before_its_end(make_model, vocab, constrained):
    """END is a data token anywhere after START (a window of real music may end with no
    NOTE_ON in it); generation forbids it until a note sounded. A model that always
    wants to stop shows the policy: with it the piece plays a note, without it the
    piece ends at once."""
    model = make_model("transformer").eval()
    stop = torch.zeros(vocab.size)
    stop[vocab.END] = 50.0
    model.head.register_forward_hook(lambda module, inputs, out: out + stop)
    ids = model.generate(max_new_tokens=40, seed=0, constrained=constrained)[0].tolist()
    end = ids.index(vocab.END)
    notes = [t for t in ids[:end] if vocab.NOTE_ON.start <= t < vocab.NOTE_ON.stop]
    if constrained:
        assert notes, ids
        assert validate(ids) == []
    else:
        assert end == 1 and not notes
