"""torch.compile runs the model and agrees with eager execution; the compiled decode step
compiles once and takes its caches as static inputs (what CUDA graphs need)."""

from __future__ import annotations

import functools

import pytest
import torch

from stretto.engine.generate import DecodeStep
from stretto.kernels import HierarchicalKVCache
from stretto.tokenizer import Vocabulary


@pytest.mark.slow
def test_compiled_model_matches_eager(make_model, windows):
    model = make_model("vae").eval()
    ids = windows(64)
    z = torch.randn(2, model.config.latent_dim)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, z=z), model(ids, z=z), rtol=1e-4, atol=1e-4)


# -- the decode step's static inputs --------------------------------------------------------
# tiny preset (window 32) with blocks of 16; "dense" caches have no block tensors.
STEP_MODELS = {
    "transformer": dict(mode="transformer"),
    "vae": dict(mode="vae"),
    "dense": dict(mode="transformer", attention="dense"),
}


def _model(make_model, windows, kind: str, length: int = 120):
    """(model, ids `[1, length]` of real music, z `[1, latent_dim]` or None)."""
    model = make_model(**STEP_MODELS[kind]).eval()
    z = None if model.encoder is None else torch.randn(1, model.config.latent_dim)
    return model, windows(length)[:1], z


def _prefilled_step(model, ids, z, prompt: int = 20, **step_kw) -> DecodeStep:
    """A DecodeStep over fresh caches that hold `ids[:, :prompt]`, built after the
    prefill as `generate` builds it."""
    cache = model.new_cache(1, ids.shape[1])
    with torch.no_grad():
        model.decode(ids[:, :prompt], z=z, cache=cache)
    return DecodeStep(model, cache, z, **step_kw)


def _held_tensors(step: DecodeStep) -> dict[str, torch.Tensor]:
    """Every tensor the step holds outside the model, found by introspection (not by
    `HierarchicalKVCache.tensors`): each cache's tensor attributes, the note tracker's,
    and z."""
    held = {
        f"cache[{i}].{name}": value
        for i, layer in enumerate(step.cache)
        for name, value in vars(layer).items()
        if isinstance(value, torch.Tensor)
    }
    if step.cache.notes is not None:
        for name, value in vars(step.cache.notes).items():
            held[f"notes.{name}"] = value
    if step.z is not None:
        held["z"] = step.z
    return held


def _unmarked(step: DecodeStep) -> list[str]:
    return [
        name
        for name, t in _held_tensors(step).items()
        if getattr(t, "_dynamo_static_input_type", None) is None
    ]


@pytest.mark.parametrize("kind", list(STEP_MODELS))
def test_compiled_decode_step_marks_exactly_the_cache_tensors_static(make_model, windows, kind):
    model, ids, z = _model(make_model, windows, kind)
    step = _prefilled_step(model, ids, z, compile=True)
    held = _held_tensors(step)
    per_layer = 4 if kind == "dense" else 7  # pos, rings (k, v, real) + block sums, counts
    c = model.config
    tracker = 5 if c.note_state or c.instrument_state else 0  # inst, time, onsets, last, ended
    assert len(held) == model.config.n_layers * per_layer + tracker + (kind == "vae")
    assert _unmarked(step) == []
    # Unguarded: a new cache's addresses re-record a graph instead of failing a guard.
    assert {t._dynamo_static_input_type for t in held.values()} == {"unguarded"}
    assert [id(t) for t in step.static_tensors()] == [id(t) for t in held.values()]
    # Nothing of the model is marked by the step (Dynamo marks parameters itself).
    model_tensors = [*model.parameters(), *model.buffers()]
    assert not any(hasattr(t, "_dynamo_static_input_type") for t in model_tensors)


def test_eager_decode_step_marks_nothing(make_model, windows):
    step = _prefilled_step(*_model(make_model, windows, "vae"))
    assert len(_unmarked(step)) == len(_held_tensors(step))


def _forget_block_count(cache: HierarchicalKVCache) -> None:
    full = HierarchicalKVCache.tensors
    cache.tensors = lambda: tuple(t for t in full(cache) if t is not cache.block_count)


def _add_a_buffer(cache: HierarchicalKVCache) -> None:
    cache.scratch = torch.zeros(cache.batch, cache.heads)


@pytest.mark.parametrize(
    "plant",
    [_forget_block_count, _add_a_buffer],
    ids=["tensors-forgets-one", "new-buffer-not-listed"],
)
def test_a_cache_tensor_left_unmarked_is_found(make_model, windows, plant):
    """The planted fault: a cache tensor that `tensors()` does not list stays unmarked,
    and the introspection above finds it."""
    model = make_model("transformer").eval()
    cache = model.new_cache(1, 40)
    plant(cache[1])
    step = DecodeStep(model, cache, None, compile=True)
    name = "block_count" if plant is _forget_block_count else "scratch"
    assert _unmarked(step) == [f"cache[1].{name}"]


def _compile_with(monkeypatch, backend) -> None:
    """`torch.compile` as DecodeStep calls it (its arguments kept), with `backend`, which
    receives the call's `options` (or `mode`) as keywords."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))


def _recorded_graphs(monkeypatch, reset: bool = True) -> list[list]:
    """`torch.compile` as DecodeStep calls it, with a backend that appends each compiled
    graph's example inputs to the returned list and runs the graph as traced; Dynamo
    reset first (unless `reset` is False)."""
    graphs: list[list] = []

    def record(gm, example_inputs, **options):
        graphs.append(list(example_inputs))
        return gm.forward

    _compile_with(monkeypatch, record)
    if reset:
        torch._dynamo.reset()
    return graphs


class _CountingInductor:
    """Inductor with the options `torch.compile` was given, counting the frames it
    compiles."""

    def __init__(self):
        self.frame_count = 0

    def __call__(self, gm, example_inputs, options=None, mode=None):
        from torch._inductor import list_mode_options

        self.frame_count += 1
        options = {**list_mode_options(mode or "default"), **(options or {})}
        return torch._inductor.compile(gm, example_inputs, options=options)


@pytest.mark.parametrize("kind", list(STEP_MODELS))
def test_compiled_decode_step_graph_inputs_are_static_but_the_token(
    make_model, windows, kind, monkeypatch
):
    """What Dynamo lifts as graph inputs: the token ids, the model's parameters, and the
    step's static tensors, each of them marked."""
    graphs = _recorded_graphs(monkeypatch, reset=False)
    model, ids, z = _model(make_model, windows, kind)
    step = _prefilled_step(model, ids, z, compile=True)
    with torch.no_grad():
        token = ids[:, 20].clone()
        step(token)
    (inputs,) = graphs
    others = [t for t in inputs if t is not token]
    assert len(others) == len(inputs) - 1
    assert [t for t in others if getattr(t, "_dynamo_static_input_type", None) is None] == []
    params = {id(t) for t in [*model.parameters(), *model.buffers()]}
    outside = {id(t) for t in others if id(t) not in params}
    assert outside == {id(t) for t in step.static_tensors()}


@pytest.mark.slow
def test_compiled_decode_step_compiles_once_and_equals_eager(make_model, windows, monkeypatch):
    """The step as `generate(compile_step=True)` builds it, with Inductor: one compile
    for 100 tokens, each step's logits equal to the eager step's; no CUDA graph asked
    for on the CPU, so none skipped."""
    torch._dynamo.reset()
    counter = _CountingInductor()
    _compile_with(monkeypatch, counter)
    model, ids, z = _model(make_model, windows, "vae")
    eager = _prefilled_step(model, ids, z)
    compiled = _prefilled_step(model, ids, z, compile=True)
    with torch.no_grad():
        for i in range(20, ids.shape[1]):
            want = eager(ids[:, i])
            got = compiled(ids[:, i])
            torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    assert counter.frame_count == 1, f"{counter.frame_count} compiles for 100 tokens"
    assert compiled.cudagraph_skips() == 0


@pytest.mark.slow
def test_cudagraph_skips_counts_the_skips_since_the_step_was_built(make_model, windows):
    """Asked for CUDA graphs on the CPU, Inductor skips them (a CPU graph) and counts the
    skip: the step reports it, a step built afterwards does not."""
    torch._dynamo.reset()
    model, ids, z = _model(make_model, windows, "transformer")
    step = _prefilled_step(model, ids, z, compile="reduce-overhead")
    with torch.no_grad():
        step(ids[:, 20])
    assert step.cudagraph_skips() == 1
    later = _prefilled_step(model, ids, z, compile=True)
    assert later.cudagraph_skips() == 0


@pytest.mark.parametrize("bad", ["fast", 1, None, ["default"]])
def test_decode_step_rejects_unknown_compile_modes(make_model, bad):
    model = make_model("transformer").eval()
    with pytest.raises(ValueError, match="compile must be a bool or a torch.compile mode"):
        DecodeStep(model, model.new_cache(1, 8), None, compile=bad)


@pytest.mark.gpu
def test_compiled_decode_step_is_one_cuda_graph(make_model, windows):
    """On CUDA the compiled step is captured as a CUDA graph: Inductor skips none, and
    the graphed logits equal the eager step's."""
    torch._dynamo.reset()
    model, ids, z = _model(make_model, windows, "vae")
    model, ids, z = model.cuda(), ids.cuda(), z.cuda()
    eager = _prefilled_step(model, ids, z)
    graphed = _prefilled_step(model, ids, z, compile=True)
    with torch.no_grad():
        for i in range(20, ids.shape[1]):
            want = eager(ids[:, i])
            got = graphed(ids[:, i]).clone()  # the next replay overwrites the graph's output
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert graphed.cudagraph_skips() == 0, graphed.cudagraph_skip_reasons()


# -- the whole token step ------------------------------------------------------------------
def _ending_early(model, weight: float = 4.0):
    """Raise END's logit so that rows end after a few dozen tokens, each at its own
    time (a forward hook on the head, which a compiled step traces too)."""
    bias = torch.zeros(model.config.vocab_size)
    bias[Vocabulary().END] = weight
    return model.head.register_forward_hook(lambda module, args, out: out + bias)


TOKEN_CASES = {
    # mode, generate's options
    "transformer-sampled": (
        "transformer",
        dict(temperature=0.9, top_k=200, top_p=0.95, pitch_temperature=0.5, note_on="restrike"),
    ),
    "vae-sampled": ("vae", dict(temperature=1.1)),
    "vae_gan-greedy": ("vae_gan", dict(temperature=0, pitch_temperature=0.7)),
    "transformer-unconstrained": ("transformer", dict(temperature=1.0, constrained=False)),
    "transformer-mask-freeze": (
        "transformer",
        dict(note_off="mask", at_limit="freeze", max_note_steps=16, max_silence_steps=8),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TOKEN_CASES))
def test_compiled_generation_picks_the_eager_tokens(make_model, case):
    """`generate(compile_step=True)` (the whole token step under Inductor) against the
    eager step, same seed: the same tokens, in every mode, with the grammar on and off;
    sampled rows end at their own times."""
    mode, options = TOKEN_CASES[case]
    torch._dynamo.reset()
    model = make_model(mode).eval()
    handle = _ending_early(model)
    try:
        kw = dict(max_new_tokens=96, seed=7, batch_size=3, **options)
        eager = model.generate(**kw)
        compiled = model.generate(**kw, compile_step=True)
    finally:
        handle.remove()
    if options.get("temperature", 1.0) > 0:  # greedy rows of one prompt agree
        ends = {int((row == Vocabulary().END).int().argmax()) for row in eager}
        assert len(ends) > 1, "the rows end together"
    assert torch.equal(compiled, eager)


@pytest.mark.slow
def test_a_second_generate_of_the_same_shapes_does_not_compile_again(make_model, monkeypatch):
    """The compile is paid once per process: the second `generate` with the same shapes
    (a new cache, a new grammar, another seed) reuses the compiled token step; another
    number of tokens (other cache shapes) compiles once more."""
    torch._dynamo.reset()
    counter = _CountingInductor()
    _compile_with(monkeypatch, counter)
    model = make_model("transformer").eval()
    model.generate(max_new_tokens=40, seed=0, compile_step=True)
    assert counter.frame_count == 1
    model.generate(max_new_tokens=40, seed=1, compile_step=True)
    assert counter.frame_count == 1, "the second call compiled again"
    model.generate(max_new_tokens=80, seed=1, compile_step=True)  # more block sums
    assert counter.frame_count == 2


def test_compiled_token_step_graph_inputs_are_static_but_the_noise(make_model, monkeypatch):
    """What Dynamo lifts as inputs of the whole token step: the pre-drawn noise, the
    model's parameters, and every tensor the step holds, each of them marked (caches,
    note tracker, grammar state and tables, logits, ended)."""
    from stretto.engine.generate import TokenStep

    graphs = _recorded_graphs(monkeypatch)
    model = make_model("vae").eval()
    real_init = TokenStep.__init__
    steps = []

    def keep(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        steps.append(self)

    monkeypatch.setattr(TokenStep, "__init__", keep)
    model.generate(max_new_tokens=3, seed=0, batch_size=2, compile_step=True)
    (step,), (inputs,) = steps, graphs
    params = {id(t) for t in [*model.parameters(), *model.buffers()]}
    outside = [t for t in inputs if id(t) not in params]
    unmarked = [t for t in outside if getattr(t, "_dynamo_static_input_type", None) is None]
    assert [tuple(t.shape) for t in unmarked] == [(2, model.config.vocab_size)]  # the noise
    held = {id(t) for t in step.static_tensors()}
    assert {id(t) for t in outside if t is not unmarked[0]} <= held
    assert {id(t) for t in step.state.tensors()} <= held
    assert {id(t) for t in step.grammar.tables("cpu").values()} <= held
    assert id(step.logits) in held and id(step.ended) in held


@pytest.mark.slow
def test_only_the_first_token_checks_every_guard(make_model, monkeypatch):
    """A compiled generation checks Dynamo's guards in full at its first token (where a
    new shape recompiles) and only the differentiating ones for the rest, entered
    once; an eager one changes no stance. The tokens are the eager ones."""
    stances = []
    real = torch.compiler.set_stance

    def recording(*args, **kwargs):
        stances.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.compiler, "set_stance", recording)
    torch._dynamo.reset()
    model = make_model("transformer").eval()
    kw = dict(max_new_tokens=40, seed=3, batch_size=2, temperature=0.9)
    eager = model.generate(**kw)
    assert stances == []
    compiled = model.generate(**kw, compile_step=True)
    assert stances == [(("default",), {"skip_guard_eval_unsafe": True})]
    assert torch.equal(compiled, eager)


@pytest.mark.slow
def test_a_process_compiles_the_step_for_more_lengths_than_dynamos_default_limit(
    make_model, monkeypatch
):
    """Every generation length with its own cache shapes compiles the step once; a
    process that generates ten such lengths compiles ten times and fails on none
    (Dynamo's default limit for one function is 8)."""
    compiles = _recorded_graphs(monkeypatch)
    model = make_model("transformer").eval()  # blocks of 16: a new cache shape per 16
    for tokens in range(8, 8 + 10 * 16, 16):
        out = model.generate(max_new_tokens=tokens, seed=0, compile_step=True)
        assert out.shape[1] <= tokens + 1
    assert len(compiles) == 10


@pytest.mark.slow
def test_a_decode_step_used_directly_compiles_for_more_cache_shapes_than_the_default_limit(
    make_model, monkeypatch
):
    """`DecodeStep` built by hand over caches of ten shapes compiles ten times and fails
    on none: its first call, where it compiles, runs under STEP_RECOMPILE_LIMIT."""
    from stretto.engine.generate import DecodeStep

    compiles = _recorded_graphs(monkeypatch)
    model = make_model("transformer").eval()
    token = torch.tensor([model.config.vocab_size - 1])
    with torch.no_grad():
        for length in range(16, 16 + 10 * 16, 16):  # blocks of 16: a new shape each
            step = DecodeStep(model, model.new_cache(1, length), None, compile=True)
            for _ in range(3):  # later calls reuse the compiled code
                assert step(token).shape == (1, model.config.vocab_size)
    assert len(compiles) == 10
