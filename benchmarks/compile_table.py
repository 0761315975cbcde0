"""Compile every fused kernel ahead of time for Hopper (sm_90) and A100 (sm_80), no GPU.

    python -m benchmarks.compile_table [--targets 90 80] [--jobs 2] [--out DIR]
                                       [--json FILE] [--full] [--candidates]

Each variant (kernel x target x operand kind x head dim x causal x summaries, with a
key padding mask; `variants` says which are in the default check set and `--full`) is
compiled with Triton's public API (`triton.compile` on an
`ASTSource`, `GPUTarget("cuda", cc, 32)`) using the config the launcher would pin
(`stretto.kernels.wha.configs`). Read from the compiled binary: registers and stack
(spill) bytes per thread (`cuobjdump --dump-resource-usage` on the cubin), the shared
memory Triton asks for at launch (`metadata.shared`), the SASS instruction count and
the tensor-core instructions (HGMMA on sm_90, HMMA on sm_80). `--candidates` also
compiles every autotuning candidate, for the heaviest mode (bidirectional with
summaries).

Triton caches compiled kernels on disk (`TRITON_CACHE_DIR`, default ~/.triton/cache)
keyed by source, signature, options and target, so a second run only reads the
binaries back. `tests/kernels/test_compile_table.py` runs this in a subprocess and
fails on a compile error, shared memory over the target's limit, or a spill in any
16-bit variant. Run it without TRITON_INTERPRET (the interpreter replaces the kernels).

Writes `compile-table.json` and `compile-table.md` to `--out` (default
benchmarks/results/compile/triton-<version>/).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Shared memory one program may use (bytes): sm_90 227 KB, sm_80 163 KB (opt-in maxima).
SMEM_LIMIT = {90: 232448, 80: 166912}
KINDS = {"bf16": "16bit", "fp16": "16bit", "fp32-tf32": "tf32", "fp32-ieee": "ieee"}
HEAD_DIMS = (16, 32, 64, 128, 40)
# Pointer arguments by name: the data dtype, or a fixed one.
_FP32_PTRS = {"LSE", "DELTA", "INV_COUNT", "DKS_PART", "DVS_PART"}
_BOOL_PTRS = {"KEY_REAL"}
_FLOAT_ARGS = {"qk_scale", "scale"}
_INT_ARGS = {"H", "N", "NB", "BH"}  # upper-case names that are not pointers
# Runtime ints that the benchmark shape (N 2048, H 8, window 256, block 64) makes
# multiples of 16: Triton specialises those at launch, so the table does too.
_DIVISIBLE_INTS = {"N", "NB", "window", "block", "BH", "split_rows"}


@dataclass(frozen=True)
class Variant:
    kernel: str  # fwd, dq, dkv, dsum, pool
    target: int  # compute capability, 90 or 80
    dtype: str  # bf16, fp16, fp32-tf32, fp32-ieee
    head_dim: int
    causal: bool
    summaries: bool
    config: str = ""  # TileConfig JSON ("" for the pooling kernel)

    def label(self) -> str:
        mode = "causal" if self.causal else "bidir"
        sums = "sum" if self.summaries else "nosum"
        return f"{self.kernel}-sm{self.target}-{self.dtype}-D{self.head_dim}-{mode}-{sums}"


@dataclass
class Result:
    variant: Variant
    status: str = "ok"
    registers: int | None = None
    stack_bytes: int | None = None  # per thread: spills and local arrays
    local_bytes: int | None = None
    shared_bytes: int | None = None
    smem_limit: int | None = None
    instructions: int | None = None
    tensor_core_instructions: int | None = None
    compile_s: float | None = None
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        d = asdict(self)
        d.update(d.pop("variant"))
        d["label"] = self.variant.label()
        return d


def variants(targets=(90, 80), full: bool = False, candidates: bool = False) -> list[Variant]:
    """The variants to compile.

    `full`: the whole product kernel x target x dtype x head dim x causal x summaries
    (about 590 compiles, ~20 minutes on 2 cores). Default, the check set that
    `make test` runs (about 165, a few minutes; seconds once Triton's cache holds them):
    on sm_90, every kernel x dtype x head dim in the heaviest mode (bidirectional with
    summaries: the most code), every mode for bf16 and fp32-ieee at D 64 and bf16 at
    D 128; on sm_80, every kernel x dtype at D 40, 64, 128 in the heaviest mode (bf16
    and fp16 compile to the same tiles). `candidates`: also every autotuning candidate
    in the heaviest mode.
    """
    from stretto.kernels.wha import configs

    def modes(kernel):
        for causal in (False, True):
            for sums in (True, False):
                if kernel != "dsum" or sums:
                    yield causal, sums

    out: list[Variant] = []
    for target in targets:
        for dtype, kind in KINDS.items():
            for d in HEAD_DIMS:
                if not full and target == 80 and (d in (16, 32) or dtype == "fp16"):
                    continue
                if kind != "tf32" and (full or target == 90):  # no dot: fp32 once
                    out.append(Variant("pool", target, dtype.replace("-ieee", ""), d, True, True))
                every_mode = full or (
                    target == 90
                    and (
                        (d == 64 and dtype in ("bf16", "fp32-ieee")) or (d, dtype) == (128, "bf16")
                    )
                )
                for kernel in configs.KERNELS:
                    cands = configs.candidates(kernel, kind, d, target)
                    for causal, sums in modes(kernel):
                        heaviest = not causal and sums
                        if not (heaviest or every_mode):
                            continue
                        chosen = cands if candidates and heaviest else cands[:1]
                        for cfg in chosen:
                            out.append(
                                Variant(kernel, target, dtype, d, causal, sums, cfg.to_json())
                            )
    return out


def _signature(fn, variant: Variant):
    """(signature, constexprs, attrs) for `triton.compile` of one variant."""
    from stretto.kernels.wha import configs, fused

    data = {"bf16": "bf16", "fp16": "fp16"}.get(variant.dtype, "fp32")
    kind = KINDS.get(variant.dtype, "16bit" if data != "fp32" else "ieee")
    consts = {
        "HEAD_DIM": variant.head_dim,
        "BLOCK_D": configs.head_dim_bucket(variant.head_dim),
        "HAS_KEY_REAL": True,
        "CAUSAL": variant.causal,
        "HAS_SUM": variant.summaries,
        "DOT_PREC": fused.dot_precision(kind),
    }
    if variant.kernel == "pool":
        consts["BLOCK_T"] = fused.POOL_ROWS
        num_warps, num_stages = 4, 1
    else:
        cfg = configs.TileConfig.from_json(variant.config)
        consts.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_S=cfg.block_s)
        num_warps, num_stages = cfg.num_warps, cfg.num_stages
    sig, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if i in fn.constexprs:
            sig[name] = "constexpr"
            constexprs[name] = consts[name]
        elif name in _FLOAT_ARGS:
            sig[name] = "fp32"
        elif name[0].isupper() and name not in _INT_ARGS:
            sig[name] = (
                "*i1" if name in _BOOL_PTRS else "*fp32" if name in _FP32_PTRS else f"*{data}"
            )
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i32"
            if name in _DIVISIBLE_INTS:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, constexprs, attrs, dict(num_warps=num_warps, num_stages=num_stages)


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_variant(variant: Variant) -> Result:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from stretto.kernels.wha import fused

    fn = fused._pool_kernel if variant.kernel == "pool" else fused.KERNELS[variant.kernel]
    result = Result(variant, smem_limit=SMEM_LIMIT[variant.target])
    try:
        sig, constexprs, attrs, options = _signature(fn, variant)
        start = time.perf_counter()
        compiled = triton.compile(
            ASTSource(fn, sig, constexprs, attrs),
            target=GPUTarget("cuda", variant.target, 32),
            options=options,
        )
        result.compile_s = round(time.perf_counter() - start, 3)
        result.shared_bytes = int(compiled.metadata.shared)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            usage = subprocess.run(
                [_tool("cuobjdump"), "--dump-resource-usage", f.name],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            sass = subprocess.run(
                [_tool("cuobjdump"), "--dump-sass", f.name],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
        fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
        result.registers = int(fields["REG"])
        result.stack_bytes = int(fields["STACK"])
        result.local_bytes = int(fields["LOCAL"])
        ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)
        result.instructions = len(ops)
        result.tensor_core_instructions = sum(op.startswith(("HGMMA", "HMMA")) for op in ops)
    except Exception as exc:  # reported per variant; the test fails on any
        result.status = f"error: {type(exc).__name__}: {exc}"[:3000]
    return result


def problems(result: Result) -> list[str]:
    """Why a variant fails the check (empty when it passes)."""
    v = result.variant
    out = []
    if result.status != "ok":
        return [result.status]
    if result.shared_bytes > SMEM_LIMIT[v.target]:
        out.append(f"shared memory {result.shared_bytes} B > {SMEM_LIMIT[v.target]} B")
    if v.dtype in ("bf16", "fp16") and (result.stack_bytes or result.local_bytes):
        out.append(f"spills: stack {result.stack_bytes} B, local {result.local_bytes} B")
    return out


def run(variant_list: list[Variant], jobs: int) -> list[Result]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter replaces the kernels")
    if jobs <= 1:
        return [compile_variant(v) for v in variant_list]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(compile_variant, variant_list, chunksize=4))


def render(results: list[Result], command: str, elapsed_s: float) -> str:
    import torch
    import triton

    bad = [r for r in results if problems(r)]
    lines = [
        f"# Fused kernels compiled ahead of time (Triton {triton.__version__})",
        "",
        f"Command: `{command}`  ",
        f"torch {torch.__version__}, triton {triton.__version__}, {len(results)} variants, "
        f"{elapsed_s:.0f} s wall on {os.cpu_count()} CPUs (Triton's disk cache may hold "
        "some of them). All variants with a key padding mask.",
        "",
        "Registers and stack (spill) bytes are per thread; shared memory is what one "
        "program asks for at launch. Fails the check: a compile error, shared memory over "
        "the target's limit (sm_90 227 KB, sm_80 163 KB), any spill in a 16-bit variant. "
        "`compile s` is this run's time: a few milliseconds means Triton's cache held it.",
        "",
        f"**{len(bad)} variant(s) fail the check.**",
        "",
        "| kernel | sm | dtype | D | mode | sums | config | regs | stack B | smem B | "
        "SASS instr | tensor-core instr | compile s | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v = r.variant
        cfg = "" if not v.config else _label(v.config)
        check = "; ".join(problems(r)) or "ok"
        lines.append(
            f"| {v.kernel} | {v.target} | {v.dtype} | {v.head_dim} | "
            f"{'causal' if v.causal else 'bidir'} | {'yes' if v.summaries else 'no'} | {cfg} | "
            f"{r.registers} | {r.stack_bytes} | {r.shared_bytes} | {r.instructions} | "
            f"{r.tensor_core_instructions} | {r.compile_s} | {check} |"
        )
    return "\n".join(lines) + "\n"


def _label(config_json: str) -> str:
    from stretto.kernels.wha import configs

    return configs.TileConfig.from_json(config_json).label()


def default_out() -> Path:
    import triton

    return REPO / "benchmarks" / "results" / "compile" / f"triton-{triton.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_table")
    parser.add_argument("--targets", type=int, nargs="+", default=[90, 80], choices=[90, 80])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=None, help="folder for the table")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here only")
    parser.add_argument("--full", action="store_true", help="the whole product of variants")
    parser.add_argument("--candidates", action="store_true", help="every autotune candidate")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.compile_table " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    start = time.perf_counter()
    results = run(variants(tuple(args.targets), args.full, args.candidates), args.jobs)
    elapsed = time.perf_counter() - start
    rows = [r.row() for r in results]
    payload = {"command": command.strip(), "elapsed_s": round(elapsed, 1), "rows": rows}
    if args.json is not None:
        args.json.write_text(json.dumps(payload, indent=1))
    else:
        out = args.out or default_out()
        out.mkdir(parents=True, exist_ok=True)
        (out / "compile-table.json").write_text(json.dumps(payload, indent=1))
        (out / "compile-table.md").write_text(render(results, command.strip(), elapsed))
        print(out / "compile-table.md")
    failing = [(r.variant.label(), problems(r)) for r in results if problems(r)]
    for label, why in failing:
        print(f"FAIL {label}: {'; '.join(why)}", file=sys.stderr)
    print(f"{len(results)} variants, {len(failing)} failing, {elapsed:.0f} s", file=sys.stderr)
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
