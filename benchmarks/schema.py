"""The benchmarks' row protocol and suite list: a leaf module that imports nothing of
`benchmarks`, read by the runner (`core`), the report, the plots and `stretto bench`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_ROOT = REPO_ROOT / "benchmarks" / "results"

# Suite name -> module; run in this order when no suite is named.
SUITES: dict[str, str] = {
    "tokenizer": "benchmarks.tokenizer_bench",
    "attention": "benchmarks.attention_bench",
    "model": "benchmarks.model_bench",
    "generate": "benchmarks.generate_bench",
    "memory": "benchmarks.memory_bench",
    "quality": "benchmarks.quality_bench",
}

# Suites a run without suite names leaves out: they train models for many minutes and
# run only when named (`python -m benchmarks quality`).
OPT_IN_SUITES = ("quality",)

# Settings only some suites take (`run(..., corpus=...)`): the runner passes each one
# to the suites whose `run` names it, and refuses one that no suite of the run takes.
SUITE_OPTIONS = ("corpus", "steps", "seconds", "blocks", "providers", "batches")

# Suites that sweep `shapes.seq_lens(quick=..., scaling=True)`; when their `run` takes no
# `seq_lens`, the runner filters their rows by length instead.
TABLE_SWEEP_SUITES = ("attention",)

MEASURED_FIELDS = ("median_ms", "p20_ms", "p80_ms", "peak_mem_mb", "tokens_per_s", "tflops")
ENV_FIELDS = ("device", "torch", "triton", "stretto", "commit", "date")
ROW_FIELDS = (
    ("suite", "provider", "mode", "shape", "seq_len", "dtype")
    + MEASURED_FIELDS
    + ("status",)
    + ENV_FIELDS
    + ("extra",)
)


class SuiteUnavailable(Exception):
    """A suite, or something it needs, is not there; its rows read "skipped: <reason>"."""


def skipped_row(suite: str, reason: str, **what: Any) -> dict[str, Any]:
    """A row saying that a case was not measured, and why."""
    row = {"suite": suite, "provider": "-", "mode": "-", "shape": "-", "dtype": "-"}
    row.update(what)
    row["status"] = reason if reason.startswith("skipped:") else f"skipped: {reason}"
    return row


def progress(message: str) -> None:
    """One line on stderr, so that a long run shows where it is."""
    print(message, file=sys.stderr, flush=True)


def is_measured(row: Mapping[str, Any]) -> bool:
    return str(row.get("status", "ok")) == "ok"


# The quality suite's likelihood variants and music sources, in the order its tables and
# figures show them (a block sweep's `wha-b<N>` variants take the place of `wha`).
QUALITY_VARIANTS = (
    "wha",
    "wha-no-note-state",
    "wha-no-instrument-state",
    "wha-state-logits",
    "sliding-window",
    "dense",
    "unigram",
    "bigram",
)
QUALITY_SOURCES = (
    "held-out-A",
    "transformer",
    "transformer-no-note-state",
    "transformer-no-instrument-state",
    "transformer-state-logits",
    "vae",
    "vae_gan",
    "unigram",
)


def quality_rows(rows: Sequence[Mapping[str, Any]], mode: str) -> list[Mapping[str, Any]]:
    """The quality suite's rows of `mode`."""
    return [r for r in rows if r.get("suite") == "quality" and r.get("mode") == mode]


def variant_rank(name: str) -> int:
    """Where a likelihood variant's row goes in the quality suite's tables and figures."""
    if name.startswith("wha-b"):
        return 0
    return QUALITY_VARIANTS.index(name) if name in QUALITY_VARIANTS else len(QUALITY_VARIANTS)
