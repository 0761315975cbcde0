"""The Hopper and A100 compile check: every fused kernel compiled ahead of time, no GPU.

`benchmarks/compile_table.py` compiles each kernel variant with Triton's public API for
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

pytest.importorskip("triton")

from benchmarks import compile_table  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _failures(row: dict) -> list[str]:
    variant = compile_table.Variant(
        **{f: row[f] for f in ("kernel", "target", "dtype", "head_dim", "causal", "summaries")},
        config=row["config"],
    )
    fields = ("status", "registers", "stack_bytes", "local_bytes", "shared_bytes")
    result = compile_table.Result(variant, **{f: row[f] for f in fields})
    return compile_table.problems(result)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_kernel_compiles_for_hopper_and_a100(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "compile-table.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.compile_table", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=2300,
    )  # fmt: skip
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
        (True, True), (True, False), (False, True), (False, False)
    }  # fmt: skip
    for r in rows:
        if r["kernel"] != "pool" and r["dtype"] != "fp32-ieee":
            # 16-bit and TF32 dots run on tensor cores (HGMMA on sm_90, HMMA on sm_80)
            assert r["tensor_core_instructions"] > 0, r["label"]


def test_the_check_fails_on_spills_smem_and_errors():
    v16 = compile_table.Variant("fwd", 90, "bf16", 64, True, True, "")
    v32 = compile_table.Variant("fwd", 90, "fp32-ieee", 64, True, True, "")
    ok = dict(registers=128, stack_bytes=0, local_bytes=0, shared_bytes=49152)
    assert compile_table.problems(compile_table.Result(v16, **ok)) == []
    spill = dict(ok, stack_bytes=24)
    assert compile_table.problems(compile_table.Result(v16, **spill))
    assert compile_table.problems(compile_table.Result(v32, **spill)) == []  # reported only
    big = dict(ok, shared_bytes=compile_table.SMEM_LIMIT[90] + 1)
    assert compile_table.problems(compile_table.Result(v32, **big))
    assert compile_table.problems(compile_table.Result(v16, status="error: boom"))
