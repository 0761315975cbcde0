"""pytest-benchmark entry points: `pytest benchmarks/ --benchmark-only`.

Two kinds of benchmark, both quick:
- `test_suite_quick[<suite>]` runs each suite's quick sweep once; its rows (medians,
  peak memory, status) go to `extra_info["rows"]`.
- `test_attention_fwd_bwd` and `test_model_fwd_bwd` time one case each with
  pytest-benchmark's own rounds (CUDA work synchronized inside the timed callable), so
  `--benchmark-compare` tracks regressions of the core paths between commits.

`make test` never collects these: pytest's testpaths is ["tests"].
"""

from __future__ import annotations

import pytest

from benchmarks import core, shapes
from benchmarks.memory_bench import build_attention_case, build_model_case
from benchmarks.timing import synchronize

torch = pytest.importorskip("torch")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = shapes.dtype_name(DEVICE)
SEQ_LEN = 1024


def _compact(row: dict) -> dict:
    keys = ("provider", "mode", "shape", "dtype", "median_ms", "peak_mem_mb", "tokens_per_s")
    out = {k: row[k] for k in keys if row.get(k) is not None}
    out["status"] = row["status"]
    return out


@pytest.mark.parametrize("suite", list(core.SUITES))
def test_suite_quick(benchmark, suite):
    try:
        run = core.load_suite(suite)
    except core.SuiteUnavailable as exc:
        pytest.skip(str(exc))
    result: dict = {}

    def once():
        result["rows"] = core.call_suite(run, quick=True, device=DEVICE)

    benchmark.pedantic(once, rounds=1, iterations=1)
    rows = [core.normalize_row(r, suite, {}) for r in result["rows"]]
    benchmark.extra_info["device"] = core.device_name(DEVICE)
    benchmark.extra_info["rows"] = [_compact(r) for r in rows]
    errors = [r["status"] for r in rows if r["status"].startswith("error")]
    assert not errors, errors
    if not any(core.is_measured(r) for r in rows):
        pytest.skip(f"{suite}: nothing measured ({rows[0]['status']})")


def _skip_unavailable(provider: str) -> None:
    if provider.startswith("stretto-"):
        pytest.importorskip("stretto.kernels")
    if provider == "stretto-triton" and DEVICE != "cuda":
        pytest.skip("Triton kernels are timed on CUDA only")


@pytest.mark.parametrize(
    "provider", ["stretto-triton", "stretto-torch", "sdpa-causal", "sdpa-dense-band"]
)
def test_attention_fwd_bwd(benchmark, provider):
    _skip_unavailable(provider)
    shape = shapes.AttentionShape(
        shapes.batch_size(DEVICE, SEQ_LEN), shapes.HEADS, SEQ_LEN, shapes.HEAD_DIM
    )
    step = build_attention_case(
        provider,
        shape.batch,
        shape.heads,
        SEQ_LEN,
        shape.head_dim,
        shape.window,
        shape.block,
        DTYPE,
        DEVICE,
    )

    def timed():
        step()
        synchronize(DEVICE)

    timed()  # warm-up: autotuning and lazy initialisation stay out of the rounds
    benchmark(timed)
    benchmark.extra_info.update(shape=shape.label, dtype=DTYPE, device=core.device_name(DEVICE))
    benchmark.extra_info["tokens_per_s"] = shape.batch * SEQ_LEN / benchmark.stats["median"]


@pytest.mark.parametrize("provider", ["model-wha", "model-dense"])
def test_model_fwd_bwd(benchmark, provider):
    pytest.importorskip("stretto.engine.model")
    preset = "base" if DEVICE == "cuda" else "small"
    batch = shapes.batch_size(DEVICE, SEQ_LEN, kind="model")
    step = build_model_case(provider, preset, batch, SEQ_LEN, DTYPE, DEVICE)

    def timed():
        step()
        synchronize(DEVICE)

    timed()
    benchmark(timed)
    benchmark.extra_info.update(preset=preset, batch=batch, seq_len=SEQ_LEN, dtype=DTYPE)
    benchmark.extra_info["tokens_per_s"] = batch * SEQ_LEN / benchmark.stats["median"]
