"""One-token decoding with HierarchicalKVCache against the full forward at every position."""

from __future__ import annotations

import pytest
import torch

from stretto.kernels import (
    HierarchicalKVCache,
    hierarchical_attention,
    hierarchical_attention_decode,
)
from stretto.kernels.testing import assert_close_to_reference
from stretto.kernels.wha.module import HierarchicalAttention
from tests.kernels.attention_cases import CASES as ALL_CASES
from tests.kernels.attention_cases import case_id, padding_mask

# The causal cases of the shared table: N spans several ring lengths, so the ring wraps.
CASES = [c for c in ALL_CASES if c.causal]


def _inputs(case, dtype):
    b, h, n, d, *_, pad = case
    q, k, v = (torch.randn(b, h, n, d).to(dtype) for _ in range(3))
    return q, k, v, padding_mask(pad, b, n)


def _decode_all(cache, q, k, v, mask, start=0):
    outs = []
    for i in range(start, q.shape[2]):
        cache.append(k[:, :, i], v[:, :, i], None if mask is None else mask[:, i])
        outs.append(hierarchical_attention_decode(q[:, :, i], cache))
    return torch.stack(outs, dim=2)  # [B, H, N - start, D]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_decode_matches_full_forward_at_every_position(case):
    b, h, n, d, window, block, *_ = case
    q, k, v, mask = _inputs(case, torch.float64)
    cache = HierarchicalKVCache(
        b, h, d, window=window, block=block, max_length=n, dtype=torch.float64
    )
    got = _decode_all(cache, q, k, v, mask)
    kw = dict(window=window, block=block, causal=True, key_padding_mask=mask)
    full = hierarchical_attention(q, k, v, backend="torch", **kw)
    ref = hierarchical_attention(q, k, v, backend="reference", **kw)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(got, full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[5]], ids=case_id)
def test_decode_after_prefill(case):
    b, h, n, d, window, block, *_ = case
    q, k, v, mask = _inputs(case, torch.float64)
    split = n // 2 + 1
    cache = HierarchicalKVCache(
        b, h, d, window=window, block=block, max_length=n, dtype=torch.float64
    )
    cache.prefill(k[:, :, :split], v[:, :, :split], None if mask is None else mask[:, :split])
    first = cache.attend(q[:, :, split - 1])
    rest = _decode_all(cache, q, k, v, mask, start=split)
    ref = hierarchical_attention(
        q, k, v, window=window, block=block, key_padding_mask=mask, backend="reference"
    )
    torch.testing.assert_close(first, ref[:, :, split - 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(rest, ref[:, :, split:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_low_precision_under_the_tolerance_policy(dtype):
    case = CASES[0]
    b, h, n, d, window, block, *_ = case
    q, k, v, mask = _inputs(case, dtype)
    cache = HierarchicalKVCache(b, h, d, window=window, block=block, max_length=n, dtype=dtype)
    got = _decode_all(cache, q, k, v, mask)
    kw = dict(window=window, block=block, key_padding_mask=mask, backend="reference")
    plain = hierarchical_attention(q, k, v, **kw)
    ref = hierarchical_attention(q.double(), k.double(), v.double(), **kw)
    assert_close_to_reference(got, plain, ref, name="decode")


def test_cache_memory_is_bounded_by_window_and_blocks():
    cache = HierarchicalKVCache(2, 4, 16, window=32, block=64, max_length=8192)
    assert cache.k_ring.shape == (2, 4, 32, 16)
    assert cache.k_block_sum.shape == (2, 4, 128, 16)
    buffers = [cache.k_ring, cache.v_ring, cache.real_ring]
    buffers += [cache.k_block_sum, cache.v_block_sum, cache.block_count]
    elements = sum(t.numel() for t in buffers)
    assert elements < 2 * 4 * 8192 * 16 // 4  # far below one full K cache
    plain = HierarchicalKVCache(1, 1, 16, window=8, max_length=1000)
    assert plain.k_block_sum is None and plain.k_ring.shape == (1, 1, 8, 16)


def test_reset_forgets_tokens():
    b, h, n, d, window, block, *_ = CASES[0]
    q, k, v, _ = _inputs(CASES[0], torch.float64)
    cache = HierarchicalKVCache(
        b, h, d, window=window, block=block, max_length=n, dtype=torch.float64
    )
    first = _decode_all(cache, q, k, v, None)
    cache.reset()
    assert cache.length == 0 and int(cache.pos) == 0
    again = _decode_all(cache, q, k, v, None)
    assert torch.equal(first, again)


def test_decode_errors():
    with pytest.raises(NotImplementedError, match="causal attention only"):
        HierarchicalKVCache(1, 1, 8, window=4, max_length=8, causal=False)
    with pytest.raises(ValueError, match="window must be an int >= 1, got 0"):
        HierarchicalKVCache(1, 1, 8, window=0, max_length=8)
    with pytest.raises(ValueError, match="block must be None or an int >= 1, got 0"):
        HierarchicalKVCache(1, 1, 8, window=2, block=0, max_length=8)
    cache = HierarchicalKVCache(1, 2, 8, window=2, block=2, max_length=2)
    with pytest.raises(ValueError, match="at least one appended token"):
        cache.attend(torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match=r"\[B, H, D\] = \(1, 2, 8\).*got \(1, 2, 7\)"):
        cache.append(torch.randn(1, 2, 7), torch.randn(1, 2, 7))
    with pytest.raises(ValueError, match="torch.bool of shape"):
        cache.append(torch.randn(1, 2, 8), torch.randn(1, 2, 8), torch.ones(1))
    cache.append(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8))
    cache.append(torch.randn(1, 2, 8), torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="cache is full: max_length=2"):
        cache.append(torch.randn(1, 2, 8), torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="empty cache"):
        cache.prefill(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8))
    cache.reset()
    with pytest.raises(ValueError, match="exceeds max_length=2"):
        cache.prefill(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8))


@pytest.mark.parametrize("block", [None, 3], ids=["sliding", "block3"])
def test_cache_tensors_are_every_tensor_it_holds_and_stay_in_place(block):
    """`tensors()` lists every tensor attribute (found here by introspection), and
    prefill, append, attend and reset write them in place: what a step that takes them
    as static inputs (a CUDA graph) relies on."""
    cache = HierarchicalKVCache(2, 2, 8, window=4, block=block, max_length=11)
    held = [v for v in vars(cache).values() if isinstance(v, torch.Tensor)]
    assert [id(t) for t in cache.tensors()] == [id(t) for t in held]
    assert len(held) == (4 if block is None else 7)
    before = [(id(t), t.data_ptr()) for t in held]
    k, v = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    cache.prefill(k, v)
    cache.append(k[:, :, 0], v[:, :, 0])
    cache.attend(torch.randn(2, 2, 8))
    cache.reset()
    assert [(id(t), t.data_ptr()) for t in cache.tensors()] == before


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_decode_on_cuda(dtype):
    b, h, n, d, window, block = 2, 4, 300, 64, 64, 16
    q, k, v = (torch.randn(b, h, n, d, device="cuda").to(dtype) for _ in range(3))
    cache = HierarchicalKVCache(
        b, h, d, window=window, block=block, max_length=n, dtype=dtype, device="cuda"
    )
    cache.prefill(k[:, :, :100], v[:, :, :100])
    got = _decode_all(cache, q, k, v, None, start=100)
    kw = dict(window=window, block=block, backend="reference")
    plain = hierarchical_attention(q, k, v, **kw)[:, :, 100:]
    ref = hierarchical_attention(q.double(), k.double(), v.double(), **kw)[:, :, 100:]
    assert_close_to_reference(got, plain, ref, name="decode")


# -- a decode step of fixed shapes ----------------------------------------------------------

# Inductor itself touches the deprecated torch.jit.script_method on import (torch 2.13).
INDUCTOR_JIT_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def test_step_shapes_do_not_depend_on_the_position():
    """Every buffer the step reads or writes keeps its shape; the position lives on the
    device and the host copy is only an eager shortcut."""
    cache = HierarchicalKVCache(1, 2, 16, window=4, block=2, max_length=20)
    shapes = [tuple(t.shape) for t in (cache.k_ring, cache.k_block_sum, cache.block_count)]
    for i in range(7):
        cache.append(torch.randn(1, 2, 16), torch.randn(1, 2, 16))
        assert int(cache.pos) == i + 1 == cache.length
    assert [tuple(t.shape) for t in (cache.k_ring, cache.k_block_sum, cache.block_count)] == (
        shapes
    )
    assert cache.pos.shape == () and cache.pos.device == cache.k_ring.device


def test_fixed_shape_attend_equals_the_sliced_one():
    """The fixed-shape path (whole ring, every block slot, masks) that a compiled step
    runs equals the eager path sliced by the host length, at every position."""
    b, h, n, d, window, block, *_ = CASES[0]
    q, k, v, mask = _inputs(CASES[0], torch.float64)
    cache = HierarchicalKVCache(
        b, h, d, window=window, block=block, max_length=n, dtype=torch.float64
    )
    for i in range(n):
        cache.append(k[:, :, i], v[:, :, i], mask[:, i])
        sliced = cache.attend(q[:, :, i])
        host, cache._host_length = cache._host_length, None  # as after a compiled step
        fixed = cache.attend(q[:, :, i])
        cache._host_length = host
        torch.testing.assert_close(fixed, sliced, rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.filterwarnings(INDUCTOR_JIT_WARNING)
def test_compiled_decode_step_compiles_once_and_equals_eager():
    """torch.compile(fullgraph=True, dynamic=False) of a one-token step of the module,
    with its cache: one compile for 100 tokens, each equal to the eager step, all equal
    to the full forward."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    layer = HierarchicalAttention(32, 2, window=8, block=4, backend="torch").double().eval()
    prompt, steps = 5, 100
    x = torch.randn(1, prompt + steps, 32, dtype=torch.float64)
    counter = CompileCounterWithBackend("inductor")

    def step(x_t, cache):
        return layer(x_t, cache=cache)

    compiled = torch.compile(step, backend=counter, fullgraph=True, dynamic=False)
    with torch.no_grad():
        full = layer(x)  # [1, N, C]
        eager_cache = layer.new_cache(1, prompt + steps)
        compiled_cache = layer.new_cache(1, prompt + steps)
        layer(x[:, :prompt], cache=eager_cache)
        layer(x[:, :prompt], cache=compiled_cache)
        for i in range(prompt, prompt + steps):
            want = layer(x[:, i : i + 1], cache=eager_cache)
            got = compiled(x[:, i : i + 1], compiled_cache)
            torch.testing.assert_close(want, full[:, i : i + 1], rtol=0, atol=1e-10)
            # Rotary phases are float32 (see Rotary); Inductor fuses that float32 math
            # differently, so compiled and eager agree to float32 rounding.
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert counter.frame_count == 1, f"{counter.frame_count} compiles for {steps} tokens"
    assert compiled_cache.length == prompt + steps
