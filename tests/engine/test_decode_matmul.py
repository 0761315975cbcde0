"""The compiled decoding step's CPU matrix products (`stretto.engine.decode_matmul`):
each form against a float64 reference, the form each number of rows gets, and the pass
reaching the step `generate(compile_step=True)` compiles."""

from __future__ import annotations

import pytest
import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F

from stretto.engine.decode_matmul import DECODE_MATMULS, DecodeMatmuls, onednn_available
from stretto.engine.generate import DecodeStep

# rows, in features, out features, bias, dtype
CASES = [
    pytest.param(1, 63, 77, False, torch.float32, id="M1-K63-N77"),
    pytest.param(1, 256, 513, True, torch.float32, id="M1-K256-N513-bias"),
    pytest.param(2, 77, 1, False, torch.float32, id="M2-K77-N1"),
    pytest.param(3, 63, 77, True, torch.float32, id="M3-K63-N77-bias"),
    pytest.param(32, 256, 513, False, torch.float32, id="M32-K256-N513"),
    pytest.param(7, 64, 96, False, torch.bfloat16, id="M7-K64-N96-bf16"),
    pytest.param(1, 64, 96, False, torch.bfloat16, id="M1-K64-N96-bf16"),
    pytest.param(5, 63, 77, False, torch.float64, id="M5-K63-N77-f64"),
]


def _expected_form(rows: int, dtype: torch.dtype) -> str | None:
    if rows <= 2:
        return "broadcast"
    if not onednn_available():
        return None
    if dtype == torch.float32:
        return "onednn"
    if dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "onednn"
    return None


def _compiled(fn, matmuls: DecodeMatmuls):
    torch._dynamo.reset()
    options = {"post_grad_custom_post_pass": matmuls}
    return torch.compile(fn, fullgraph=True, dynamic=False, options=options)


@pytest.mark.slow
@pytest.mark.parametrize("rows, k, n, bias, dtype", CASES)
def test_each_form_is_as_close_to_float64_as_torch(rows, k, n, bias, dtype):
    """The rewritten `linear` against the float64 product: its error at most twice that
    of `F.linear` in the same dtype (plus one float32 ulp of the result's scale), and
    the form the module docstring promises for that many rows."""
    gen = torch.Generator().manual_seed(rows * 1000 + k)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    w = torch.randn(n, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    matmuls = DecodeMatmuls()
    with inductor_config.patch(fx_graph_cache=False):
        got = _compiled(F.linear, matmuls)(x, w, b)
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    plain = (F.linear(x, w, b).double() - want).abs().max()
    error = (got.double() - want).abs().max()
    scale = want.abs().max() * torch.finfo(torch.float32).eps
    assert error <= 2 * plain + scale, (
        f"error {float(error):.3g} against torch's {float(plain):.3g}"
    )
    form = _expected_form(rows, dtype)
    expected = {"broadcast": 0, "onednn": 0}
    if form is not None:
        expected[form] = 1
    assert matmuls.rewritten == expected


@pytest.mark.slow
def test_the_pass_leaves_products_of_other_shapes_and_ops_alone():
    """Only `mm` and `addmm` are rewritten: a batched product (`bmm`) stays, and still
    equals eager."""
    x, w = torch.randn(3, 2, 5), torch.randn(3, 5, 4)
    matmuls = DecodeMatmuls()
    with inductor_config.patch(fx_graph_cache=False):
        got = _compiled(torch.bmm, matmuls)(x, w)
    torch.testing.assert_close(got, torch.bmm(x, w))
    assert matmuls.rewritten == {"broadcast": 0, "onednn": 0}


def test_the_cache_key_names_the_settings():
    """Inductor caches a graph under the pass's uuid: other settings, another key."""
    keys = {DecodeMatmuls(r, o).uuid() for r in (1, 2) for o in (True, False)}
    assert len(keys) == 4
    assert DecodeMatmuls().uuid() == DECODE_MATMULS.uuid()


@pytest.mark.slow
@pytest.mark.parametrize("batch, form", [(1, "broadcast"), (3, "onednn")])
def test_the_compiled_cpu_step_does_its_products_in_the_pass(make_model, batch, form):
    """`DecodeStep(compile=True)` on the CPU compiles with `DECODE_MATMULS`: every linear
    layer of a transformer-mode model (attention in and out and feed-forward in and out
    per block, the note state's embedding, the head) comes out in the form for its rows,
    and the logits equal the eager step's."""
    if form == "onednn" and not onednn_available():
        pytest.skip("this torch has no oneDNN")
    model = make_model("transformer").eval()
    torch._dynamo.reset()
    before = dict(DECODE_MATMULS.rewritten)
    ids = torch.randint(4, 200, (batch, 9))
    caches = [model.new_cache(batch, 16), model.new_cache(batch, 16)]
    with torch.no_grad(), inductor_config.patch(fx_graph_cache=False):
        for cache in caches:
            model.decode(ids[:, :8], cache=cache)
        eager = DecodeStep(model, caches[0], None)(ids[:, 8])
        got = DecodeStep(model, caches[1], None, compile=True)(ids[:, 8])
    torch.testing.assert_close(got, eager, atol=2e-5, rtol=0)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert linears >= 4 * model.config.n_layers + 1
    done = {k: DECODE_MATMULS.rewritten[k] - before[k] for k in before}
    assert done[form] == linears, done
