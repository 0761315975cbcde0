"""The Hopper and A100 compile check: every fused kernel compiled ahead of time, no GPU.

`gpu/compile_table.py` compiles each kernel variant with Triton's public API for
`GPUTarget("cuda", 90, 32)` and `GPUTarget("cuda", 80, 32)` with the config the
launcher pins, and reads registers, stack (spill) bytes, shared memory and the
instruction mix from the binary. It runs in a subprocess without TRITON_INTERPRET (the
interpreter replaces the kernels in this process). Triton's disk cache makes a second
run take seconds; a cold one takes minutes, hence the longer timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from gpu import compile_table  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


_VARIANT_FIELDS = (
    "kernel",
    "target",
    "dtype",
    "head_dim",
    "causal",
    "summaries",
    "config",
    "padded",
    "seq_len",
)


def _failures(row: dict) -> list[str]:
    variant = compile_table.Variant(**{f: row[f] for f in _VARIANT_FIELDS})
    fields = ("status", "registers", "stack_bytes", "local_bytes", "shared_bytes")
    result = compile_table.Result(variant, **{f: row[f] for f in fields})
    return compile_table.problems(result)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_kernel_compiles_for_hopper_and_a100(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "compile-table.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gpu.compile_table", "--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=2300,
    )
    assert out.is_file(), proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]

    failing = {r["label"]: _failures(r) for r in rows if _failures(r)}
    assert not failing, failing
    assert proc.returncode == 0, proc.stderr[-3000:]

    # every axis of the issue is covered
    assert {r["kernel"] for r in rows} == {"pool", "fwd", "dq", "dkv", "dsum"}
    assert {r["target"] for r in rows} == {80, 90}
    assert {r["dtype"] for r in rows} >= {"bf16", "fp16", "fp32-tf32", "fp32-ieee"}
    assert {r["head_dim"] for r in rows} == {16, 32, 64, 128, 40}
    assert {(r["causal"], r["summaries"]) for r in rows if r["kernel"] == "fwd"} == {
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    }
    # without a padding mask (the benchmark's case) and at a length that is not a
    # multiple of 16, every kernel, on both targets, in 16-bit and TF32
    for padded, seq_len in [(False, 2048), (True, 1023)]:
        shape = [r for r in rows if (r["padded"], r["seq_len"]) == (padded, seq_len)]
        assert {(r["kernel"], r["target"]) for r in shape if r["dtype"] == "bf16"} >= {
            (k, t) for k in ("fwd", "dq", "dkv", "dsum") for t in (80, 90)
        }, (padded, seq_len)
        assert {(r["kernel"], r["target"]) for r in shape if r["dtype"] == "fp32-tf32"} >= {
            (k, t) for k in ("fwd", "dq", "dkv", "dsum") for t in (80, 90)
        }, (padded, seq_len)
    for r in rows:
        if r["kernel"] != "pool" and r["dtype"] != "fp32-ieee":
            # 16-bit and TF32 dots run on tensor cores (HGMMA on sm_90, HMMA on sm_80)
            assert r["tensor_core_instructions"] > 0, r["label"]


def test_the_check_fails_on_spills_smem_and_errors():
    Variant, Result = compile_table.Variant, compile_table.Result
    v16 = Variant("fwd", 90, "bf16", 64, True, True, "")
    v16_nopad = Variant("fwd", 90, "fp16", 64, True, True, "", padded=False)
    v16_odd = Variant("fwd", 90, "bf16", 64, True, True, "", seq_len=1023)
    vtf32 = Variant("fwd", 90, "fp32-tf32", 64, True, True, "")
    v32 = Variant("fwd", 90, "fp32-ieee", 64, True, True, "")
    ok = dict(registers=128, stack_bytes=0, local_bytes=0, shared_bytes=49152)
    assert compile_table.problems(Result(v16, **ok)) == []
    assert compile_table.reported(Result(v16, **ok)) == []
    spill = dict(ok, stack_bytes=24)
    for failing in (v16, v16_nopad):
        assert compile_table.problems(Result(failing, **spill))
        assert compile_table.reported(Result(failing, **spill)) == []
    for noted in (v16_odd, vtf32, v32):  # reported only
        assert compile_table.problems(Result(noted, **spill)) == []
        assert compile_table.reported(Result(noted, **spill))
    big = dict(ok, shared_bytes=compile_table.SMEM_LIMIT[90] + 1)
    assert compile_table.problems(compile_table.Result(v32, **big))
    assert compile_table.problems(compile_table.Result(v16, status="error: boom"))


def _launch(kernel: str, **changes) -> dict:
    base = dict(kernel=kernel, target=90, dtype="bf16", head_dim=64, causal=True, summaries=True)
    return compile_table.launch_arguments(compile_table.Variant(**{**base, **changes}))


def test_signatures_are_what_the_launchers_pass():
    """A variant compiles with the arguments the launchers pass at its shape: N 1023
    loses the divisibility by 16 that N 2048 has, no padding mask turns HAS_KEY_REAL off,
    and without summaries block and the split count (1) become constants."""
    spec = compile_table.specialization
    fwd = _launch("fwd")
    assert spec(fwd["N"]) == ("i32", True)
    assert fwd["HAS_KEY_REAL"] is True and fwd["HAS_SUM"] is True
    assert spec(fwd["Q"]) == ("*bf16", True)
    assert spec(fwd["LSE"]) == ("*fp32", True)
    assert spec(fwd["KEY_REAL"]) == ("*u1", True)  # how Triton types torch.bool
    assert spec(fwd["qk_scale"]) == ("fp32", False)
    assert spec(_launch("fwd", seq_len=1023)["N"]) == ("i32", False)
    dsum = _launch("dsum", padded=False)
    assert dsum["HAS_KEY_REAL"] is False and "HAS_SUM" not in dsum
    nosum = _launch("dkv", summaries=False)
    assert nosum["HAS_SUM"] is False
    assert spec(nosum["block"])[0] == spec(nosum["n_splits"])[0] == "constexpr"
    assert _launch("dq", dtype="fp32-tf32")["DOT_PREC"] == "tf32"
    assert _launch("dq", dtype="fp32-ieee")["DOT_PREC"] == "ieee"
    assert _launch("pool", dtype="fp32")["HAS_KEY_REAL"] is True


def test_specialization_is_tritons_own():
    """`specialization` restates the rule of Triton's JIT (checked against it here)."""
    libtriton = pytest.importorskip("triton._C.libtriton")
    if not hasattr(libtriton, "native_specialize_impl"):
        pytest.skip("this Triton has no native_specialize_impl to compare with")
    from triton.backends.compiler import BaseBackend

    values = [1, 2, 16, 48, 1023, 2048, 2**31 + 16, 0.125]
    values += [torch.empty(4, dtype=torch.bfloat16), torch.empty(4, dtype=torch.bool)]
    for value in values:
        kind, hint = libtriton.native_specialize_impl(BaseBackend, value, False, True, True)
        assert compile_table.specialization(value) == (kind, hint == "D"), value
