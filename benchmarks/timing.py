"""Timers and memory probes shared by the suites.

CUDA: `triton.testing.do_bench` (CUDA events, warm-up, L2 flushed between runs) with
inputs rotated across calls, and `torch.cuda.max_memory_allocated` after a reset.
CPU: `time.perf_counter` runs of several providers interleaved in one process, so
their ratios share the machine's state, and the peak resident size of a fresh
child process per memory case.

Every figure is a measurement: nothing here estimates or fills in a number.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import queue as queue_module
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

QUANTILES = (0.5, 0.2, 0.8)
MB = 1024 * 1024


@dataclass(frozen=True)
class Timing:
    """Median and 20th/80th percentiles of one case, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    samples: int

    def as_row(self) -> dict[str, float]:
        return {"median_ms": self.median_ms, "p20_ms": self.p20_ms, "p80_ms": self.p80_ms}


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of a non-empty sequence."""
    if not values:
        raise ValueError("quantile of an empty sequence")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def timing_from_samples(samples_ms: Sequence[float]) -> Timing:
    med, p20, p80 = (quantile(samples_ms, q) for q in QUANTILES)
    return Timing(med, p20, p80, len(samples_ms))


# -- CUDA ---------------------------------------------------------------------------


def bench_cuda(
    fn: Callable[..., Any],
    inputs: Sequence[tuple[Any, ...]] | None = None,
    *,
    warmup_ms: int = 25,
    rep_ms: int = 100,
    grad_to_none: Sequence[Any] | None = None,
) -> Timing:
    """Time `fn(*args)` with CUDA events; `args` cycles through `inputs` call by call.

    Pass several copies of the inputs whose total size exceeds the L2 cache so that no
    call finds its operands already cached; do_bench also flushes L2 between calls.
    """
    from triton.testing import do_bench

    if inputs:
        cycle = itertools.cycle(inputs)

        def call() -> Any:
            return fn(*next(cycle))

    else:
        call = fn
    med, p20, p80 = do_bench(
        call,
        warmup=warmup_ms,
        rep=rep_ms,
        grad_to_none=list(grad_to_none) if grad_to_none else None,
        quantiles=list(QUANTILES),
    )
    return Timing(float(med), float(p20), float(p80), samples=-1)


def cuda_peak_memory_mb(fn: Callable[[], Any]) -> dict[str, float]:
    """Peak CUDA memory of one `fn()` call.

    `peak_mem_mb` is what the call allocated above what was already allocated before
    it (its inputs), so that growth with sequence length reads directly;
    `peak_total_mb` is `max_memory_allocated` including the inputs.
    """
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_mem_mb": (peak - before) / MB, "peak_total_mb": peak / MB}


def synchronize(device: str) -> None:
    """Wait for queued device work, so a timed callable covers all of it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# -- CPU ----------------------------------------------------------------------------


def bench_cpu(
    cases: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    repeats: int = 7,
    min_repeats: int = 3,
    budget_s: float | None = None,
) -> dict[str, Timing]:
    """Time several providers side by side: each round runs every case once.

    The order alternates between rounds so that drift in the machine's state (other
    processes, frequency, caches) falls on all cases alike; their ratios are the result.
    After `min_repeats` rounds, a `budget_s` in seconds stops further rounds.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            cases[name]()
            samples[name].append((time.perf_counter() - t0) * 1e3)
        spent = time.perf_counter() - start
        if budget_s is not None and round_ + 1 >= min_repeats and spent > budget_s:
            break
    return {name: timing_from_samples(s) for name, s in samples.items()}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# glibc's mallopt parameter number of M_MMAP_THRESHOLD (malloc.h).
_M_MMAP_THRESHOLD = -3
_FIXED_MMAP_THRESHOLD = 65536


def _fix_mmap_threshold() -> bool:
    """Have glibc serve blocks above 64 KiB by mmap and unmap them when freed, so
    memory a warm-up freed is not still resident when the measured call starts."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _FIXED_MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False


def _child_peak_rss(
    build: Callable[..., Callable[[], Any]],
    kwargs: dict,
    warmup_kwargs: dict | None,
    fixed_mmap: bool,
    queue,
) -> None:
    try:
        import gc

        if fixed_mmap:
            _fix_mmap_threshold()
        if warmup_kwargs is None:
            run = build(**kwargs)
            run()  # warm-up: lazy initialisation is not the case's memory
        else:
            build(**warmup_kwargs)()  # a cheaper case warms the same code paths
            gc.collect()
            run = build(**kwargs)
        gc.collect()
        before_kb = _status_kb("VmRSS")
        reset = _reset_peak_rss()
        start = time.perf_counter()
        run()
        elapsed_ms = (time.perf_counter() - start) * 1e3
        hwm_kb = _status_kb("VmHWM")
        if before_kb is None or hwm_kb is None:
            import resource

            # ru_maxrss is in kilobytes on Linux; it covers the whole process life.
            hwm_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            before_kb = 0
            reset = False
        queue.put(
            {
                "peak_mem_mb": max(0, hwm_kb - before_kb) / 1024,
                "peak_rss_mb": hwm_kb / 1024,
                "rss_before_mb": before_kb / 1024,
                "peak_reset": reset,
                "elapsed_ms": elapsed_ms,
            }
        )
    except BaseException as exc:  # reported to the parent as the case's status
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _child_context():
    """Fresh processes per case, forked from a server that has already imported torch.

    Forkserver children start in a fraction of a second instead of importing torch
    again (seconds on a small CPU); each is still a new process, with its own
    high-water mark. Where forkserver is missing, plain spawn.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch"])  # import only: no threads, no CUDA before fork
    return ctx


def peak_rss_in_child(
    build: Callable[..., Callable[[], Any]],
    kwargs: dict | None = None,
    *,
    timeout_s: float = 300,
    warmup_kwargs: dict | None = None,
    timed: bool = False,
) -> dict[str, Any]:
    """Peak resident memory of one case, measured in a fresh child process.

    `build(**kwargs)` runs in the child (so it must be a module-level function) and
    returns the callable to measure. The child warms up, by running that callable once
    or, with `warmup_kwargs`, by running `build(**warmup_kwargs)()` (a cheaper case on
    the same code paths, so a long case runs exactly once), then resets the high-water
    mark and runs the measured callable once. Returns `peak_mem_mb` (peak RSS above the
    RSS just before the measured call, i.e. above the inputs and the interpreter),
    `peak_rss_mb` and `rss_before_mb`, with `timed` also `elapsed_ms` (wall time of
    that one measured call), or `error` with the reason. `timeout_s` bounds the whole
    child, warm-up included.

    Untimed, glibc returns freed blocks above 64 KiB to the system at once, so nothing
    the warm-up freed is still resident. Timed, the allocator keeps its defaults (that
    setting would slow the timed call); memory the warm-up freed and glibc kept may then
    be reused by the measured call without raising the peak, which is why a timed child
    should warm up on a small case (`warmup_kwargs`).
    """
    ctx = _child_context()
    queue = ctx.Queue()
    # Untimed, the child fixes glibc's mmap threshold (see _fix_mmap_threshold); timed,
    # it keeps the default allocator: an mmap and page faults for every large block
    # made the tiny preset's no-cache generation about 5x slower on two cores.
    args = (build, dict(kwargs or {}), warmup_kwargs, not timed, queue)
    proc = ctx.Process(target=_child_peak_rss, args=args)
    proc.start()
    deadline = time.monotonic() + timeout_s
    result: dict[str, Any] | None = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except queue_module.Empty:
            if not proc.is_alive():
                try:  # the child may have put its result just before exiting
                    result = queue.get(timeout=1.0)
                except queue_module.Empty:
                    result = {"error": f"child exited with code {proc.exitcode} (killed?)"}
            elif time.monotonic() > deadline:
                result = {"error": f"no result within {timeout_s:.0f} s"}
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if not timed:
        result.pop("elapsed_ms", None)
    return result
