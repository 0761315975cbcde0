"""Compile every fused kernel ahead of time for Hopper (sm_90) and A100 (sm_80), no GPU.

    python -m gpu.compile_table [--targets 90 80] [--jobs 2] [--out DIR]
                                [--json FILE] [--full] [--candidates]

Each variant (kernel x target x operand kind x head dim x causal x summaries x key
padding mask x sequence length; `variants` says which are in the default check set and
`--full`) is compiled with Triton's public API (`triton.compile` on an `ASTSource`,
`GPUTarget("cuda", cc, 32)`) using the config the launcher would pin
(`stretto.kernels.wha.configs`). The signature is the one a launch would get: the
launchers themselves run on meta tensors of the variant's shape with stand-ins that
record each kernel's arguments, and Triton's integer specialisation is applied to them
(an int equal to 1 is a constant, one divisible by 16 is marked so: N 2048 and N 1023
compile differently). Read from the compiled binary: registers and stack
(spill) bytes per thread (`cuobjdump --dump-resource-usage` on the cubin), the shared
memory Triton asks for at launch (`metadata.shared`), the SASS instruction count and
the tensor-core instructions (HGMMA on sm_90, HMMA on sm_80). `--candidates` also
compiles every autotuning candidate, for the heaviest mode (bidirectional with
summaries).

Triton caches compiled kernels on disk (`TRITON_CACHE_DIR`, default ~/.triton/cache)
keyed by source, signature, options and target, so a second run only reads the
binaries back. `tests/kernels/test_compile_table.py` runs this in a subprocess and
fails on a compile error, shared memory over the target's limit, or a spill in a
16-bit variant at a length Triton marks divisible by 16; other spills (TF32, fp32
"ieee", 16-bit at N 1023) are reported in the table and on stderr. Run it without
TRITON_INTERPRET (the interpreter replaces the kernels).

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
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
# Shared memory one program may use (bytes): sm_90 227 KB, sm_80 163 KB (opt-in maxima).
SMEM_LIMIT = {90: 232448, 80: 166912}
KINDS = {"bf16": "16bit", "fp16": "16bit", "fp32-tf32": "tf32", "fp32-ieee": "ieee"}
HEAD_DIMS = (16, 32, 64, 128, 40)
# (key padding mask, N) of a launch: the check set's base shape; the benchmark's
# (no mask); and a length that is not a multiple of 16 (Triton specialises ints by
# divisibility, so N, and the offsets built from it, lose their alignment hints).
SHAPES = ((True, 2048), (False, 2048), (True, 1023))
_TRITON_DTYPES = {
    "torch.bfloat16": "bf16",
    "torch.float16": "fp16",
    "torch.float32": "fp32",
    "torch.bool": "u1",
}


@dataclass(frozen=True)
class Variant:
    kernel: str  # fwd, dq, dkv, dsum, pool
    target: int  # compute capability, 90 or 80
    dtype: str  # bf16, fp16, fp32-tf32, fp32-ieee
    head_dim: int
    causal: bool
    summaries: bool
    config: str = ""  # TileConfig JSON ("" for the pooling kernel)
    padded: bool = True  # a key padding mask (HAS_KEY_REAL)
    seq_len: int = 2048  # N of the launch whose integers Triton specialises

    def label(self) -> str:
        mode = "causal" if self.causal else "bidir"
        sums = "sum" if self.summaries else "nosum"
        pad = "pad" if self.padded else "nopad"
        return (
            f"{self.kernel}-sm{self.target}-{self.dtype}-D{self.head_dim}-{mode}-{sums}"
            f"-{pad}-N{self.seq_len}"
        )


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

    `full`: the whole product kernel x target x dtype x head dim x causal x summaries x
    shape (`SHAPES`: about 1,800 compiles, most of an hour on 2 cores). Default, the
    check set that `make test` runs (263 compiles: 4 to 6.5 minutes on 2 cores, about a
    minute once Triton's cache holds them). With a padding mask at N 2048: on sm_90,
    every kernel x dtype x head dim in the heaviest mode (bidirectional with summaries:
    the most code), every mode for bf16 and fp32-ieee at D 64 and bf16 at D 128; on
    sm_80, every kernel x dtype at D 40, 64, 128 in the heaviest mode (bf16 and fp16
    compile to the same tiles). Without a mask (the benchmark's case) and at N 1023: on
    sm_90, bf16 and fp32-tf32 at D 64 and 128 and fp32-ieee at D 64, causal and
    bidirectional with summaries; on sm_80, bf16 and fp32-tf32 at D 64, bidirectional
    with summaries.
    `candidates`: also every autotuning candidate in the heaviest mode.
    """
    from stretto.kernels.wha import configs

    out: list[Variant] = []
    for padded, seq_len in SHAPES:
        shape = dict(padded=padded, seq_len=seq_len)
        for target in targets:
            for dtype, kind in KINDS.items():
                for d in HEAD_DIMS:
                    modes = _modes(target, dtype, d, (padded, seq_len) == SHAPES[0], full)
                    if modes and kind != "tf32" and (full or target == 90):  # no dot: fp32 once
                        pool_dtype = dtype.replace("-ieee", "")
                        out.append(Variant("pool", target, pool_dtype, d, True, True, **shape))
                    for kernel in configs.KERNELS:
                        cands = configs.candidates(kernel, kind, d, target)
                        for causal, sums in modes:
                            if kernel == "dsum" and not sums:
                                continue
                            heaviest = not causal and sums
                            chosen = cands if candidates and heaviest else cands[:1]
                            for cfg in chosen:
                                out.append(
                                    Variant(
                                        kernel,
                                        target,
                                        dtype,
                                        d,
                                        causal,
                                        sums,
                                        cfg.to_json(),
                                        **shape,
                                    )
                                )
    return out


_EVERY_MODE = ((False, True), (False, False), (True, True), (True, False))
_HEAVIEST = ((False, True),)


def _modes(target: int, dtype: str, d: int, base_shape: bool, full: bool):
    """(causal, summaries) modes checked for one target x dtype x head dim x shape."""
    if full:
        return _EVERY_MODE
    if base_shape:
        if target == 80:
            return () if d in (16, 32) or dtype == "fp16" else _HEAVIEST
        every = (d == 64 and dtype in ("bf16", "fp32-ieee")) or (d, dtype) == (128, "bf16")
        return _EVERY_MODE if every else _HEAVIEST
    if target == 80:
        return _HEAVIEST if d == 64 and dtype in ("bf16", "fp32-tf32") else ()
    if (dtype in ("bf16", "fp32-tf32") and d in (64, 128)) or (dtype, d) == ("fp32-ieee", 64):
        return ((False, True), (True, True))
    return ()


class _Recorder:
    """Stands in for a Triton kernel: records the arguments of its launch by name."""

    def __init__(self, fn, log: dict, name: str):
        self.fn, self.log, self.name = fn, log, name

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            # the leading arguments by position, the constexprs by keyword
            positional = dict(zip(self.fn.arg_names, args, strict=False))
            self.log[self.name] = {**positional, **kwargs}

        return launch


def launch_arguments(variant: Variant) -> dict:
    """The arguments (by name, keywords included) that the launchers pass to the
    variant's kernel at its shape: `fused_forward` and `fused_backward` themselves run
    on meta tensors (B x N = 65,536 tokens, H 8, window 256, block 64: the benchmark's)
    with recorders in place of the kernels, so no launch rule is copied here."""
    import torch

    from benchmarks import shapes
    from stretto.kernels.wha import configs, fused

    n, d = variant.seq_len, variant.head_dim
    b = shapes.batch_size("cuda", n)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(variant.dtype, torch.float32)
    q = torch.empty(b, shapes.HEADS, n, d, dtype=dtype, device="meta")
    key_real = torch.ones(b, n, dtype=torch.bool, device="meta") if variant.padded else None
    kw = dict(
        window=shapes.WINDOW,
        block=shapes.BLOCK if variant.summaries else None,
        causal=variant.causal,
        scale=d**-0.5,
    )
    log: dict = {}
    recorders = {name: _Recorder(fn, log, name) for name, fn in fused.KERNELS.items()}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = variant.dtype == "fp32-tf32"
        with (
            mock.patch.dict(fused.KERNELS, recorders),
            mock.patch.object(fused, "_pool_kernel", _Recorder(fused._pool_kernel, log, "pool")),
            mock.patch.object(fused, "_INTERPRET", False),  # the GPU's launch, always
            mock.patch.object(configs, "autotune_enabled", lambda: False),
        ):
            outs = fused.fused_forward(q, q, q, key_real, **kw)
            fused.fused_backward(q, q, q, q, key_real, *outs, **kw)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return log[variant.kernel]


def specialization(value) -> tuple[str, bool]:
    """(signature type, divisible by 16) Triton's JIT gives a launch argument (the same
    rule in Triton 3.6 and 3.9): an int equal to 1 becomes the constant "constexpr"; a
    tensor is a pointer, 16-byte aligned as the caching allocator hands it out."""
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _TRITON_DTYPES[str(value.dtype)], True
    if isinstance(value, float):
        return "fp32", False
    if value == 1:
        return "constexpr", False
    return ("i32" if -(2**31) <= value < 2**31 else "i64"), value % 16 == 0


def _signature(fn, variant: Variant):
    """(signature, constexprs, attrs, options) for `triton.compile` of one variant."""
    from stretto.kernels.wha import configs

    args = launch_arguments(variant)
    if variant.kernel == "pool":
        options = {k: args[k] for k in ("num_warps", "num_stages") if k in args}
    else:
        # the launch recorded sm_90's pinned tiles (meta tensors): take the variant's
        cfg = configs.TileConfig.from_json(variant.config)
        args.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_S=cfg.block_s)
        options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    sig, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if i in fn.constexprs:
            sig[name] = "constexpr"
            constexprs[name] = args[name]
            continue
        sig[name], divisible = specialization(args[name])
        if sig[name] == "constexpr":
            constexprs[name] = args[name]
        if divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, constexprs, attrs, options


def _cuobjdump(flag: str, cubin: str) -> str:
    """What `cuobjdump FLAG CUBIN` prints (CalledProcessError if it fails)."""
    return subprocess.run(
        [_tool("cuobjdump"), flag, cubin], capture_output=True, text=True, check=True
    ).stdout


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
            usage = _cuobjdump("--dump-resource-usage", f.name)
            sass = _cuobjdump("--dump-sass", f.name)
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


def _spill(result: Result) -> str:
    if not (result.stack_bytes or result.local_bytes):
        return ""
    return f"spills: stack {result.stack_bytes} B, local {result.local_bytes} B"


def _spill_fails(v: Variant) -> bool:
    """A spill fails 16-bit variants at lengths Triton marks divisible by 16 (where the
    configs were pinned; the benchmark's). TF32 and fp32-ieee spills, and 16-bit ones
    at other lengths, are reported only: see `reported`."""
    return v.dtype in ("bf16", "fp16") and v.seq_len % 16 == 0


def problems(result: Result) -> list[str]:
    """Why a variant fails the check (empty when it passes)."""
    v = result.variant
    out = []
    if result.status != "ok":
        return [result.status]
    if result.shared_bytes > SMEM_LIMIT[v.target]:
        out.append(f"shared memory {result.shared_bytes} B > {SMEM_LIMIT[v.target]} B")
    if _spill_fails(v) and _spill(result):
        out.append(_spill(result))
    return out


def reported(result: Result) -> list[str]:
    """What the table reports about a variant that passes the check: a spill where the
    check does not fail on one."""
    if result.status != "ok" or _spill_fails(result.variant) or not _spill(result):
        return []
    return [_spill(result) + " (reported only)"]


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
    noted = [r for r in results if reported(r)]
    lines = [
        f"# Fused kernels compiled ahead of time (Triton {triton.__version__})",
        "",
        f"Command: `{command}`  ",
        f"torch {torch.__version__}, triton {triton.__version__}, {len(results)} variants, "
        f"{elapsed_s:.0f} s wall on {os.cpu_count()} CPUs (Triton's disk cache may hold "
        "some of them).",
        "",
        "Each variant is compiled with the signature its launch gets at B x N = 65,536 "
        "tokens, H 8, window 256, block 64: `mask` is a key padding mask (HAS_KEY_REAL; the "
        "benchmark has none), and N 1023 is a length Triton does not mark divisible by 16.",
        "",
        "Registers and stack (spill) bytes are per thread; shared memory is what one "
        "program asks for at launch. Fails the check: a compile error, shared memory over "
        "the target's limit (sm_90 227 KB, sm_80 163 KB), a spill in a 16-bit variant at "
        "N 2048; spills of TF32 and fp32-ieee variants, and of 16-bit ones at N 1023, are "
        "reported only. "
        "`compile s` is this run's time: a few milliseconds means Triton's cache held it.",
        "",
        f"**{len(bad)} variant(s) fail the check; {len(noted)} more spill (reported only).**",
        "",
        "| kernel | sm | dtype | D | mode | sums | mask | N | config | regs | stack B | "
        "smem B | SASS instr | tensor-core instr | compile s | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v = r.variant
        cfg = "" if not v.config else _label(v.config)
        check = "; ".join(problems(r)) or "; ".join(["ok", *reported(r)])
        lines.append(
            f"| {v.kernel} | {v.target} | {v.dtype} | {v.head_dim} | "
            f"{'causal' if v.causal else 'bidir'} | {'yes' if v.summaries else 'no'} | "
            f"{'yes' if v.padded else 'no'} | {v.seq_len} | {cfg} | "
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
    parser = argparse.ArgumentParser(prog="python -m gpu.compile_table")
    parser.add_argument("--targets", type=int, nargs="+", default=[90, 80], choices=[90, 80])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=None, help="folder for the table")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here only")
    parser.add_argument("--full", action="store_true", help="the whole product of variants")
    parser.add_argument("--candidates", action="store_true", help="every autotune candidate")
    args = parser.parse_args(argv)
    command = "python -m gpu.compile_table " + shlex.join(sys.argv[1:] if argv is None else argv)
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
    noted = [(r.variant.label(), reported(r)) for r in results if reported(r)]
    for label, what in noted:
        print(f"NOTE {label}: {'; '.join(what)}", file=sys.stderr)
    print(
        f"{len(results)} variants, {len(failing)} failing, {len(noted)} spilling (reported "
        f"only), {elapsed:.0f} s",
        file=sys.stderr,
    )
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
