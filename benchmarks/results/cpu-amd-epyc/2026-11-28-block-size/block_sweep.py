"""The quality suite's likelihood part with other summary block sizes (tiny preset,
window 32): which block lets WHA beat the sliding window past the window.

    PYTHONPATH=. .venv/bin/python \
        benchmarks/results/cpu-amd-epyc/2026-11-28-block-size/block_sweep.py \
        /work/shared/midi/dev 2048 16 64 128

Arguments: the MIDI folder, the window length, then the block sizes to try beside the
sliding window (no summaries). Budget: the suite's FULL (400 steps, seeds 0 and 1).
Prints one JSON line per variant and writes rows.json beside this file.
"""

import json
import sys
import tempfile
from pathlib import Path

from benchmarks import quality_bench, quality_likelihood

folder, n = Path(sys.argv[1]), int(sys.argv[2])
blocks = [int(b) for b in sys.argv[3:]]
variants = {"wha": {"block": blocks[0]}}
variants.update({f"wha-b{b}": {"block": b} for b in blocks[1:]})
variants["sliding-window"] = {"block": None}
quality_likelihood.VARIANTS.clear()
quality_likelihood.VARIANTS.update(variants)
budget = quality_bench.FULL
with tempfile.TemporaryDirectory() as tmp:
    tokens = quality_bench.token_corpus(folder, Path(tmp) / "corpus")
    run = quality_bench.QualityRun(budget, tokens, folder, "cpu", None)
    rows = run._likelihood(n, run._baselines())
out = []
for row in rows:
    e = row["extra"]
    keep = {
        "variant": row["provider"],
        "block": e.get("block"),
        "nll": e.get("nll"),
        "nll_seeds": e.get("nll_seeds"),
        "past_window": e.get("past_window"),
        "nll_equal_time": e.get("nll_equal_time"),
        "buckets": e.get("buckets"),
        "step_ms": row.get("median_ms"),
    }
    print(json.dumps(keep))
    out.append(keep)
Path(__file__).with_name(f"rows-{n}.json").write_text(json.dumps(out, indent=1) + "\n")
