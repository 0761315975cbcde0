"""The public op and its torch fallback against the float64 reference, output and gradients.

Every fast-vs-reference comparison goes through `assert_close_to_reference`: the error
of the chunked fallback against the float64 reference is at most 2x that of the dense
reference run in the same dtype, plus the policy's floor.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from stretto.kernels import hierarchical_attention
from stretto.kernels.testing import assert_close_to_reference
from stretto.kernels.wha import chunked, op
from tests.kernels.attention_cases import CASES, Case, case_id, padding_mask

# The subset run in float32 and bfloat16 (bfloat16 matmuls are slow on CPU).
LOW_PRECISION = [CASES[0], CASES[3], CASES[7], CASES[9], CASES[11]]


def run(q, k, v, mask, case, backend, upstream):
    """(o, dq, dk, dv) of one backend; `upstream` None means o.sum().backward()."""
    _, _, _, _, window, block, causal, _ = case
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    o = hierarchical_attention(
        q, k, v, window=window, block=block, causal=causal, key_padding_mask=mask, backend=backend
    )
    if upstream is None:
        o.sum().backward()  # a stride-0 upstream gradient
    else:
        o.backward(upstream.to(o.dtype))
    return o.detach(), q.grad, k.grad, v.grad


def check_against_reference(case, dtype, upstream_kind):
    b, h, n, d, _, _, _, pad = case
    q, k, v = (torch.randn(b, h, n, d).to(dtype) for _ in range(3))
    mask = padding_mask(pad, b, n)
    upstream = None if upstream_kind == "sum" else torch.randn(b, h, n, d).to(dtype)
    fast = run(q, k, v, mask, case, "torch", upstream)
    plain = run(q, k, v, mask, case, "reference", upstream)
    ref = run(q.double(), k.double(), v.double(), mask, case, "reference", upstream)
    for name, f, p, r in zip(("o", "dq", "dk", "dv"), fast, plain, ref, strict=True):
        assert f.dtype == dtype
        assert_close_to_reference(f, p, r, name=name)


@pytest.mark.parametrize("upstream", ["sum", "random"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_torch_fallback_float64(case, upstream, poisoned):
    check_against_reference(case, torch.float64, upstream)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", LOW_PRECISION, ids=case_id)
def test_torch_fallback_low_precision(case, dtype, poisoned):
    check_against_reference(case, dtype, "random")


def test_rows_that_see_nothing_are_zero_with_zero_gradients(poisoned):
    q, k, v = (torch.randn(2, 2, 9, 16, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0] = False  # batch row 0 sees nothing at all
    mask[1, :3] = False  # causal, window 2, block 3: queries 0..2 of row 1 see nothing
    o = hierarchical_attention(q, k, v, window=2, block=3, key_padding_mask=mask, backend="torch")
    o.sum().backward()
    assert not o.isnan().any()
    assert torch.equal(o[0], torch.zeros_like(o[0]))
    assert torch.equal(o[1, :, :3], torch.zeros_like(o[1, :, :3]))
    assert (o[1, :, 3:].abs().sum(-1) > 0).all()
    for grad in (q.grad, k.grad, v.grad):
        assert not grad.isnan().any()
        assert torch.equal(grad[0], torch.zeros_like(grad[0]))
    assert torch.equal(q.grad[1, :, :3], torch.zeros_like(q.grad[1, :, :3]))


def test_deterministic_across_runs():
    case = CASES[9]
    b, h, n, d, window, block, causal, pad = case
    q, k, v, up = (torch.randn(b, h, n, d) for _ in range(4))
    mask = padding_mask(pad, b, n)
    first = run(q, k, v, mask, case, "torch", up)
    second = run(q, k, v, mask, case, "torch", up)
    for a, b_ in zip(first, second, strict=True):
        assert torch.equal(a, b_)


def test_auto_backend_on_cpu_is_the_torch_fallback():
    q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
    auto = hierarchical_attention(q, k, v, window=5, block=4)
    fallback = hierarchical_attention(q, k, v, window=5, block=4, backend="torch")
    assert torch.equal(auto, fallback)


def test_scale_is_used():
    q, k, v = (torch.randn(1, 1, 30, 16, dtype=torch.float64) for _ in range(3))
    kw = dict(window=4, block=3, scale=0.7)
    got = hierarchical_attention(q, k, v, backend="torch", **kw)
    want = hierarchical_attention(q, k, v, backend="reference", **kw)
    default = hierarchical_attention(q, k, v, backend="torch", window=4, block=3)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert not torch.allclose(got, default)


def test_non_contiguous_inputs():
    q, k, v = (torch.randn(1, 20, 2, 16, dtype=torch.float64).transpose(1, 2) for _ in range(3))
    got = hierarchical_attention(q, k, v, window=4, block=3, backend="torch")
    want = hierarchical_attention(q, k, v, window=4, block=3, backend="reference")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# -- the Triton backend through the same custom op (fused.py's own tests are elsewhere) --


def test_triton_backend_through_the_public_op(kernel_device, poisoned):
    if op.fused_import_error() is not None:
        pytest.skip(f"fused kernels not importable: {op.fused_import_error()}")
    case = Case(1, 2, 37, 16, 8, 4, True, "middle")
    b, h, n, d, *_ = case
    q, k, v, up = (torch.randn(b, h, n, d, device=kernel_device) for _ in range(4))
    mask = padding_mask("middle", b, n).to(kernel_device)
    fast = run(q, k, v, mask, case, "triton", up)
    plain = run(q, k, v, mask, case, "reference", up)
    ref = run(q.double(), k.double(), v.double(), mask, case, "reference", up)
    for name, f, p, r in zip(("o", "dq", "dk", "dv"), fast, plain, ref, strict=True):
        assert_close_to_reference(f, p, r, name=name)


# -- torch.compile --


# Inductor itself touches the deprecated torch.jit.script_method on import (torch 2.13).
INDUCTOR_JIT_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


class _Attend(torch.nn.Module):
    def forward(self, q, k, v, mask):
        return hierarchical_attention(q, k, v, window=6, block=4, key_padding_mask=mask)


@pytest.mark.slow
@pytest.mark.filterwarnings(INDUCTOR_JIT_WARNING)
def test_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    q, k, v, up = (torch.randn(2, 2, 45, 16, dtype=torch.float64) for _ in range(4))
    mask = padding_mask("middle", 2, 45)
    compiled = torch.compile(_Attend(), fullgraph=True)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    o = compiled(*leaves, mask)
    o.backward(up)
    case = Case(2, 2, 45, 16, 6, 4, True, "middle")
    ref = run(q, k, v, mask, case, "reference", up)
    torch.testing.assert_close(o.detach(), ref[0], rtol=0, atol=1e-10)
    for leaf, want in zip(leaves, ref[1:], strict=True):
        torch.testing.assert_close(leaf.grad, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("block", [4, 0], ids=["g4", "gNone"])
def test_fake_kernels_give_the_real_shapes_and_contiguous_outputs(block):
    """The fakes (what torch.compile traces with) match the real outputs' shapes,
    dtypes and strides: fresh contiguous tensors, also for non-contiguous inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    q = torch.randn(2, 17, 3, 16).transpose(1, 2)  # [B, H, N, D], not contiguous
    real = torch.ones(2, 17, dtype=torch.bool)
    args = (q, q, q, real, 4, block, True, 0.25, "torch")
    outs = op.wha_forward(*args)
    grads = op.wha_backward(q, *args[:4], *outs, *args[4:])
    with FakeTensorMode() as mode:
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        fake_outs = op.wha_forward(*fake_args)
        fake_grads = op.wha_backward(fake_args[0], *fake_args[:4], *fake_outs, *fake_args[4:])
    for fake, real_out in zip((*fake_outs, *fake_grads), (*outs, *grads), strict=True):
        assert (fake.shape, fake.dtype) == (real_out.shape, real_out.dtype)
        assert fake.is_contiguous() and real_out.is_contiguous()
        assert fake.stride() == real_out.stride()


def test_custom_op_passes_opcheck():
    q, k, v = (torch.randn(1, 2, 11, 16, requires_grad=True) for _ in range(3))
    real = torch.rand(1, 11) > 0.2
    torch.library.opcheck(op.wha_forward, (q, k, v, real, 3, 3, True, 0.25, "torch"))


# -- memory: never an N x N intermediate --


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_fallback_never_allocates_n_by_n(causal):
    b, h, n, d, window, block = 1, 2, 1024, 16, 16, 64
    q, k, v, do = (torch.randn(b, h, n, d) for _ in range(4))
    mask = torch.rand(b, n) > 0.1
    kw = dict(window=window, block=block, causal=causal, scale=0.25)
    with _LargestTensor() as tracker:
        fwd = chunked.chunked_forward(q, k, v, mask, **kw)
        chunked.chunked_backward(do, q, k, v, mask, *fwd, **kw)
    chunk = chunked.chunk_size(n, window)
    band = 3 * chunk + (window - 1 if causal else 2 * window - 2)  # widened to whole chunks
    nb = n // block
    # Scores take N x (band + NB) per head; a band of keys takes N / chunk x band x D.
    bound = b * h * max(n * (band + nb), (n // chunk) * band * d, n * d)
    assert tracker.largest <= bound
    assert tracker.largest * 8 < b * h * n * n


# -- validation --

_GOOD = dict(window=4, block=2, causal=True, key_padding_mask=None, scale=None, backend="torch")


def _qkv(shape=(1, 2, 8, 16), dtype=torch.float32):
    return [torch.randn(*shape, dtype=dtype) for _ in range(3)]


def _bad(**changes):
    return {**_GOOD, **changes}


@pytest.mark.parametrize(
    ("tensors", "kwargs", "match"),
    [
        pytest.param(
            [torch.randn(2, 8, 16)] * 3, _GOOD, r"rank 4 \[B, H, N, D\], got rank 3", id="rank"
        ),
        pytest.param(
            [torch.randn(1, 2, 8, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 8, 16)],
            _GOOD,
            r"k \(1, 2, 9, 16\)",
            id="shape",
        ),
        pytest.param(_qkv((1, 2, 0, 16)), _GOOD, r"non-empty.*\(1, 2, 0, 16\)", id="empty"),
        pytest.param(
            [torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16).double(), torch.randn(1, 2, 8, 16)],
            _GOOD,
            "float32, torch.float64",
            id="dtype-mismatch",
        ),
        pytest.param(
            [torch.ones(1, 2, 8, 16, dtype=torch.int32)] * 3, _GOOD, "torch.int32", id="int-dtype"
        ),
        pytest.param(_qkv(), _bad(window=0), "window must be an int >= 1, got 0", id="window0"),
        pytest.param(_qkv(), _bad(window=2.0), "got 2.0", id="window-float"),
        pytest.param(
            _qkv(), _bad(block=0), "block must be None or an int >= 1, got 0", id="block0"
        ),
        pytest.param(_qkv(), _bad(block=-3), "got -3", id="block-negative"),
        pytest.param(_qkv(), _bad(causal=1), "causal must be a bool, got 1", id="causal-int"),
        pytest.param(_qkv(), _bad(scale=float("nan")), "got nan", id="scale-nan"),
        pytest.param(_qkv(), _bad(backend="cuda"), "'cuda'", id="backend"),
        pytest.param(
            _qkv(),
            _bad(key_padding_mask=torch.ones(1, 8)),
            "torch.bool.*got torch.float32",
            id="mask-dtype",
        ),
        pytest.param(
            _qkv(),
            _bad(key_padding_mask=torch.ones(1, 9, dtype=torch.bool)),
            r"\[B, N\] = \(1, 8\), got \(1, 9\)",
            id="mask-shape",
        ),
        pytest.param(
            _qkv(),
            _bad(key_padding_mask=torch.ones(2, 1, 8, dtype=torch.bool)),
            r"got \(2, 1, 8\)",
            id="mask-rank",
        ),
    ],
)
def test_validation_errors(tensors, kwargs, match):
    with pytest.raises(ValueError, match=match):
        hierarchical_attention(*tensors, **kwargs)


def test_numpy_integers_are_accepted():
    import numpy as np

    q, k, v = _qkv()
    got = hierarchical_attention(q, k, v, window=np.int64(4), block=np.int32(2), backend="torch")
    want = hierarchical_attention(q, k, v, window=4, block=2, backend="torch")
    assert torch.equal(got, want)


def test_device_mismatch_is_a_value_error():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="one device.*meta"):
        hierarchical_attention(q, k.to("meta"), v, window=4)


def test_triton_limits_are_named():
    if op.fused_import_error() is not None:
        with pytest.raises(NotImplementedError, match="backend='triton' is unavailable"):
            hierarchical_attention(*_qkv(), window=4, backend="triton")
        return
    with pytest.raises(NotImplementedError, match="float64"):
        hierarchical_attention(*_qkv(dtype=torch.float64), window=4, backend="triton")
    with pytest.raises(NotImplementedError, match="head dims 16..128, got D=8"):
        hierarchical_attention(*_qkv((1, 1, 8, 8)), window=4, backend="triton")


class _AttendTriton(torch.nn.Module):
    def forward(self, q, k, v, mask):
        return hierarchical_attention(
            q, k, v, window=6, block=4, key_padding_mask=mask, backend="triton"
        )


@pytest.mark.slow
@pytest.mark.filterwarnings(INDUCTOR_JIT_WARNING)
def test_compile_fullgraph_with_the_triton_backend(kernel_device):
    if op.fused_import_error() is not None:
        pytest.skip(f"fused kernels not importable: {op.fused_import_error()}")
    torch._dynamo.reset()
    q, k, v, up = (torch.randn(1, 2, 29, 16, device=kernel_device) for _ in range(4))
    mask = padding_mask("end", 1, 29).to(kernel_device)
    compiled = torch.compile(_AttendTriton(), fullgraph=True)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    o = compiled(*leaves, mask)
    o.backward(up)
    case = Case(1, 2, 29, 16, 6, 4, True, "end")
    eager = run(q, k, v, mask, case, "triton", up)
    torch.testing.assert_close(o.detach(), eager[0], rtol=0, atol=0)
    for leaf, want in zip(leaves, eager[1:], strict=True):
        torch.testing.assert_close(leaf.grad, want, rtol=0, atol=0)


# -- CUDA sweep (skipped without a GPU): the auto backend and the fallback on device --


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("d", [64, 128], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("n", [512, 1024, 2048], ids=lambda n: f"N{n}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_against_reference(dtype, n, d, backend, poisoned):
    b, h, window, block = 2, 4, 256, 64
    case = Case(b, h, n, d, window, block, True, "end")
    q, k, v, up = (torch.randn(b, h, n, d, device="cuda").to(dtype) for _ in range(4))
    mask = padding_mask("end", b, n).cuda()
    fast = run(q, k, v, mask, case, backend, up)
    plain = run(q, k, v, mask, case, "reference", up)
    ref = run(q.double(), k.double(), v.double(), mask, case, "reference", up)
    for name, f, p, r in zip(("o", "dq", "dk", "dv"), fast, plain, ref, strict=True):
        assert_close_to_reference(f, p, r, name=name)


# -- random geometries (hypothesis): the band/chunk arithmetic against the reference --


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    b=st.integers(1, 2),
    n=st.integers(1, 90),
    d=st.sampled_from([1, 3, 8]),
    window=st.integers(1, 100),
    block=st.one_of(st.none(), st.integers(1, 40)),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
    padded=st.booleans(),
)
def test_random_geometries_float64(b, n, d, window, block, causal, seed, padded):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, up = (torch.randn(b, 2, n, d, generator=gen, dtype=torch.float64) for _ in range(4))
    mask = (torch.rand(b, n, generator=gen) > 0.3) if padded else None
    case = Case(b, 2, n, d, window, block, causal, None)
    fast = run(q, k, v, mask, case, "torch", up)
    ref = run(q, k, v, mask, case, "reference", up)
    for name, f, r in zip(("o", "dq", "dk", "dv"), fast, ref, strict=True):
        torch.testing.assert_close(f, r, rtol=0, atol=1e-10, msg=name)


# -- pooling: block means without a padded copy, its backward added in place --


class _LargestNewTensor(TorchDispatchMode):
    """The largest tensor an op allocates (outputs that share no input's storage)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = torch.utils._pytree.tree_leaves((args, kwargs))
        seen = {x.untyped_storage().data_ptr() for x in inputs if isinstance(x, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize(
    ("n", "block", "pad"),
    [
        (77, 5, "middle"),
        (64, 16, None),
        (13, 13, "end"),
        (7, 20, "row"),
        (40, 1, None),
        (50, 16, "end"),
    ],
    ids=lambda x: str(x),
)
def test_pooling_and_its_backward_match_the_reference(n, block, pad):
    from stretto.kernels.wha import reference as ref

    k = torch.randn(2, 3, n, 8, dtype=torch.float64)
    mask = padding_mask(pad, 2, n)
    got, inv_count = chunked.pool_summaries(k, block, mask)
    want, has_summary = ref.pool_blocks(k, block, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert torch.equal(inv_count > 0, has_summary)
    # unpool_add_ is pooling's backward (the adjoint), added onto what is there
    g = torch.randn_like(got)
    base = torch.randn_like(k)
    leaf = k.clone().requires_grad_(True)
    (want_grad,) = torch.autograd.grad(ref.pool_blocks(leaf, block, mask)[0], leaf, g)
    got_grad = chunked.unpool_add_(base.clone(), g, block, mask, inv_count)
    torch.testing.assert_close(got_grad, base + want_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pad", [None, "middle"])
def test_pooling_makes_no_copy_of_the_keys(pad):
    b, h, n, d, block = 2, 4, 1000, 32, 64  # a partial last block of 40
    k = torch.randn(b, h, n, d)
    mask = padding_mask(pad, b, n)
    with _LargestNewTensor() as tracker:
        k_sum, inv_count = chunked.pool_summaries(k, block, mask)
    assert k_sum.shape == (b, h, 16, d)
    assert tracker.largest <= b * h * 17 * d  # summaries (+ the padded rows' spare slot)
    dk = torch.zeros_like(k)
    with _LargestNewTensor() as tracker:
        chunked.unpool_add_(dk, torch.randn_like(k_sum), block, mask, inv_count)
    assert tracker.largest <= b * h * 16 * d
