"""Plots of a run: time and memory against sequence length, one line per provider, and
the quality suite's own figures (`benchmarks.quality_plot`).

`python -m benchmarks.plot RUN_DIR` draws them from RUN_DIR/results.json (or
results.csv). Only measured rows with a sequence length are drawn, and only cases measured at two
lengths or more; a figure's y axis is logarithmic when its values span more than a
factor of ten.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.schema import is_measured

METRICS = (("median_ms", "time", "median time (ms)"), ("peak_mem_mb", "memory", "peak memory (MB)"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def load_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of a run folder, from results.json, else results.csv."""
    run_dir = Path(run_dir)
    if (run_dir / "results.json").is_file():
        return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))["rows"]
    rows = []
    with (run_dir / "results.csv").open(newline="", encoding="utf-8") as f:
        for line in csv.DictReader(f):
            row: dict[str, Any] = dict(line)
            for key in ("seq_len", "median_ms", "p20_ms", "p80_ms", "peak_mem_mb"):
                row[key] = float(line[key]) if line.get(key) else None
            rows.append(row)
    return rows


def _series(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[tuple, dict[str, list]]:
    """(suite, mode) -> provider label -> sorted (seq_len, value, low, high) points."""
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        value = row.get(metric)
        if not is_measured(row) or value is None or not row.get("seq_len"):
            continue
        label = str(row["provider"])
        if row.get("dtype") not in (None, "", "-"):
            label += f" ({row['dtype']})"
        low = row.get("p20_ms") if metric == "median_ms" else None
        high = row.get("p80_ms") if metric == "median_ms" else None
        groups[(row["suite"], row["mode"])][label].append(
            (int(row["seq_len"]), float(value), low, high)
        )
    for providers in groups.values():
        for points in providers.values():
            points.sort()
    return groups


def plot_rows(
    rows: Sequence[Mapping[str, Any]], out_dir: Path, *, title_suffix: str = ""
) -> list[Path]:
    """Write `<suite>-<mode>-<time|memory>.png` files into `out_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written: list[Path] = []
    # One colour per provider across every figure of the run.
    labels = sorted({lb for m, _, _ in METRICS for g in _series(rows, m).values() for lb in g})
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {label: palette[i % len(palette)] for i, label in enumerate(labels)}
    for metric, kind, ylabel in METRICS:
        for (suite, mode), providers in sorted(_series(rows, metric).items()):
            if max(len(points) for points in providers.values()) < 2:
                continue  # one length is a table entry, not a curve
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            values = []
            for label, points in sorted(providers.items()):
                xs = [p[0] for p in points]
                ys = [p[1] for p in points]
                values += ys
                ax.plot(xs, ys, marker="o", label=label, color=colors[label])
                if all(p[2] is not None and p[3] is not None for p in points):
                    lows = [p[2] for p in points]
                    highs = [p[3] for p in points]
                    ax.fill_between(xs, lows, highs, color=colors[label], alpha=0.15)
            seq = sorted({p[0] for pts in providers.values() for p in pts})
            ax.set_xscale("log", base=2)
            ax.set_xticks(seq, [str(s) for s in seq])
            positive = [v for v in values if v > 0]
            if positive and max(positive) / min(positive) > 10:
                ax.set_yscale("log")
            ax.set_xlabel("sequence length (tokens)")
            ax.set_ylabel(ylabel)
            title = f"{suite} · {mode} · {kind}"
            ax.set_title(f"{title}\n{title_suffix}" if title_suffix else title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = out_dir / f"{_slug(suite)}-{_slug(mode)}-{kind}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    if any(row.get("suite") == "quality" for row in rows):
        from benchmarks.quality_plot import plot_quality

        written += plot_quality(rows, out_dir, title_suffix=title_suffix)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run folder holding results.json or .csv")
    args = parser.parse_args(argv)
    rows = load_rows(args.run_dir)
    device = next((str(r.get("device")) for r in rows if r.get("device")), "")
    for path in plot_rows(rows, args.run_dir, title_suffix=device):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
