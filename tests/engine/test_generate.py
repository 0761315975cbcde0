"""Generation: cached decoding equals the full forward, sampling edges, bad inputs."""

from __future__ import annotations

import importlib

import pytest
import torch

from stretto.engine.generate import sample
from stretto.tokenizer import validate

MODES = ("transformer", "vae", "vae_gan")
# float64 logits of the cached path against the full forward: both are the same
# arithmetic in a different order, so round-off only.
ATOL_F64 = 1e-9
ATOL_F32 = 2e-4


def _z(model, batch, dtype=torch.float64):
    if model.encoder is None:
        return None
    return torch.randn(batch, model.config.latent_dim, dtype=dtype)


def _full_logits(model, ids, z):
    return model.decode(ids, torch.ones_like(ids, dtype=torch.bool), z=z)


def _cached_logits(model, ids, z, prompt_len):
    """The same decoder forward with one cache per block: the prompt at once, then one
    token per call."""
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    got = [model.decode(ids[:, :prompt_len], z=z, cache=cache)]
    for i in range(prompt_len, ids.shape[1]):
        got.append(model.decode(ids[:, i : i + 1], z=z, cache=cache))
    return torch.cat(got, dim=1)


# tiny preset: window 32, block 16; 161 tokens wrap the 32-slot ring five times and
# leave 8 complete blocks out of the window's reach.
@pytest.mark.parametrize(
    "mode,prompt_len,n",
    [
        pytest.param("transformer", 1, 161, id="transformer-P1-N161"),
        pytest.param("transformer", 45, 161, id="transformer-P45-N161"),
        pytest.param("vae", 7, 161, id="vae-P7-N161"),
        pytest.param("vae_gan", 33, 161, id="vae_gan-P33-N161"),
    ],
)
def test_cached_logits_equal_full_forward(make_model, windows, mode, prompt_len, n):
    model = make_model(mode).double().eval()
    ids = windows(n)  # [2, N] real music
    z = _z(model, 2)
    full = _full_logits(model, ids, z)  # [2, N, V]
    got = _cached_logits(model, ids, z, prompt_len)
    torch.testing.assert_close(got, full, atol=ATOL_F64, rtol=0)


def test_cached_logits_equal_full_forward_float32(make_model, windows):
    model = make_model("transformer").eval()
    ids = windows(130)
    full = _full_logits(model, ids, None)
    got = _cached_logits(model, ids, None, 3)
    torch.testing.assert_close(got, full, atol=ATOL_F32, rtol=0)


def test_dense_attention_model_decodes_exactly(make_model, windows):
    model = make_model("transformer", attention="dense").double().eval()
    ids = windows(70)
    full = _full_logits(model, ids, None)
    got = _cached_logits(model, ids, None, 5)
    torch.testing.assert_close(got, full, atol=ATOL_F64, rtol=0)


def test_cache_memory_is_window_plus_block_sums(make_model):
    model = make_model("transformer")
    c = model.config
    for cache in model.new_cache(1, 4096):
        assert cache.k_ring.shape == (1, c.n_heads, c.window, c.d_model // c.n_heads)
        assert cache.k_block_sum.shape[2] == 4096 // c.block


@pytest.mark.parametrize("mode", MODES)
def test_greedy_generation_is_argmax_of_full_forward(make_model, mode):
    """top_k=1 and temperature=0 both decode greedily: each new token is the argmax of
    the full forward's logits over everything before it."""
    model = make_model(mode).double().eval()
    z = _z(model, 1)
    a = model.generate(max_new_tokens=90, top_k=1, seed=3, z=z, constrained=False)
    b = model.generate(max_new_tokens=90, temperature=0, seed=4, z=z, constrained=False)
    assert torch.equal(a, b)
    full = _full_logits(model, a[:, :-1], z)  # [1, N-1, V]
    assert torch.equal(full.argmax(-1)[0], a[0, 1:])


def test_seeds_reproduce_and_differ(make_model):
    model = make_model("vae").eval()
    a = model.generate(max_new_tokens=60, seed=11, batch_size=3)
    b = model.generate(max_new_tokens=60, seed=11, batch_size=3)
    c = model.generate(max_new_tokens=60, seed=12, batch_size=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"top_p": 1.0}, id="top_p-1.0"),
        pytest.param({"top_k": 10_000}, id="top_k-over-vocab"),
        pytest.param({"top_k": 774}, id="top_k-eq-vocab"),
        pytest.param({"pitch_temperature": 1.0}, id="pitch_temperature-1"),
    ],
)
def test_edges_that_change_nothing(make_model, kwargs):
    model = make_model("transformer").eval()
    plain = model.generate(max_new_tokens=50, seed=5, batch_size=2)
    assert torch.equal(model.generate(max_new_tokens=50, seed=5, batch_size=2, **kwargs), plain)


def test_the_pitch_temperature_sharpens_the_pitches_and_keeps_the_rest(make_model, windows):
    """On a model's logits for real windows under the grammar: below 1 the NOTE_ON ids'
    probabilities are sharper among themselves (entropy lower, order kept), their total
    and every other id's probability unchanged; forbidden ids stay forbidden; above 1
    flatter; a row whose NOTE_ONs are all forbidden is left as it is."""
    from stretto.engine import Grammar
    from stretto.engine.generate import policy_logits, sharpen_family
    from stretto.tokenizer import Vocabulary

    v = Vocabulary()
    on = slice(v.NOTE_ON.start, v.NOTE_ON.stop)
    model = make_model("transformer").double().eval()
    ids = windows(48)
    grammar = Grammar(v)
    state = grammar.initial_state(2, "cpu")
    for t in range(ids.shape[1]):
        grammar.advance(state, ids[:, t])
    with torch.no_grad():
        logits = model(ids)[:, -1]  # [2, V] after the windows' prefix
    policies = {"note_off": "spread", "at_limit": "release", "note_on": "off-first"}
    plain = policy_logits(logits, 1.0, grammar, state, policies)
    assert plain[:, on].isfinite().any(1).all(), "the rows allow no NOTE_ON"
    p = plain.softmax(-1)

    def entropy(q):
        return torch.special.entr(q / q.sum(-1, keepdim=True)).sum(-1)

    for t, sharper in ((0.5, True), (2.0, False)):
        q = policy_logits(logits, 1.0, grammar, state, policies, pitch_temperature=t).softmax(-1)
        torch.testing.assert_close(q[:, on].sum(-1), p[:, on].sum(-1))
        torch.testing.assert_close(q[:, : on.start], p[:, : on.start])
        torch.testing.assert_close(q[:, on.stop :], p[:, on.stop :])
        assert torch.equal(q[:, on] > 0, p[:, on] > 0)  # forbidden ids stay forbidden
        in_p_order = q[:, on].gather(-1, p[:, on].argsort(-1))
        assert (in_p_order.diff(dim=-1) >= 0).all()  # the order of the pitches is kept
        assert ((entropy(q[:, on]) < entropy(p[:, on])) == sharper).all()
    blocked = plain.clone()
    blocked[0, on] = float("-inf")
    out = sharpen_family(blocked, v.NOTE_ON, 0.5)
    assert torch.equal(out[0], blocked[0]) and not out.isnan().any()


def test_a_low_pitch_temperature_narrows_the_pitches_a_model_samples(make_model):
    """A model whose NOTE_ON logits carry a planted broad register (a bump around one
    pitch, added by a hook on the head), sampled with the same seeds with the pitch
    temperature at 1 and at 0.3: the pitches' spread narrower at 0.3 (the bump alone
    would shrink it by sqrt(0.3) = 0.55), about as many notes."""
    from stretto.tokenizer import Vocabulary

    v = Vocabulary()
    model = make_model("transformer").eval()
    bias = torch.zeros(model.config.vocab_size)
    pitch = torch.arange(len(v.NOTE_ON), dtype=torch.float32)
    bias[v.NOTE_ON.start : v.NOTE_ON.stop] = -(((pitch - 40) / 16) ** 2)
    handle = model.head.register_forward_hook(lambda module, args, out: out + bias)

    def pitches_and_notes(**kw):
        ids = model.generate(max_new_tokens=200, seed=2, batch_size=6, **kw)
        on = ids[(ids >= v.NOTE_ON.start) & (ids < v.NOTE_ON.stop)].float()
        return float(on.std()), len(on)

    try:
        spread_1, notes_1 = pitches_and_notes()
        spread_low, notes_low = pitches_and_notes(pitch_temperature=0.3)
    finally:
        handle.remove()
    assert spread_low < 0.75 * spread_1, (spread_low, spread_1)
    assert 0.5 * notes_1 < notes_low < 2 * notes_1, (notes_low, notes_1)


def test_sample_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, float("-inf")]]).repeat(400, 1)
    assert (sample(logits, top_k=1, generator=g) == 1).all()
    assert set(sample(logits, top_k=2, generator=g).tolist()) == {1, 3}
    assert (sample(logits, top_p=1e-6, generator=g) == 1).all()
    # p(1) = 0.64, p(3) = 0.24: top_p = 0.8 keeps exactly those two.
    assert set(sample(logits, top_p=0.8, generator=g).tolist()) == {1, 3}
    assert (sample(logits, temperature=0) == 1).all()
    assert 4 not in sample(logits, temperature=5.0, generator=g).tolist()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        pytest.param({"temperature": -1.0}, "temperature", id="temperature-negative"),
        pytest.param({"temperature": float("nan")}, "temperature", id="temperature-nan"),
        pytest.param({"top_k": 0}, "top_k", id="top_k-0"),
        pytest.param({"top_p": 0.0}, "top_p", id="top_p-0"),
        pytest.param({"top_p": 1.5}, "top_p", id="top_p-1.5"),
        pytest.param({"max_new_tokens": -1}, "max_new_tokens", id="max_new_tokens-negative"),
        pytest.param({"batch_size": 0}, "batch_size", id="batch_size-0"),
        pytest.param({"pitch_temperature": 0.0}, "pitch_temperature", id="pitch-T-0"),
        pytest.param({"pitch_temperature": -0.5}, "pitch_temperature", id="pitch-T-negative"),
        pytest.param({"pitch_temperature": float("inf")}, "pitch_temperature", id="pitch-T-inf"),
        pytest.param({"pitch_temperature": True}, "pitch_temperature", id="pitch-T-bool"),
    ],
)
def test_bad_sampling_arguments(make_model, kwargs, match):
    model = make_model("transformer")
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        model.generate(**kwargs)


@pytest.mark.parametrize("bad", [774, -1, 100_000], ids=["774", "-1", "100000"])
def test_prompt_with_out_of_range_ids(make_model, vocab, bad):
    model = make_model("transformer")
    with pytest.raises(ValueError, match=f"token id {bad} is outside"):
        model.generate(torch.tensor([vocab.START, bad]), max_new_tokens=3)


def test_prompt_with_pad(make_model, vocab):
    model = make_model("transformer")
    with pytest.raises(ValueError, match="PAD"):
        model.generate(torch.tensor([vocab.START, vocab.PAD]), max_new_tokens=3, constrained=False)


def test_prompt_longer_than_max_seq_len(make_model, vocab):
    model = make_model("transformer", max_seq_len=64)
    prompt = torch.full((65,), vocab.time_shift(1))
    prompt[0] = vocab.START
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 64"):
        model.generate(prompt, max_new_tokens=3)


def test_generation_past_max_seq_len(make_model, vocab):
    """Past max_seq_len the cache keeps its window-sized ring; positions go on."""
    model = make_model("transformer", max_seq_len=64).eval()
    never_end = torch.zeros(vocab.size)
    never_end[vocab.END] = float("-inf")
    model.head.register_forward_hook(lambda m, i, o: o + never_end)
    out = model.generate(max_new_tokens=200, seed=0)
    assert out.shape == (1, 201)
    assert validate(out[0]) == []


def test_model_of_another_vocabulary(make_model, vocab):
    model = make_model("transformer")
    model.config = model.config.replace(vocab_signature="not-this-one")
    with pytest.raises(ValueError, match="another vocabulary"):
        model.generate(max_new_tokens=3)


def test_prompt_breaking_the_grammar(make_model, vocab):
    model = make_model("transformer")
    prompt = torch.tensor([vocab.START, vocab.instrument(0), vocab.note_off(60)])
    with pytest.raises(ValueError, match=r"at position 2 \(orphan_note_off: NOTE_OFF\(60\) "):
        model.generate(prompt, max_new_tokens=3)
    rows = torch.tensor([[vocab.START, vocab.instrument(0)], [vocab.START, vocab.UNK]])
    with pytest.raises(ValueError, match=r"position 1 of row 1 \(special: "):
        model.generate(rows, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"position 0 \(start: INSTRUMENT\(0\) "):
        model.generate(prompt[1:], max_new_tokens=3)
    out = model.generate(prompt, max_new_tokens=3, constrained=False, seed=0)
    assert torch.equal(out[0, :3], prompt)


def test_z_checks(make_model):
    with pytest.raises(ValueError, match="takes no z"):
        make_model("transformer").generate(max_new_tokens=2, z=torch.zeros(16))
    vae = make_model("vae").eval()
    with pytest.raises(ValueError, match="latent_dim"):
        vae.generate(max_new_tokens=2, z=torch.zeros(3))
    out = vae.generate(max_new_tokens=5, z=torch.zeros(4, 16), seed=0)
    assert out.shape[0] == 4


def _planted_posterior(model, mean: float, std: float) -> None:
    model.latent_mean.fill_(mean)
    model.latent_second_moment.fill_(mean**2 + std**2)


def test_z_comes_from_the_aggregate_posterior_unless_the_prior_is_asked(make_model):
    from stretto.engine.generate import _latent

    vae = make_model("vae").eval()
    mean, std = vae.latent_distribution()  # never trained: the prior
    assert torch.equal(mean, torch.zeros(16)) and torch.equal(std, torch.ones(16))
    prior = vae.generate(max_new_tokens=24, batch_size=2, seed=3, latent="prior")
    assert torch.equal(vae.generate(max_new_tokens=24, batch_size=2, seed=3), prior)

    _planted_posterior(vae, 4.0, 0.5)
    draw = torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
    for latent, want in (("posterior", 4.0 + 0.5 * draw), ("prior", draw)):
        got = _latent(vae, None, 2, torch.Generator().manual_seed(3), "cpu", torch.float32, latent)
        torch.testing.assert_close(got, want)
    # a given z is used as it is
    z = torch.full((16,), -1.0)
    assert torch.equal(_latent(vae, z, 2, None, "cpu", torch.float32, "posterior")[1], z)
    with pytest.raises(ValueError, match="latent must be one of posterior, prior, got 'normal'"):
        vae.generate(max_new_tokens=2, latent="normal")


def test_training_encodings_move_the_aggregate_posterior_and_eval_ones_do_not(make_model, windows):
    from stretto.engine.model import LATENT_MOMENTUM

    vae = make_model("vae")
    ids = windows(64)
    mask = torch.ones_like(ids, dtype=torch.bool)
    vae.eval()
    vae.latent_stats(ids, mask)
    assert torch.equal(vae.latent_mean, torch.zeros(16))
    vae.train()
    mu, logvar = vae.latent_stats(ids, mask)
    mu, var = mu.detach(), logvar.detach().exp()
    torch.testing.assert_close(vae.latent_mean, LATENT_MOMENTUM * mu.mean(0))
    second = (1 - LATENT_MOMENTUM) + LATENT_MOMENTUM * (mu.square() + var).mean(0)
    torch.testing.assert_close(vae.latent_second_moment, second)
    # the loss of every training path encodes, so it moves them too
    before = vae.latent_mean.clone()
    vae.loss({"input_ids": ids, "attention_mask": mask})
    assert not torch.equal(vae.latent_mean, before)


def test_the_aggregate_posterior_is_saved_and_an_older_vae_loads_with_the_prior(
    make_model, tmp_path
):
    vae = make_model("vae")
    _planted_posterior(vae, 2.0, 0.25)
    vae.save(tmp_path / "vae.pt")
    loaded = type(vae).load(tmp_path / "vae.pt")
    for a, b in zip(loaded.latent_distribution(), vae.latent_distribution(), strict=True):
        torch.testing.assert_close(a, b)
    vae.save_pretrained(tmp_path / "hf")
    again = type(vae).from_pretrained(tmp_path / "hf")
    torch.testing.assert_close(again.latent_distribution()[0], torch.full((16,), 2.0))
    older = {
        k: v
        for k, v in vae.state_dict().items()
        if k not in ("latent_mean", "latent_second_moment")
    }
    fresh = make_model("vae")
    _planted_posterior(fresh, -3.0, 2.0)  # what it held before does not stay
    fresh.load_state_dict(older)  # strict
    assert torch.equal(fresh.latent_distribution()[0], torch.zeros(16))
    assert torch.equal(fresh.latent_distribution()[1], torch.ones(16))
    assert "latent_mean" not in make_model("transformer").state_dict()


def test_prompt_rows_and_batch(make_model, windows):
    model = make_model("transformer").eval()
    prompt = windows(40)  # [2, 40] real music: passes the grammar
    out = model.generate(prompt, max_new_tokens=20, seed=0)
    assert torch.equal(out[:, :40], prompt)
    one = model.generate(prompt[0], max_new_tokens=5, seed=0, batch_size=3)
    assert one.shape[0] == 3 and (one[:, :40] == prompt[0]).all()
    with pytest.raises(ValueError, match="batch sizes disagree"):
        model.generate(prompt, max_new_tokens=5, batch_size=3)


def test_ended_rows_are_padded_and_output_trimmed(make_model, vocab):
    model = make_model("transformer").eval()
    # Make END by far the likeliest token once allowed.
    handle = model.head.register_forward_hook(
        lambda m, i, o: o + 30.0 * (torch.arange(o.shape[-1]) == vocab.END)
    )
    try:
        out = model.generate(max_new_tokens=400, seed=0, batch_size=4)
    finally:
        handle.remove()
    assert out.shape[1] < 401
    for row in out.tolist():
        end = row.index(vocab.END)
        assert all(t == vocab.PAD for t in row[end + 1 :])


@pytest.mark.parametrize("mode", ["transformer", "vae"])
def test_compiled_decode_step_compiles_once_and_equals_eager(make_model, windows, mode):
    """The model's one-token step (every block's cache, the head) under
    torch.compile(fullgraph=True, dynamic=False): one compile for 100 tokens, each
    step's logits equal to the eager step's."""
    from torch._dynamo.testing import CompileCounter

    from stretto.engine.generate import DecodeStep

    torch._dynamo.reset()
    model = make_model(mode).eval()
    ids = windows(120)[:1]
    z = _z(model, 1, dtype=torch.float32)
    caches = [model.new_cache(1, 120), model.new_cache(1, 120)]
    with torch.no_grad():
        for cache in caches:
            model.decode(ids[:, :20], z=z, cache=cache)
        eager = DecodeStep(model, caches[0], z)
        compiled = DecodeStep(model, caches[1], z)
        counter = CompileCounter()
        compiled._fn = torch.compile(compiled._step, backend=counter, fullgraph=True, dynamic=False)
        for i in range(20, 120):
            want = eager(ids[:, i])
            got = compiled(ids[:, i])
            torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    assert counter.frame_count == 1, f"{counter.frame_count} compiles for 100 tokens"


def test_the_model_method_is_the_function(make_model):
    """`MusicModel.generate` forwards to `stretto.engine.generate`, documented there once:
    the same tokens, and an unknown option is refused by name."""
    from stretto.engine import generate

    model = make_model("transformer")
    a = model.generate(max_new_tokens=12, seed=3, top_p=0.9)
    b = generate(model, max_new_tokens=12, seed=3, top_p=0.9)
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="top_q"):
        model.generate(max_new_tokens=2, top_q=0.9)
    assert "note_off" in generate.__doc__ and "note_off" not in model.generate.__doc__


def test_compile_step_auto_compiles_when_the_tokens_reach_the_measured_point(
    make_model, monkeypatch
):
    """With "auto" a compiled step is asked for exactly when the tokens per row reach
    the device type's measured point, and never on a device type not measured."""
    from stretto.engine import generate

    gen = importlib.import_module("stretto.engine.generate")
    asked = []
    real = gen.TokenStep.__init__

    def record(self, *args, compile=False, **kwargs):
        asked.append(compile)
        real(self, *args, compile=False, **kwargs)  # the test runs eagerly either way

    monkeypatch.setattr(gen.TokenStep, "__init__", record)
    model = make_model("transformer")
    monkeypatch.setattr(gen, "AUTO_COMPILE_MIN_TOKENS", {"cpu": 6})
    generate(model, max_new_tokens=6, compile_step="auto")
    generate(model, max_new_tokens=5, batch_size=2, compile_step="auto")
    monkeypatch.setattr(gen, "AUTO_COMPILE_MIN_TOKENS", {"cuda": 1})
    generate(model, max_new_tokens=50, compile_step="auto")
    assert asked == [True, False, False]
    with pytest.raises(ValueError, match="compile_step must be a bool or one of auto"):
        generate(model, max_new_tokens=2, compile_step="fast")


def test_the_vae_gan_rollout_samples_through_generates_loop(make_model, windows, vocab):
    """The rollout's fakes come from `sample_tokens`; its Gumbel noise rebuilds them
    from the teacher-forced logits (what the straight-through fakes rely on), its -inf
    marks exactly what the grammar forbade, and the fakes keep the grammar."""
    from stretto.engine.grammar import Grammar
    from stretto.engine.objectives import rollout

    model = make_model("vae_gan").eval()
    c = model.config
    p, k = c.gan_prefix, c.gan_span
    ids = windows(p + k)
    z = torch.randn(2, c.latent_dim)
    torch.manual_seed(1)
    tokens, noise = rollout(model, ids, z, 0)
    assert tokens.shape == ids.shape and torch.equal(tokens[:, :p], ids[:, :p])
    assert noise.shape == (2, k, vocab.size)
    assert not torch.equal(tokens[:, p:], ids[:, p:])  # sampled, not copied
    with torch.no_grad():
        logits = model.decode(tokens, torch.ones_like(tokens, dtype=torch.bool), z=z)
    assert torch.equal((logits[:, p - 1 : -1].float() + noise).argmax(-1), tokens[:, p:])
    grammar = Grammar(vocab)
    state = grammar.initial_state(2, "cpu")
    for t in range(p + k):
        if t >= p:
            policies = dict(note_off="mask", at_limit="release", note_on="restrike")
            forbidden = grammar.sampling_logits(state, torch.zeros(2, vocab.size), **policies)
            forbidden = forbidden.isinf()
            assert torch.equal(noise[:, t - p].isinf(), forbidden), t
            assert forbidden.any()
        assert bool((grammar.broken_rule(state, tokens[:, t]) < 0).all()), t
        grammar.advance(state, tokens[:, t])
