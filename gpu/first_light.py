"""GPU first light: the stages of `gpu/run.sh`, each a process of its own.

    python -m gpu.first_light STAGE --out DIR --deadline EPOCH_S [--device cuda|cpu]

Stages, most valuable first (the script runs them in this order):

- probe: versions, device, compute capability, missing packages, the measured copy
  bandwidth and bf16 matmul rate (the roofline's ceilings).
- correctness: every fused kernel on real tiles against the float64 reference, a case
  table that covers each dtype (bf16, fp16, fp32 IEEE, fp32 TF32), causal and
  bidirectional, with and without summaries and padding, N 512 / 1023 / 2048 and head
  dims 64 / 128 / 80 with few compiles; raw errors of o, dq, dk, dv per case, the
  tolerance verdict, poisoned outputs, a bitwise rerun; then the op under
  `torch.compile(fullgraph=True)` against eager.
- timing: the benchmark shape (bf16, B32 H8 N2048 D64, window 256, block 64): the
  public op forward and forward+backward, each kernel alone (profiler), SDPA flash
  causal (pinned to its flash backend), FlexAttention with the same mask, SDPA with a
  dense mask and the torch fallback; then N 512..8192 at 65,536 tokens with peak
  memory, the op against SDPA flash.
- decode: the base preset's one-token step, eager against compiled (CUDA graph), with
  the graph skips Inductor recorded, launches per token, outputs against the full
  forward; `generate(compile_step=True)` against eager.

Each stage appends JSON lines to `DIR/<stage>.jsonl`, one row at a time, flushed as
soon as it is measured, so a stage stopped at any point keeps what it measured. A
stage stops itself before `--deadline` (seconds since the epoch) and says so in a row.
On a CPU (`--device cpu`, the rehearsal) the kernels run under Triton's interpreter on
tiny shapes, and what cannot run there is a row that says why.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STAGES = ("probe", "correctness", "timing", "decode")
# Packages the GPU image may lack; the probe says which are missing.
PROBED = (
    "torch",
    "triton",
    "numpy",
    "numba",
    "symusic",
    "muspy",
    "music21",
    "transformers",
    "lightning",
    "matplotlib",
    "safetensors",
    "tqdm",
    "pytest",
    "xdist",
    "flash_attn",
)


class Rows:
    """A stage's JSON-lines file: one row per measurement, flushed when written."""

    def __init__(self, out: Path, stage: str, device: str, deadline: float) -> None:
        self.path = out / f"{stage}.jsonl"
        self.stage, self.device, self.deadline = stage, device, deadline
        self.start = time.time()
        self._file = self.path.open("a", buffering=1)

    def write(self, **fields: Any) -> None:
        row = {
            "stage": self.stage,
            "device": self.device,
            "t_s": round(time.time() - self.start, 2),
            **fields,
        }
        self._file.write(json.dumps(row, default=_jsonable) + "\n")
        self._file.flush()
        print(f"[{self.stage}] " + json.dumps(fields, default=_jsonable)[:300], flush=True)

    def left_s(self) -> float:
        return self.deadline - time.time()

    def out_of_time(self, need_s: float = 0.0) -> bool:
        """True (and a row saying so) when less than `need_s` seconds remain."""
        if self.left_s() > need_s:
            return False
        self.write(status=f"stopped: the stage's budget is spent ({self.left_s():.0f} s left)")
        return True


def _jsonable(x: Any) -> Any:
    return str(x)  # dtypes, devices, paths: their names


def _error(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {exc}"[:500]


# -- probe ---------------------------------------------------------------------------------


def stage_probe(rows: Rows, device: str) -> None:
    import torch

    for name in PROBED:
        try:
            module = importlib.import_module(name)
            rows.write(
                package=name,
                version=getattr(module, "__version__", "?"),
                path=getattr(module, "__file__", None),
            )
        except Exception as exc:  # a missing package is a finding, not a failure
            rows.write(package=name, status=f"missing: {type(exc).__name__}: {exc}"[:300])
    rows.write(
        python=sys.version.split()[0],
        platform=platform.platform(),
        triton_interpret=os.environ.get("TRITON_INTERPRET"),
    )
    if device != "cuda":
        rows.write(status="skipped: no CUDA device (rehearsal); ceilings are measured on CUDA")
        return
    props = torch.cuda.get_device_properties(0)
    rows.write(
        gpu=torch.cuda.get_device_name(0),
        capability=list(torch.cuda.get_device_capability(0)),
        multiprocessors=props.multi_processor_count,
        memory_gib=props.total_memory / 2**30,
        l2_mib=getattr(props, "L2_cache_size", 0) / 2**20,
        cuda=torch.version.cuda,
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
    )
    try:
        smi = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,"
                "temperature.gpu,power.draw",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        rows.write(nvidia_smi=smi.stdout.strip() or smi.stderr.strip())
    except Exception as exc:
        rows.write(nvidia_smi=_error(exc))
    from benchmarks.attention_bench import measure_ceilings

    ceilings = measure_ceilings()
    rows.write(
        measured_copy_GBps=ceilings["bandwidth_Bps"] / 1e9,
        measured_bf16_tflops=ceilings["bf16_flops"] / 1e12,
    )


# -- correctness ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    dtype: str  # bf16, fp16, fp32-ieee, fp32-tf32
    n: int
    d: int
    causal: bool
    block: int | None
    pad: bool
    b: int = 2
    h: int = 4
    window: int = 256

    @property
    def label(self) -> str:
        return (
            f"{self.dtype}-N{self.n}-D{self.d}-{'causal' if self.causal else 'bidir'}-"
            f"{'b' + str(self.block) if self.block else 'nosum'}-{'pad' if self.pad else 'nopad'}"
        )


def correctness_cases(device: str) -> list[Case]:
    """A covering table, not a product: every value of every factor appears, the
    benchmark's case (bf16, N 2048, D 64, causal, summaries, no padding) first."""
    if device != "cuda":
        # The interpreter: 16x16 tiles, fp32 only, tiny shapes (N 48 and 37, D 16 and 24).
        return [
            Case("fp32-ieee", 48, 16, True, 8, False, 1, 2, 12),
            Case("fp32-ieee", 37, 24, False, 8, True, 2, 2, 12),
            Case("fp32-ieee", 37, 16, True, None, True, 2, 2, 12),
            Case("bf16", 48, 16, True, 8, False, 1, 2, 12),
        ]
    c = Case
    return [
        c("bf16", 2048, 64, True, 64, False),
        c("fp16", 2048, 64, True, 64, False),
        c("fp32-tf32", 2048, 64, True, 64, False),
        c("fp32-ieee", 2048, 64, True, 64, False),
        c("bf16", 1023, 128, False, 64, True),
        c("bf16", 512, 64, True, None, True),
        c("bf16", 1023, 80, True, 64, True),
        c("bf16", 2048, 128, False, None, False),
        c("fp16", 1023, 64, False, 64, True),
        c("fp16", 512, 128, True, 64, True),
        c("fp32-tf32", 512, 128, False, 64, True),
        c("fp32-ieee", 1023, 80, True, 64, True),
        c("fp16", 2048, 80, False, None, True),
        c("fp32-tf32", 1023, 64, True, None, False),
    ]


def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)


def _tf32(case: Case):
    """The TF32 switch as the case wants it (fp32 cases follow torch's own flag)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def switch() -> Iterator[None]:
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = case.dtype == "fp32-tf32"
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before

    return switch()


def _attend(q, k, v, mask, case: Case, backend: str, up):
    """(o, dq, dk, dv) of the op for upstream gradient `up`."""
    import torch

    from stretto.kernels import hierarchical_attention

    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    o = hierarchical_attention(
        *leaves,
        window=case.window,
        block=case.block,
        causal=case.causal,
        key_padding_mask=mask,
        backend=backend,
    )
    grads = torch.autograd.grad(o, leaves, up)
    return (o.detach(), *grads)


def _errors(fast, plain, ref) -> dict[str, Any]:
    from stretto.kernels import testing

    out: dict[str, Any] = {}
    ok = True
    for name, f, p, r in zip(("o", "dq", "dk", "dv"), fast, plain, ref, strict=True):
        r64 = r.double()
        rel = ((f.double() - r64).norm() / r64.norm().clamp_min(1e-30)).item()
        out[f"{name}_rel"] = rel
        out[f"{name}_max_abs"] = testing.max_abs_error(f, r)
        out[f"{name}_plain_max_abs"] = testing.max_abs_error(p, r)
        try:
            testing.assert_close_to_reference(f, p, r, name=name)
        except AssertionError as exc:
            ok = False
            out[f"{name}_verdict"] = str(exc)[:300]
    out["within_policy"] = ok
    return out


def _inputs(case: Case, device: str, seed: int):
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (case.b, case.h, case.n, case.d)
    q, k, v, up = (torch.randn(shape, generator=gen) for _ in range(4))
    mask = None
    if case.pad:  # the end of row 0 and a stretch in the middle of row 1 padded
        mask = torch.ones(case.b, case.n, dtype=torch.bool)
        mask[0, case.n - min(37, case.n // 4) :] = False
        if case.b > 1:
            mask[1, case.n // 3 : case.n // 3 + min(50, case.n // 4)] = False
    return [x.to(device) for x in (q, k, v, up)], None if mask is None else mask.to(device)


def stage_correctness(rows: Rows, device: str) -> None:
    import torch

    from stretto.kernels import testing

    if device != "cuda":
        rows.write(
            status="note: the interpreter runs 16x16 tiles in fp32; 16-bit dots, "
            "wgmma tiles and 512-row splits run on CUDA only"
        )
    for i, case in enumerate(correctness_cases(device)):
        if rows.out_of_time(need_s=15):
            return
        start = time.time()
        try:
            if device != "cuda" and case.dtype in ("bf16", "fp16"):
                rows.write(
                    case=case.label,
                    status="skipped: the Triton interpreter cannot compute a 16-bit dot on a CPU",
                )
                continue
            (q, k, v, up), mask = _inputs(case, device, seed=1000 + i)
            dtype = _dtype(case.dtype)
            qd, kd, vd = (x.to(dtype) for x in (q, k, v))
            with _tf32(case), testing.poisoned_outputs():
                fast = _attend(qd, kd, vd, mask, case, "triton", up.to(dtype))
                again = _attend(qd, kd, vd, mask, case, "triton", up.to(dtype))
                plain = _attend(qd, kd, vd, mask, case, "reference", up.to(dtype))
            ref = _attend(
                qd.double(),
                kd.double(),
                vd.double(),
                mask,
                case,
                "reference",
                up.to(dtype).double(),
            )
            bitwise = all(torch.equal(a, b) for a, b in zip(fast, again, strict=True))
            nan = any(bool(x.isnan().any()) for x in fast)
            rows.write(
                case=case.label,
                **asdict(case),
                bitwise_rerun=bitwise,
                any_nan=nan,
                seconds=round(time.time() - start, 2),
                **_errors(fast, plain, ref),
            )
        except Exception as exc:
            traceback.print_exc()
            rows.write(case=case.label, status=_error(exc), seconds=round(time.time() - start, 2))
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
    if rows.out_of_time(need_s=20):
        return
    _compiled_op(rows, device)


def _compiled_op(rows: Rows, device: str) -> None:
    """The op under torch.compile(fullgraph=True): output and grads equal to eager."""
    import torch

    case = correctness_cases(device)[0]
    if device != "cuda":
        case = Case("fp32-ieee", 37, 16, True, 8, True, 2, 2, 12)
    try:
        (q, k, v, up), mask = _inputs(case, device, seed=7)
        dtype = _dtype(case.dtype)
        q, k, v, up = (x.to(dtype) for x in (q, k, v, up))
        torch._dynamo.reset()

        def attend(q, k, v):
            from stretto.kernels import hierarchical_attention

            return hierarchical_attention(
                q,
                k,
                v,
                window=case.window,
                block=case.block,
                causal=case.causal,
                key_padding_mask=mask,
                backend="triton",
            )

        compiled = torch.compile(attend, fullgraph=True)
        start = time.time()
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        o = compiled(*leaves)
        grads = torch.autograd.grad(o, leaves, up)
        eager = _attend(q, k, v, mask, case, "triton", up)
        diffs = {
            name: (a.double() - b.double()).abs().max().item()
            for name, a, b in zip(("o", "dq", "dk", "dv"), (o.detach(), *grads), eager, strict=True)
        }
        rows.write(
            case="torch.compile(fullgraph=True) " + case.label,
            compile_and_run_s=round(time.time() - start, 2),
            max_abs_diff_to_eager=diffs,
            equal=all(d == 0 for d in diffs.values()),
        )
    except Exception as exc:
        traceback.print_exc()
        rows.write(case="torch.compile(fullgraph=True)", status=_error(exc))


# -- timing --------------------------------------------------------------------------------


def stage_timing(rows: Rows, device: str) -> None:
    import torch

    from benchmarks import attention_bench as ab
    from benchmarks import shapes
    from benchmarks.timing import bench_cpu, bench_cuda, cuda_peak_memory_mb

    cuda = device == "cuda"
    ceilings = ab.measure_ceilings() if cuda else None
    dtype = torch.bfloat16 if cuda else torch.float32
    dtype_name = "bfloat16" if cuda else "float32"
    # the benchmark shape first, then the scaling sweep at constant tokens
    sweep = [(32, 2048), (128, 512), (64, 1024), (16, 4096), (8, 8192)] if cuda else [(1, 256)]
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    everyone = ("stretto-triton", "sdpa-causal", "flex", "sdpa-dense-mask", "stretto-torch")
    for batch, n in sweep:
        shape = shapes.AttentionShape(batch, shapes.HEADS, n, shapes.HEAD_DIM)
        first = (batch, n) == sweep[0]
        if cuda and first:
            _kernel_split(rows, shape)
        # every peer at the benchmark shape; the scaling sweep times the op against
        # flash (FlexAttention compiles per shape, past the lease's minutes)
        providers = everyone if first else ("stretto-triton", "sdpa-causal")
        for mode in ab.MODES:
            if rows.out_of_time(need_s=20):
                return
            q, k, v, do = ab._inputs(shape, dtype, device, grad=(mode == "fwd+bwd"))
            flops, nbytes = ab._work(shape, mode, torch.finfo(dtype).bits // 8)
            for provider in providers:
                if rows.out_of_time(need_s=10):
                    return
                base = dict(
                    provider=provider,
                    mode=mode,
                    shape=shape.label,
                    seq_len=n,
                    batch=batch,
                    dtype=dtype_name,
                )
                try:
                    torch._dynamo.reset()
                    attend = _flash_only(
                        ab._provider(provider, shape, device, mode), provider, cuda
                    )
                    case = ab._case(attend, mode, q, k, v, do)
                    case()
                    grads = [q, k, v] if mode == "fwd+bwd" else None
                    if cuda:
                        torch.cuda.synchronize()
                        t = bench_cuda(case, grad_to_none=grads)
                        mem = cuda_peak_memory_mb(case)
                        extra = ab._roofline(nbytes, flops, t.median_ms, ceilings)
                        rows.write(
                            **base,
                            **t.as_row(),
                            peak_mem_mb=mem["peak_mem_mb"],
                            tflops=flops / (t.median_ms * 1e-3) / 1e12,
                            **extra,
                            status="ok",
                        )
                    else:
                        (t,) = bench_cpu(
                            {provider: case}, warmup=0, repeats=3, budget_s=10
                        ).values()
                        rows.write(**base, **t.as_row(), status="ok (CPU rehearsal)")
                except ab._Skip as exc:
                    rows.write(**base, status=f"skipped: {exc}")
                except Exception as exc:
                    traceback.print_exc()
                    rows.write(**base, status=_error(exc))
                finally:
                    if cuda:
                        torch.cuda.empty_cache()
            del q, k, v, do


def _flash_only(attend, provider: str, cuda: bool):
    """SDPA's causal peer pinned to its FlashAttention backend on CUDA (an error, not a
    silent fallback, when flash cannot run)."""
    if provider != "sdpa-causal" or not cuda:
        return attend
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def flash(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return attend(q, k, v)

    return flash


def _kernel_split(rows: Rows, shape) -> None:
    """Each kernel alone: device time per launch from the profiler over 5 fwd+bwd."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from stretto.kernels import hierarchical_attention

    try:
        gen = torch.Generator(device="cpu").manual_seed(3)
        size = (shape.batch, shape.heads, shape.seq_len, shape.head_dim)
        q, k, v, do = (
            torch.randn(size, generator=gen).to("cuda", torch.bfloat16) for _ in range(4)
        )
        q, k, v = (x.requires_grad_() for x in (q, k, v))

        def step():
            o = hierarchical_attention(
                q, k, v, window=shape.window, block=shape.block, backend="triton"
            )
            o.backward(do)

        step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        for event in prof.key_averages():
            device_us = getattr(event, "device_time_total", None)
            if device_us is None:
                device_us = getattr(event, "cuda_time_total", 0)
            if device_us and event.count:
                rows.write(
                    kernel=event.key[:80],
                    launches=event.count,
                    device_us_per_launch=device_us / event.count,
                    shape=shape.label,
                    dtype="bfloat16",
                    what="profiler, 5 x (forward + backward)",
                )
    except Exception as exc:
        traceback.print_exc()
        rows.write(what="kernel split", status=_error(exc))


# -- decode --------------------------------------------------------------------------------


def stage_decode(rows: Rows, device: str) -> None:
    import torch

    from benchmarks.timing import quantile
    from stretto.engine import ModelConfig, MusicModel
    from stretto.engine.generate import DecodeStep
    from stretto.tokenizer.vocabulary import Vocabulary

    cuda = device == "cuda"
    preset = "base" if cuda else "tiny"
    torch.manual_seed(0)
    config = ModelConfig.from_vocab(Vocabulary(), preset=preset)
    model = MusicModel(config).to(device).eval()
    prompt_len, steps = (64, 256) if cuda else (16, 48)
    gen = torch.Generator(device="cpu").manual_seed(5)
    ids = torch.randint(4, 180, (1, prompt_len + steps), generator=gen).to(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    params = sum(p.numel() for p in model.parameters())
    rows.write(preset=preset, parameters=params, prompt=prompt_len, steps=steps)

    def run_steps(compile_step: bool):
        cache = model.new_cache(1, prompt_len + steps + 16)  # + the launch count's 8 steps
        with torch.no_grad():
            model.decoder_logits(ids[:, :prompt_len], None, None, None, cache)
            step = DecodeStep(model, cache, None, compile=compile_step)
            logits, times = [], []
            for i in range(prompt_len, prompt_len + steps):
                sync()
                t0 = time.perf_counter()
                out = step(ids[:, i])
                sync()
                times.append(time.perf_counter() - t0)
                logits.append(out.float().clone())
        return step, torch.stack(logits, 1), times

    try:
        # the step fed ids[:, i] gives the logits at position i, as the full forward does
        with torch.no_grad():
            full = model.decoder_logits(ids, None, None, None, None)[:, prompt_len:].float()
        _, eager_logits, eager_t = run_steps(False)
        eager_ms = 1e3 * quantile(eager_t[5:], 0.5)
        rows.write(
            what="eager step",
            ms_per_token=eager_ms,
            max_abs_diff_to_full_forward=(eager_logits - full).abs().max().item(),
        )
    except Exception as exc:
        traceback.print_exc()
        rows.write(what="eager step", status=_error(exc))
        return
    if rows.out_of_time(need_s=60):
        return
    try:
        torch._dynamo.reset()
        start = time.time()
        step, comp_logits, comp_t = run_steps(True)
        comp_ms = 1e3 * quantile(comp_t[10:], 0.5)
        rows.write(
            what="compiled step",
            ms_per_token=comp_ms,
            first_call_s=comp_t[0],
            first_steps_s=sum(comp_t[:10]),
            total_s=round(time.time() - start, 2),
            speedup_vs_eager=eager_ms / comp_ms if comp_ms > 0 else None,
            cudagraph_skips=step.cudagraph_skips(),
            skip_reasons=step.cudagraph_skip_reasons(),
            max_abs_diff_to_eager=(comp_logits - eager_logits).abs().max().item(),
            max_abs_diff_to_full_forward=(comp_logits - full).abs().max().item(),
        )
        if cuda:
            rows.write(what="launches per token", **_launches_per_token(step, ids, prompt_len))
    except Exception as exc:
        traceback.print_exc()
        rows.write(what="compiled step", status=_error(exc))
    if rows.out_of_time(need_s=60):
        return
    _generate_rows(rows, model, device)


def _launches_per_token(step, ids, prompt_len: int) -> dict[str, Any]:
    """Runtime launch calls per token over 8 compiled steps (profiler, CPU side)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    tokens = 8
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(tokens):
            step(ids[:, prompt_len + i % 4])
        torch.cuda.synchronize()
    counts: dict[str, int] = {}
    for event in prof.key_averages():
        name = event.key
        if "LaunchKernel" in name or "GraphLaunch" in name or "cuLaunch" in name:
            counts[name] = counts.get(name, 0) + event.count
    return {"per_token": {k: v / tokens for k, v in counts.items()}, "tokens": tokens}


def _generate_rows(rows: Rows, model, device: str) -> None:
    import torch

    cuda = device == "cuda"
    new = 512 if cuda else 64
    # on CUDA a second compiled call shows the steady state after the first's compile
    for compile_step in (False, True, True) if cuda else (False, True):
        if rows.out_of_time(need_s=30):
            return
        try:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(
                max_new_tokens=new, temperature=0.0, seed=0, compile_step=compile_step
            )
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            made = out.shape[1] - 1
            rows.write(
                what="generate",
                compile_step=compile_step,
                new_tokens=made,
                seconds=seconds,
                tokens_per_s=made / seconds,
                batch=1,
                sampling="greedy, constrained",
            )
        except Exception as exc:
            traceback.print_exc()
            rows.write(what="generate", compile_step=compile_step, status=_error(exc))


# -- entry ---------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Rows, str], None]] = {
    "probe": stage_probe,
    "correctness": stage_correctness,
    "timing": stage_timing,
    "decode": stage_decode,
}


def check(out: Path, budget_s: float) -> list[str]:
    """What a finished run in `out` lacks: every stage wrote rows and ended (finished,
    or stopped at its budget, not killed), the pytest stage left its report, at most 8
    files, and the whole run kept to `budget_s`."""
    problems = []
    for stage in STAGES:
        path = out / f"{stage}.jsonl"
        rows = (
            [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        )
        measured = [
            r for r in rows if set(r) - {"stage", "device", "t_s", "status", "commit", "budget_s"}
        ]
        ends = [r for r in rows if str(r.get("status", "")).startswith(("finished", "stopped"))]
        if not measured:
            problems.append(f"{stage}: no rows measured")
        if not ends:
            problems.append(f"{stage}: no closing row (killed, or never started)")
    for name in ("pytest.log", "pytest-junit.xml", "run.log"):
        if not (out / name).is_file():
            problems.append(f"{name} was not written")
    files = sorted(p.name for p in out.iterdir())
    if len(files) > 8:
        problems.append(f"{len(files)} files in {out}, more than the 8 a GPU run returns")
    log = (out / "run.log").read_text() if (out / "run.log").is_file() else ""
    done = [line for line in log.splitlines() if "] done in " in line]
    if not done:
        problems.append("run.log has no closing line")
    else:
        took = int(done[-1].split("] done in ", 1)[1].split()[0])
        if took > budget_s:
            problems.append(f"the run took {took} s, over its {budget_s:.0f} s budget")
    return problems


SUMMARY_FIELDS = (
    "case",
    "within_policy",
    "bitwise_rerun",
    "o_rel",
    "dq_rel",
    "dk_rel",
    "dv_rel",
    "provider",
    "kernel",
    "what",
    "mode",
    "seq_len",
    "median_ms",
    "device_us_per_launch",
    "peak_mem_mb",
    "roofline_fraction",
    "ms_per_token",
    "speedup_vs_eager",
    "cudagraph_skips",
    "per_token",
    "tokens_per_s",
    "compile_step",
    "status",
    "gpu",
    "measured_copy_GBps",
    "measured_bf16_tflops",
    "max_abs_diff_to_eager",
    "max_abs_diff_to_full_forward",
    "equal",
    "first_call_s",
)


def summary(out: Path) -> None:
    """One short line per row of every stage (the run's table, for a terminal)."""
    for stage in STAGES:
        path = out / f"{stage}.jsonl"
        for line in path.read_text().splitlines() if path.is_file() else []:
            row = json.loads(line)
            parts = []
            for key in SUMMARY_FIELDS:
                if key in row and key != "package":
                    value = row[key]
                    if isinstance(value, float):
                        value = f"{value:.3g}"
                    parts.append(f"{key}={value}")
            if parts:
                print(f"{stage[:4]} " + " ".join(str(x) for x in parts)[:220])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu.first_light")
    parser.add_argument(
        "stage", choices=(*STAGES, "check", "summary"), help="a stage, or check or sum up a run"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for <stage>.jsonl")
    parser.add_argument(
        "--deadline", type=float, help="seconds since the epoch by which the stage stops itself"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--budget", type=float, default=450, help="check: the run's budget (s)")
    args = parser.parse_args(argv)
    if args.stage == "summary":
        summary(args.out)
        return 0
    if args.stage == "check":
        problems = check(args.out, args.budget)
        for problem in problems:
            print(f"first light check: {problem}")
        print(f"first light check: {'FAILED' if problems else 'ok'} ({args.out})")
        return 1 if problems else 0
    if args.deadline is None:
        parser.error("--deadline is required for a stage")
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    args.out.mkdir(parents=True, exist_ok=True)
    rows = Rows(args.out, args.stage, args.device, args.deadline)
    rows.write(
        status="started", commit=os.environ.get("STRETTO_COMMIT"), budget_s=round(rows.left_s(), 1)
    )
    try:
        RUNNERS[args.stage](rows, args.device)
    except Exception as exc:
        traceback.print_exc()
        rows.write(status=_error(exc))
        return 1
    rows.write(status="finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
