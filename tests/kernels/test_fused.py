"""The fused Triton kernels (forward and backward) against the dense reference.

Under no CUDA these run in the Triton interpreter on CPU tensors, so shapes stay tiny.
Every comparison goes through the tolerance policy: the kernel's error against the
float64 reference is at most 2x that of the reference run in the kernel's dtype.

`fused_backward` returns the gradients with respect to the pooled summaries; they are
checked twice: directly, against autograd of the reference's math with k_sum/v_sum as
leaves, and composed through pooling's backward into dk/dv, against the reference
itself (whose k/v gradients include the pooling path).
"""

from __future__ import annotations

import pytest
import torch

from stretto.kernels.testing import assert_close_to_reference
from stretto.kernels.wha import reference as ref


def _fused():
    from stretto.kernels.wha import fused

    return fused


# (B, H, N, D, window, block, causal, padding)
CASES = [
    (1, 1, 1, 16, 1, None, True, None),
    (1, 2, 1, 16, 4, 1, False, None),
    (2, 3, 7, 16, 4, None, True, "end"),
    (2, 2, 7, 40, 8, 5, False, None),  # window >= N
    (1, 2, 33, 16, 1, 1, True, "middle"),  # window 1: itself plus every earlier token
    (2, 2, 33, 40, 8, 5, True, "middle"),
    (2, 2, 33, 40, 8, 5, False, "end"),
    (2, 2, 77, 16, 8, 16, True, "row"),  # one batch row entirely padding
    (2, 1, 77, 40, 4, 16, False, "row"),
    (2, 1, 77, 16, 100, 16, True, None),  # window >= N: no summary is ever visible
    (1, 1, 33, 16, 4, 64, False, None),  # block > N: a single summary
    (1, 2, 77, 16, 4, None, False, "middle"),
    (1, 1, 50, 24, 3, 1, False, "middle"),  # block 1: a summary per token
    (1, 1, 40, 128, 8, 4, True, "end"),
    (2, 1, 63, 64, 16, 8, False, "end"),
    (1, 1, 21, 16, 2**40, 2**40, False, None),  # huge window and block: clamped, no overflow
]


def _case_id(case) -> str:
    b, h, n, d, window, block, causal, pad = case
    parts = [f"B{b}-H{h}-N{n}-D{d}-w{window}", f"g{block}" if block else "gNone"]
    parts.append("causal" if causal else "bidir")
    if pad:
        parts.append(f"pad{pad}")
    return "-".join(parts)


def _key_real(b: int, n: int, pad: str | None, device) -> torch.Tensor | None:
    if pad is None:
        return None
    real = torch.ones(b, n, dtype=torch.bool, device=device)
    if pad == "end":
        real[0, n - max(1, n // 4) :] = False
    elif pad == "middle":
        real[0, n // 4 : n // 4 + max(1, n // 2)] = False
    elif pad == "row":
        real[0, n - max(1, n // 3) :] = False
        real[-1] = False
    return real


def _reference_from_summaries(q, k, v, k_sum, v_sum, key_real, summary_real, *, window, block,
                              causal, scale):  # fmt: skip
    """The reference's math with k_sum/v_sum as inputs (so autograd gives their grads)."""
    b, _, n, _ = q.shape
    real = torch.ones(b, n, dtype=torch.bool, device=q.device) if key_real is None else key_real
    visible = ref.local_visibility(n, window, causal, q.device)[None] & real[:, None, :]
    scores = scale * (q @ k.transpose(-1, -2))  # [B, H, N, N]
    values = v
    if block is not None:
        sees = ref.summary_visibility(n, window, block, causal, q.device)[None]
        sees = sees & summary_real[:, None, :]  # [B, N, NB]
        visible = torch.cat([visible, sees], dim=-1)
        scores = torch.cat([scores, scale * (q @ k_sum.transpose(-1, -2))], dim=-1)
        values = torch.cat([v, v_sum], dim=-2)
    visible = visible[:, None]
    sees_any = visible.any(-1, keepdim=True)
    scores = scores.masked_fill(~visible, float("-inf"))
    scores = torch.where(sees_any, scores, torch.zeros((), dtype=scores.dtype, device=q.device))
    return (torch.softmax(scores, dim=-1) * sees_any) @ values


def _inputs(case, dtype, device):
    b, h, n, d, window, block, causal, pad = case
    q, k, v = (torch.randn(b, h, n, d, device=device, dtype=torch.float64) for _ in range(3))
    key_real = _key_real(b, n, pad, device)
    return q, k, v, key_real


def _run_fused(q, k, v, key_real, do, *, window, block, causal, scale):
    """Forward + backward through the fused launchers; dk/dv composed through pooling."""
    fused = _fused()
    if block is not None:
        k_sum, summary_real = ref.pool_blocks(k, block, key_real)
        v_sum, _ = ref.pool_blocks(v, block, key_real)
    else:
        k_sum = v_sum = summary_real = None
    kw = dict(window=window, block=block, causal=causal, scale=scale)
    o, lse = fused.fused_forward(q, k, v, k_sum, v_sum, key_real, summary_real, **kw)
    dq, dk, dv, dks, dvs = fused.fused_backward(
        do, q, k, v, k_sum, v_sum, key_real, summary_real, o, lse, **kw
    )
    out = {"o": o, "lse": lse, "dq": dq, "dk_local": dk, "dv_local": dv}
    if block is None:
        assert dks is None and dvs is None
        out["dk"], out["dv"] = dk, dv
    else:
        out["dk_sum"], out["dv_sum"] = dks, dvs
        # route the summary grads to k, v through pooling's own backward
        kl = k.detach().requires_grad_()
        vl = v.detach().requires_grad_()
        (dk_pool,) = torch.autograd.grad(ref.pool_blocks(kl, block, key_real)[0], kl, dks)
        (dv_pool,) = torch.autograd.grad(ref.pool_blocks(vl, block, key_real)[0], vl, dvs)
        out["dk"], out["dv"] = dk + dk_pool, dv + dv_pool
    return out


def _run_reference(q, k, v, key_real, do, *, window, block, causal, scale):
    """The reference in q's dtype: o, dq, dk, dv, plus dk_sum/dv_sum from the leaf variant."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    o = ref.hierarchical_attention_reference(
        q, k, v, window=window, block=block, causal=causal, key_padding_mask=key_real, scale=scale
    )
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    out = {"o": o.detach(), "dq": dq, "dk": dk, "dv": dv}
    if block is not None:
        k_sum, summary_real = ref.pool_blocks(k.detach(), block, key_real)
        v_sum, _ = ref.pool_blocks(v.detach(), block, key_real)
        leaves = [x.detach().requires_grad_() for x in (q, k, v, k_sum, v_sum)]
        o2 = _reference_from_summaries(
            *leaves, key_real, summary_real, window=window, block=block, causal=causal, scale=scale
        )
        grads = torch.autograd.grad(o2, leaves, do)
        out["o_leaf"] = o2.detach()
        out["dk_local"], out["dv_local"], out["dk_sum"], out["dv_sum"] = grads[1:]
    return out


def _upstream(kind: str, shape, dtype, device) -> torch.Tensor:
    if kind == "sum":
        # what out.sum().backward() hands over: a stride-0 tensor of ones
        return torch.ones((), dtype=dtype, device=device).expand(shape)
    return torch.randn(shape, dtype=dtype, device=device)


def _check(case, dtype, device, grad_kind="random"):
    b, h, n, d, window, block, causal, pad = case
    q64, k64, v64, key_real = _inputs(case, dtype, device)
    do64 = _upstream(grad_kind, (b, h, n, d), torch.float64, device)
    scale = d**-0.5
    kw = dict(window=window, block=block, causal=causal, scale=scale)

    exact = _run_reference(q64, k64, v64, key_real, do64, **kw)
    plain = _run_reference(*(x.to(dtype) for x in (q64, k64, v64)), key_real, do64.to(dtype), **kw)
    fast = _run_fused(*(x.to(dtype) for x in (q64, k64, v64)), key_real, do64.to(dtype), **kw)

    if block is not None:
        # the leaf variant is the same function as the reference
        torch.testing.assert_close(exact["o_leaf"], exact["o"], rtol=1e-12, atol=1e-12)
    names = ["o", "dq", "dk", "dv"]
    if block is not None:
        names += ["dk_local", "dv_local", "dk_sum", "dv_sum"]
    for name in names:
        assert fast[name].dtype == dtype, name
        assert_close_to_reference(fast[name], plain[name], exact[name], name=name)

    # lse: finite where a row sees something, +inf where it sees nothing
    assert fast["lse"].dtype == torch.float32
    assert not fast["lse"].isnan().any()
    return fast


@pytest.mark.parametrize("grad_kind", ["random", "sum"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_fused_matches_reference_fp32(case, grad_kind, kernel_device, poisoned):
    _check(case, torch.float32, kernel_device, grad_kind)


SMALL_CASES = [
    (1, 2, 17, 16, 4, 5, True, "middle"),
    (2, 1, 20, 40, 3, 4, False, "row"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", SMALL_CASES, ids=[_case_id(c) for c in SMALL_CASES])
def test_fused_matches_reference_half(case, dtype, kernel_device, poisoned):
    if dtype == torch.bfloat16 and kernel_device == "cpu":
        # Seen with triton 3.9: the interpreter's tl.dot multiplies bf16 operands' raw bits
        # (a 16x16 product is off by 1e10). bf16 is covered by the gpu-marked sweep.
        pytest.skip("the Triton interpreter cannot compute bf16 tl.dot")
    _check(case, dtype, kernel_device)


def test_rows_that_see_nothing(kernel_device, poisoned):
    """A fully padded batch row: zeros out, zero grads, no NaN, lse = +inf."""
    case = (2, 2, 21, 16, 4, 4, True, "row")
    fast = _check(case, torch.float32, kernel_device)
    assert torch.equal(fast["o"][1], torch.zeros_like(fast["o"][1]))
    assert torch.isinf(fast["lse"][1]).all()
    for name in ("dq", "dk", "dv", "dk_sum", "dv_sum"):
        assert torch.equal(fast[name][1], torch.zeros_like(fast[name][1])), name


def test_lse_is_base_two(kernel_device, poisoned):
    """lse is log2 of the row's sum of exp(scale * q.k): the natural value times log2(e)."""
    b, h, n, d, window = 1, 2, 19, 16, 5
    q, k, v = (torch.randn(b, h, n, d, device=kernel_device) for _ in range(3))
    scale = 0.3
    _, lse = _fused().fused_forward(
        q, k, v, None, None, None, None, window=window, block=None, causal=True, scale=scale
    )
    scores = scale * (q.double() @ k.double().transpose(-1, -2))
    scores = scores.masked_fill(~ref.local_visibility(n, window, True, q.device), float("-inf"))
    expected = torch.logsumexp(scores, -1) / torch.log(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(lse.double(), expected, rtol=1e-5, atol=1e-5)


def test_noncontiguous_inputs(kernel_device, poisoned):
    """Transposed-layout q/k/v (as from a [B, N, H, D] projection) give the same results."""
    b, h, n, d = 2, 3, 29, 16
    base = [torch.randn(b, n, h, d, device=kernel_device) for _ in range(3)]
    q, k, v = (x.transpose(1, 2) for x in base)  # [B, H, N, D] views, not contiguous
    k_sum, summary_real = ref.pool_blocks(k, 4, None)
    v_sum, _ = ref.pool_blocks(v, 4, None)
    kw = dict(window=6, block=4, causal=False, scale=d**-0.5)
    fused = _fused()
    o1, lse1 = fused.fused_forward(q, k, v, k_sum, v_sum, None, summary_real, **kw)
    o2, lse2 = fused.fused_forward(
        q.contiguous(), k.contiguous(), v.contiguous(), k_sum, v_sum, None, summary_real, **kw
    )
    assert torch.equal(o1, o2) and torch.equal(lse1, lse2)
    do = torch.randn(b, n, h, d, device=kernel_device).transpose(1, 2)
    g1 = fused.fused_backward(do, q, k, v, k_sum, v_sum, None, summary_real, o1, lse1, **kw)
    g2 = fused.fused_backward(
        do.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(),
        k_sum, v_sum, None, summary_real, o2, lse2, **kw,
    )  # fmt: skip
    for a, c in zip(g1, g2, strict=True):
        assert torch.equal(a, c)


def test_deterministic(kernel_device, poisoned):
    """Two runs on the same inputs give bitwise-identical outputs and gradients."""
    b, h, n, d, window, block = 2, 2, 45, 40, 6, 5
    q, k, v = (torch.randn(b, h, n, d, device=kernel_device) for _ in range(3))
    key_real = _key_real(b, n, "middle", kernel_device)
    k_sum, summary_real = ref.pool_blocks(k, block, key_real)
    v_sum, _ = ref.pool_blocks(v, block, key_real)
    do = torch.randn(b, h, n, d, device=kernel_device)
    kw = dict(window=window, block=block, causal=False, scale=d**-0.5)
    fused = _fused()
    runs = []
    for _ in range(2):
        o, lse = fused.fused_forward(q, k, v, k_sum, v_sum, key_real, summary_real, **kw)
        grads = fused.fused_backward(
            do, q, k, v, k_sum, v_sum, key_real, summary_real, o, lse, **kw
        )
        runs.append((o, lse, *grads))
    for a, c in zip(*runs, strict=True):
        assert torch.equal(a, c)


# -- the full sweep, on a real GPU only --------------------------------------------------

GPU_CASES = [
    (2, 4, n, d, 256, 64, causal, pad)
    for n in (512, 1023, 2048)
    for d in (64, 128)
    for causal in (True, False)
    for pad in (None, "middle")
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=[_case_id(c) for c in GPU_CASES])
def test_fused_gpu_sweep(case, dtype, poisoned):
    _check(case, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case",
    [(1, 2, 1000, 80, 128, 32, True, "end"), (3, 2, 777, 40, 64, None, False, "row")],
    ids=_case_id,
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_gpu_odd_shapes(case, dtype, poisoned):
    _check(case, dtype, "cuda")
