"""Plots of a run: time and memory against sequence length, one line per provider, and
the quality suite's figures.

`python -m benchmarks.plot RUN_DIR` draws them from RUN_DIR/results.json (or
results.csv). Only measured rows with a sequence length are drawn, and only cases measured at two
lengths or more; a figure's y axis is logarithmic when its values span more than a
factor of ten.

The quality suite's figures, drawn from its rows' `extra`:

- `quality-nll-curves.png`: held-out NLL against training step (top) and against
  training seconds (bottom) per attention variant, one column per length, every
  seed drawn, the unigram and bigram baselines as horizontal lines;
- `quality-position-buckets.png`: held-out NLL per position bucket of the window and
  past the window, per attention variant and baseline, one panel per length;
- `quality-generated-vs-held-out.png`: one panel per statistic: the pooled histograms
  (or the per-piece values, as box plots) of held-out half B, half A, each mode's
  samples and the unigram model's samples, then the note statistics beside them;
- `quality-note-off.png`: the teacher-forced probability of the correct NOTE_OFF by
  distance from its NOTE_ON, the attention window marked (left), and held-out
  polyphony against the share of NOTE_OFFs deleted (right).
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

from benchmarks.schema import QUALITY_SOURCES, is_measured, quality_rows, variant_rank

METRICS = (("median_ms", "time", "median time (ms)"), ("peak_mem_mb", "memory", "peak memory (MB)"))
# The quality figures' colours, fixed per variant and source across figures.
COLORS = {
    "wha": "tab:blue",
    "sliding-window": "tab:orange",
    "dense": "tab:green",
    "unigram": "tab:gray",
    "bigram": "tab:brown",
    "held-out-B": "black",
    "held-out-A": "tab:olive",
    "transformer": "tab:blue",
    "vae": "tab:purple",
    "vae_gan": "tab:red",
}


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
            if len({p[0] for points in providers.values() for p in points}) < 2:
                continue  # one length is a table entry, not a curve (however many rows)
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
            title = f"{suite} · {mode} · {kind}"
            title = f"{title}\n{title_suffix}" if title_suffix else title
            _style(ax, "sequence length (tokens)", ylabel, title, legend=8)
            path = out_dir / f"{_slug(suite)}-{_slug(mode)}-{kind}.png"
            written.append(_save(fig, path))
    return written + _plot_quality(rows, out_dir, title_suffix)


def _style(ax, xlabel: str, ylabel: str, title: str | None = None, legend: int = 7) -> None:
    """Labels, a title, a light grid on both tick levels and a legend of `legend`-point text."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=legend)


def _save(fig, path: Path, title: str | None = None, dpi: int = 110) -> Path:
    """Title (above every panel), lay out, write and close `fig`; returns `path`."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# -- the quality suite's figures ------------------------------------------------------


def _plot_quality(rows: Sequence[Mapping[str, Any]], out_dir: Path, suffix: str) -> list[Path]:
    """The module docstring's quality figures that the rows allow."""
    written = []
    likelihood = [r for r in quality_rows(rows, "held-out-nll") if is_measured(r)]
    if likelihood:
        written.append(_curves(likelihood, out_dir / "quality-nll-curves.png", suffix))
        written.append(_buckets(likelihood, out_dir / "quality-position-buckets.png", suffix))
    music = [r for r in quality_rows(rows, "generated-vs-held-out") if is_measured(r)]
    if music:
        written.append(_music(music, out_dir / "quality-generated-vs-held-out.png", suffix))
    probability = [r for r in quality_rows(rows, "note-off-probability") if is_measured(r)]
    deletion = [r for r in quality_rows(rows, "note-off-deletion") if is_measured(r)]
    if probability and deletion:
        path = out_dir / "quality-note-off.png"
        written.append(_note_off(probability[0], deletion[0], path, suffix))
    return written


def _panels(rows, rows_n: int, height: float, **kw):
    """(lengths, axes): one column of `rows_n` panels per length of `rows`."""
    import matplotlib.pyplot as plt

    lengths = sorted({int(r["seq_len"]) for r in rows})
    size = (4.2 * len(lengths), height)
    return lengths, plt.subplots(rows_n, len(lengths), figsize=size, squeeze=False, **kw)


def _curves(rows, path: Path, suffix: str) -> Path:
    lengths, (fig, axes) = _panels(rows, 2, 6.6, sharey="col")
    for col, n in enumerate(lengths):
        top, bottom = axes[0][col], axes[1][col]
        for r in (r for r in rows if r["seq_len"] == n):
            e, name = r["extra"], r["provider"]
            color = COLORS.get(name)
            if e.get("kind") == "baseline":
                for ax in (top, bottom):
                    ax.axhline(e["nll"], color=color, ls="--", lw=1, label=name)
            for i, curve in enumerate(e.get("curves") or []):
                label = name if i == 0 else None
                top.plot(curve["step"], curve["nll"], color=color, marker=".", lw=1, label=label)
                bottom.plot(curve["seconds"], curve["nll"], color=color, marker=".", lw=1)
        ylabel = "held-out NLL (nats/token)"
        _style(top, "training step", ylabel, f"{n} tokens")
        _style(bottom, "training seconds (side by side)", ylabel, legend=0)
        _zoom(top, rows, n)
    return _save(fig, path, f"held-out NLL per attention, every seed\n{suffix}")


def _zoom(ax, rows, n: int) -> None:
    """The y range of the trained part of the curves and the baselines: step 0's NLL
    (about ln 774) would flatten everything else."""
    values = []
    for r in (r for r in rows if r["seq_len"] == n):
        e = r["extra"]
        if e.get("kind") == "baseline":
            values.append(e["nll"])
        for curve in e.get("curves") or []:
            values += curve["nll"][1:]
    if values:
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)


def _buckets(rows, path: Path, suffix: str) -> Path:
    lengths, (fig, axes) = _panels(rows, 1, 3.8)
    for col, n in enumerate(lengths):
        ax = axes[0][col]
        chosen = (r for r in rows if r["seq_len"] == n)
        for r in sorted(chosen, key=lambda r: variant_rank(r["provider"])):
            e = r["extra"]
            labels = list((e.get("buckets") or {}).keys()) + ["past window"]
            values = list((e.get("buckets") or {}).values()) + [e.get("past_window")]
            xs = [i for i, v in enumerate(values) if v is not None]
            ys = [v for v in values if v is not None]
            ls = "--" if e.get("kind") == "baseline" else "-"
            ax.plot(xs, ys, marker="o", ls=ls, color=COLORS.get(r["provider"]), label=r["provider"])
            ax.set_xticks(range(len(labels)), labels, fontsize=8)
        _style(ax, "target position in the window", "held-out NLL (nats/token)", f"{n} tokens")
    return _save(fig, path, f"held-out NLL by position, median over seeds\n{suffix}")


def _music(rows, path: Path, suffix: str) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    from benchmarks import quality_music as qm

    by_source = {r["provider"]: r["extra"]["summary"] for r in rows}
    notes = [s for s in qm.NOTE_STATISTICS if any(s in summary for summary in by_source.values())]
    stats = qm.STATISTICS + tuple(notes)
    sources = [s for s in ("held-out-B", *QUALITY_SOURCES) if s in by_source]
    cols, rows_n = 3, -(-len(stats) // 3)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.0 * cols, 3.4 * rows_n), squeeze=False)
    for ax, stat in zip(axes.flat, stats, strict=False):
        if stat in qm.HISTOGRAMS:
            labels = qm.histogram_labels(stat)
            x = np.arange(len(labels))
            for source in sources:
                hist = (by_source[source].get(stat) or {}).get("histogram")
                if hist is None:
                    continue
                lw = 2.2 if source == "held-out-B" else 1.2
                ls = "--" if source == "unigram" else "-"
                ax.step(x, hist, where="mid", lw=lw, ls=ls, color=COLORS.get(source), label=source)
            step = max(1, len(labels) // 8)
            ax.set_xticks(x[::step], labels[::step], fontsize=7)
        else:
            data, names = [], []
            for source in sources:
                values = (by_source[source].get(stat) or {}).get("values") or []
                values = [v for v in values if v is not None]
                if values:
                    data.append(values)
                    names.append(source)
            if data:
                box = ax.boxplot(data, patch_artist=True)
                for patch, source in zip(box["boxes"], names, strict=True):
                    patch.set_facecolor(COLORS.get(source, "white"))
                    patch.set_alpha(0.5)
                ax.set_xticks(range(1, len(names) + 1), names, fontsize=7, rotation=20)
        _style(ax, "", "share" if stat in qm.HISTOGRAMS else qm.UNITS[stat], stat, legend=0)
    for ax in list(axes.flat)[len(stats) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    title = "generated pieces against held-out half B (black), half A and the unigram model"
    return _save(fig, path, f"{title}\n{suffix}", dpi=100)


def _note_off(probability, deletion, path: Path, suffix: str) -> Path:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    buckets = probability["extra"]["buckets"]
    labels = list(buckets)
    xs = [i for i, k in enumerate(labels) if buckets[k]["p"] is not None]
    left.plot(xs, [buckets[labels[i]]["p"] for i in xs], marker="o", color=COLORS["transformer"])
    window = probability["extra"].get("window")
    past = [i for i, k in enumerate(labels) if window and int(k.split("-")[0].rstrip("+")) > window]
    if past:
        left.axvline(past[0] - 0.5, color="tab:red", ls="--", lw=1, label=f"window {window}")
    left.set_ylim(bottom=0)  # from 0: "low everywhere" must read as low
    left.set_xticks(range(len(labels)), labels, fontsize=8)
    title = f"{probability['provider']}, held-out pieces"
    _style(left, "tokens from the NOTE_ON", "p(correct NOTE_OFF), teacher-forced", title)
    shares = deletion["extra"]["shares"]
    keys = [k for k in shares if shares[k]["polyphony"] is not None]
    xs, ys = [100 * float(k) for k in keys], [shares[k]["polyphony"] for k in keys]
    right.plot(xs, ys, marker="o", color=COLORS["held-out-B"])
    title = "held-out pieces with NOTE_OFFs deleted"
    _style(right, "NOTE_OFFs deleted (%)", "polyphony (notes)", title)
    return _save(fig, path, f"why generated notes do not end\n{suffix}")


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
