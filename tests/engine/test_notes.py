"""The note state (`stretto.engine.notes`): the same numbers from the whole-sequence scan,
from the decoding tracker and from the tokenizer's token-state machine, on real music
and on random ids; and the decoder that reads it, cached and uncached alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stretto.engine import ModelConfig, MusicModel
from stretto.engine.notes import (
    AGE_BUCKETS,
    NUM_INSTRUMENTS,
    STATE_LOGIT_SCALE,
    NoteFeatures,
    NoteTracker,
    StateLogits,
    note_features,
)
from stretto.tokenizer import _state as machine


def _machine(ids: np.ndarray, real: np.ndarray | None = None):
    """(sounding [N, 88], count [N], age [N], inst [N], last [N], played [N, 16], held
    [N, 88]) after each id, read by the tokenizer's state machine: where it says a note
    started (or replaced one started at the same step), the pitch is the cell it wrote
    that id's position into, kept beside the machine as the instrument's last pitch;
    nothing is read after END or at padded positions."""
    s, sustain, notes = machine.new_state()
    last_pitch = np.full(NUM_INSTRUMENTS, -1)
    sounding, count, age, inst, last, played, held = [], [], [], [], [], [], []
    for pos, t in enumerate(ids):
        if s[machine.ENDED] == 0 and (real is None or real[pos]):
            read_at = s[machine.POS]
            did = machine.advance(s, sustain, notes, int(t))
            if did in (machine.DID_NOTE_ON, machine.DID_REPLACE):
                i = max(s[machine.INST], 0)
                (pitch,) = np.flatnonzero(notes[i, :, machine.NOTE_POS] == read_at)
                last_pitch[i] = pitch
        on = notes[:, :, machine.NOTE_ID] >= 0
        current = max(s[machine.INST], 0)
        sounding.append(on[current].copy())
        count.append(int(on.sum()))
        age.append(int(machine.oldest_age(s, notes)))
        inst.append(current)
        last.append(last_pitch[current])
        played.append(last_pitch >= 0)
        since = notes[current, :, machine.NOTE_STEP]
        held.append(np.where(on[current], s[machine.NOW] - since, -1))
    return tuple(np.array(x) for x in (sounding, count, age, inst, last, played, held))


def _assert_matches_machine(ids: torch.Tensor, real: torch.Tensor | None = None) -> None:
    f = note_features(ids, real)
    for b in range(ids.shape[0]):
        want = _machine(ids[b].numpy(), None if real is None else real[b].numpy())
        for name, got, expected in zip(NoteFeatures._fields, f, want, strict=True):
            bad = np.flatnonzero((got[b].numpy() != expected).reshape(len(expected), -1).any(1))
            assert bad.size == 0, f"row {b}: {name} differs first at position {bad[:1]}"


def _random_ids(vocab, rows: int, n: int, seed: int) -> torch.Tensor:
    """Ids drawn mostly from a few pitches, instruments and shifts, so that notes are
    struck again, released on the wrong instrument and ended mid-note; END and PAD too."""
    pool = np.r_[
        np.arange(vocab.NOTE_ON.start, vocab.NOTE_ON.start + 10),
        np.arange(vocab.NOTE_OFF.start, vocab.NOTE_OFF.start + 10),
        np.arange(vocab.TIME_SHIFT.start, vocab.TIME_SHIFT.start + 6),
        np.arange(vocab.INSTRUMENT.start, vocab.INSTRUMENT.start + 3),
        [vocab.END, vocab.PAD, vocab.VELOCITY.start],
    ]
    return torch.as_tensor(np.random.default_rng(seed).choice(pool, (rows, n)))


def test_scan_matches_the_token_state_machine_on_real_music(windows):
    ids = windows(1024, start=300)  # mid-piece: notes sound from before the window
    _assert_matches_machine(ids)
    f = note_features(ids)
    assert int(f.count.max()) > 1 and int(f.age.max()) > 16, "the windows hold chords"
    assert int(f.played.sum(-1).max()) > 1, "the windows play several instruments"


@pytest.mark.parametrize("seed", range(3))
def test_scan_matches_the_token_state_machine_on_random_ids(vocab, seed):
    ids = _random_ids(vocab, 3, 400, seed)
    _assert_matches_machine(ids)
    real = torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed)) > 0.2
    _assert_matches_machine(ids, real)


def test_the_compiled_scan_matches_the_eager_one(windows):
    """`torch.compile` of a model compiles the scan with it: the same features, on real
    music (Inductor once miscompiled it, and the note count came out negative)."""
    ids = windows(200, start=300)
    torch._dynamo.reset()
    got = torch.compile(note_features, fullgraph=True)(ids)
    for name, a, b in zip(NoteFeatures._fields, got, note_features(ids), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("padded", [False, True], ids=["every-id-real", "padded"])
def test_tracker_matches_the_scan_token_by_token(vocab, seed, padded):
    ids = _random_ids(vocab, 4, 300, seed)
    real = None
    if padded:
        real = torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed)) > 0.2
    whole = note_features(ids, real)
    fresh, loaded = NoteTracker(4, "cpu"), NoteTracker(4, "cpu")
    prompt = 120
    first = loaded.load(ids[:, :prompt], None if real is None else real[:, :prompt])
    for got, want in zip(first, whole, strict=True):
        torch.testing.assert_close(got, want[:, :prompt], rtol=0, atol=0)
    for i in range(ids.shape[1]):
        real_i = None if real is None else real[:, i]
        step = fresh.advance(ids[:, i], real_i)
        for got, want in zip(step, whole, strict=True):
            torch.testing.assert_close(got[:, 0], want[:, i], rtol=0, atol=0)
        if i >= prompt:
            step = loaded.advance(ids[:, i], real_i)
            for got, want in zip(step, whole, strict=True):
                torch.testing.assert_close(got[:, 0], want[:, i], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["transformer", "vae"])
def test_cached_decoding_reads_the_same_note_state_as_the_full_forward(make_model, windows, mode):
    model = make_model(mode, state_logits=True).eval()
    assert model.notes is not None
    _plant_gains(model.state_logits)  # they start at 0: planted, so the decoding adds them
    ids = windows(96, start=200)
    z = torch.randn(2, model.config.latent_dim) if model.encoder is not None else None
    with torch.no_grad():
        full = model.decode(ids, z=z)
        cache = model.new_cache(2, ids.shape[1])
        steps = [model.decode(ids[:, :40], z=z, cache=cache)]
        steps += [model.decode(ids[:, i : i + 1], z=z, cache=cache) for i in range(40, 96)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_a_tracker_that_misses_notes_is_caught(make_model, windows, vocab, monkeypatch):
    """Planted fault: a tracker that ignores NOTE_OFF makes cached decoding differ."""
    model = make_model("transformer").eval()
    ids = windows(64, start=200)
    with torch.no_grad():
        full = model.decode(ids)
        advance = NoteTracker.advance

        def deaf(self, tokens, real=None):
            is_off = (tokens >= vocab.NOTE_OFF.start) & (tokens < vocab.NOTE_OFF.stop)
            return advance(self, torch.where(is_off, vocab.PAD, tokens), real)

        monkeypatch.setattr(NoteTracker, "advance", deaf)
        cache = model.new_cache(2, 64)
        steps = [model.decode(ids[:, :8], cache=cache)]
        steps += [model.decode(ids[:, i : i + 1], cache=cache) for i in range(8, 64)]
    assert not torch.allclose(torch.cat(steps, 1), full, atol=1e-4)


def test_padding_does_not_enter_the_note_state(make_model, windows, vocab):
    model = make_model("transformer").eval()
    ids = windows(128, start=100)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 40:60] = False
    changed = ids.clone()
    changed[:, 40:60] = vocab.NOTE_ON.start + 30  # would sound a note if it were read
    with torch.no_grad():
        a, b = model(ids, mask), model(changed, mask)
    torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("switch", ["note_state", "instrument_state"])
def test_the_switches_and_older_configs(vocab, switch):
    on = ModelConfig.from_vocab(vocab, preset="tiny")
    off = on.replace(**{switch: False})
    module = {"note_state": "notes", "instrument_state": "instruments"}[switch]
    assert getattr(on, switch) and getattr(MusicModel(off), module) is None
    assert getattr(MusicModel(on), module) is not None
    assert MusicModel(off).new_cache(1, 8).notes is not None  # the other state reads it
    both_off = off.replace(note_state=False, instrument_state=False)
    assert MusicModel(both_off).new_cache(1, 8).notes is None
    older = on.to_dict()
    del older[switch]  # a config.json written before the switch existed
    assert getattr(ModelConfig.from_dict(older), switch) is False
    with pytest.raises(ValueError, match=switch):
        on.replace(**{switch: 1})


def test_caches_without_the_tracker_are_refused(make_model, windows):
    model = make_model("transformer")
    with pytest.raises(ValueError, match="new_cache"):
        model.decode(windows(8), cache=model.decoder.new_caches(2, 8))


@pytest.mark.parametrize(
    ("switch", "weights"),
    [
        pytest.param(
            "note_state",
            {"notes.pitches.weight", "notes.count.weight", "notes.age.weight"}
            | {"state_logits.release", "state_logits.release_age", "state_logits.restrike"},
            id="note_state",
        ),
        pytest.param(
            "instrument_state",
            {"instruments.current.weight", "instruments.last.weight", "instruments.played.weight"}
            | {"state_logits.replay"},
            id="instrument_state",
        ),
        pytest.param(
            "state_logits",
            {f"state_logits.{g}" for g in ("release", "release_age", "restrike", "replay")},
            id="state_logits",
        ),
    ],
)
def test_with_and_without_a_state_the_other_weights_start_equal(vocab, switch, weights):
    config = ModelConfig.from_vocab(vocab, preset="tiny", state_logits=True)
    torch.manual_seed(0)
    on = MusicModel(config).state_dict()
    torch.manual_seed(0)
    off = MusicModel(config.replace(**{switch: False})).state_dict()
    assert set(on) - set(off) == weights
    for name, value in off.items():
        torch.testing.assert_close(on[name], value, rtol=0, atol=0, msg=name)


def test_the_instrument_state_changes_what_the_decoder_predicts(make_model, windows, vocab):
    """The same music after other instruments, out of reach of attention (two layers of a
    32-token sliding window), is predicted differently only through the instrument state
    (the note state off: it follows the current instrument's sounding pitches too)."""
    ids = windows(200, start=200)
    other = ids.clone()
    other[:, 1:40] = torch.where(
        (ids[:, 1:40] >= vocab.INSTRUMENT.start) & (ids[:, 1:40] < vocab.INSTRUMENT.stop),
        vocab.INSTRUMENT.start + 9,
        ids[:, 1:40],
    )
    assert (other != ids).any(), "the windows change instrument in their first 40 ids"
    late = slice(140, 200)  # more than 2 x 32 tokens after the last change
    for on in (True, False):
        model = make_model("transformer", instrument_state=on, note_state=False, block=None)
        model.eval()
        with torch.no_grad():
            same = torch.allclose(model(ids)[:, late], model(other)[:, late], atol=1e-6)
        assert same is not on


def _plant_gains(state_logits: StateLogits, seed: int = 0) -> None:
    """Gains of a few nats, as training makes them (they start at 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gain in state_logits.parameters():
            gain.copy_(3 * torch.randn(gain.shape, generator=generator) / STATE_LOGIT_SCALE)


@pytest.mark.parametrize(("notes", "instruments"), [(True, True), (True, False), (False, True)])
def test_state_logits_add_each_gain_to_its_tokens_where_the_state_says(
    windows, vocab, notes, instruments
):
    """Against a per-token loop: +release[p] + release_age[bucket of p's age] on NOTE_OFF
    p and +restrike[p] on NOTE_ON p where p sounds on the current instrument, +replay[k]
    on INSTRUMENT k once k has played; every other logit as it was."""
    module = StateLogits(notes, instruments)
    _plant_gains(module)
    ids = windows(160, start=300)
    f = note_features(ids)
    logits = torch.randn(*ids.shape, vocab.size)
    got = module(logits, f)
    want = logits.clone()
    for p in range(len(vocab.NOTE_ON)):
        if notes:
            on = f.sounding[..., p]
            held = f.held[..., p]
            octave = torch.log2(held.clamp(min=0) + 1.0).floor().long()
            by_age = module.release_age[(1 + octave).clamp(max=AGE_BUCKETS - 1)]
            release = module.release[p] + by_age
            want[..., vocab.NOTE_OFF.start + p] += on * release * STATE_LOGIT_SCALE
            want[..., vocab.NOTE_ON.start + p] += on * module.restrike[p] * STATE_LOGIT_SCALE
    for k in range(NUM_INSTRUMENTS):
        if instruments:
            played = f.played[..., k]
            want[..., vocab.INSTRUMENT.start + k] += played * module.replay[k] * STATE_LOGIT_SCALE
    assert f.sounding.any() and f.played.any() and not f.played.all()
    assert len(set(f.held[f.sounding].tolist())) > 10, "notes of many ages"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (module.release is not None) is notes and (module.replay is not None) is instruments


def test_the_state_logits_switch_and_older_configs(vocab):
    assert not ModelConfig.from_vocab(vocab, preset="tiny").state_logits  # off by default
    assert MusicModel(ModelConfig.from_vocab(vocab, preset="tiny")).state_logits is None
    on = ModelConfig.from_vocab(vocab, preset="tiny", state_logits=True)
    gains = {n for n, _ in MusicModel(on).state_logits.named_parameters()}
    assert gains == {"release", "release_age", "restrike", "replay"}
    assert MusicModel(on.replace(state_logits=False)).state_logits is None
    notes_only = MusicModel(on.replace(instrument_state=False)).state_logits
    assert notes_only.replay is None and notes_only.release is not None
    # with neither state there is nothing to add
    assert MusicModel(on.replace(note_state=False, instrument_state=False)).state_logits is None
    older = on.to_dict()
    del older["state_logits"]  # a config.json written before the switch existed
    assert ModelConfig.from_dict(older).state_logits is False
    with pytest.raises(ValueError, match="state_logits"):
        on.replace(state_logits=1)


def test_a_model_saved_before_the_release_age_gains_loads_with_them_zero(vocab, windows):
    config = ModelConfig.from_vocab(vocab, preset="tiny", state_logits=True)
    torch.manual_seed(0)
    model = MusicModel(config).eval()
    _plant_gains(model.state_logits)
    older = {k: v for k, v in model.state_dict().items() if k != "state_logits.release_age"}
    loaded = MusicModel(config).eval()
    loaded.load_state_dict(older)  # strict: nothing missing, nothing unexpected
    assert (loaded.state_logits.release_age == 0).all()
    ids = windows(96, start=300)
    with torch.no_grad():
        model.state_logits.release_age.zero_()
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    del older["state_logits.release"]  # anything else missing is still an error
    with pytest.raises(RuntimeError, match="state_logits.release"):
        MusicModel(config).load_state_dict(older)


def test_real_music_asks_for_each_gain_in_its_direction(make_model, windows):
    """At the start (gains 0) the loss's gradient on real windows, that a wrongly wired
    gain would get wrong: a sounding pitch's NOTE_OFF and a played instrument are
    under-predicted (descent raises release and replay), a sounding pitch's NOTE_ON
    never comes (the tokenizer closes a note before striking it again: descent lowers
    restrike)."""
    model = make_model("transformer", state_logits=True)
    ids = windows(384, start=0)
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    g = model.state_logits
    assert g.release.grad.sum() < 0 and g.replay.grad.sum() < 0
    assert g.restrike.grad.sum() > 0
