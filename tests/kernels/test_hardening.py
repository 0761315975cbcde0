"""The Triton path on random small geometries against the float64 reference.

The torch fallback's random sweep lives in tests/kernels; here the same kind of sweep
runs the fused kernels (under TRITON_INTERPRET=1 on CPU, so shapes stay tiny and the
example count low), output and every gradient, through the tolerance policy.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stretto.kernels import hierarchical_attention
from stretto.kernels.testing import assert_close_to_reference
from stretto.kernels.wha import op

# tiny tensors, where torch's thread pool costs more than it saves (tests/conftest.py)
ONE_TORCH_THREAD = True


def _run(q, k, v, up, mask, backend, **geometry):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    o = hierarchical_attention(q, k, v, key_padding_mask=mask, backend=backend, **geometry)
    o.backward(up.to(o.dtype))
    return o.detach(), q.grad, k.grad, v.grad


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    n=st.integers(1, 20),
    window=st.integers(1, 24),
    block=st.one_of(st.none(), st.integers(1, 8)),
    causal=st.booleans(),
    padded=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_triton_random_small_geometries(
    kernel_device, poisoned, n, window, block, causal, padded, seed
):
    if op.fused_import_error() is not None:
        pytest.skip(f"fused kernels not importable: {op.fused_import_error()}")
    gen = torch.Generator().manual_seed(seed)
    q, k, v, up = (torch.randn(1, 2, n, 16, generator=gen) for _ in range(4))
    mask = (torch.rand(1, n, generator=gen) > 0.3) if padded else None
    geometry = dict(window=window, block=block, causal=causal)
    dev = [x.to(kernel_device) for x in (q, k, v, up)]
    fast = _run(*dev, None if mask is None else mask.to(kernel_device), "triton", **geometry)
    plain = _run(q, k, v, up, mask, "reference", **geometry)
    ref = _run(q.double(), k.double(), v.double(), up, mask, "reference", **geometry)
    for name, f, p, r in zip(("o", "dq", "dk", "dv"), fast, plain, ref, strict=True):
        assert_close_to_reference(f.cpu(), p, r, name=name)
