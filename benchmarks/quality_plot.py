"""The quality suite's figures, drawn from its rows' `extra` (so that
`python -m benchmarks.plot RUN_DIR` redraws them):

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

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.quality_report import SOURCE_ORDER, VARIANT_ORDER, quality_rows
from benchmarks.schema import is_measured

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


def plot_quality(
    rows: Sequence[Mapping[str, Any]], out_dir: Path, *, title_suffix: str = ""
) -> list[Path]:
    """Write the module docstring's figures that the rows allow; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    written = []
    likelihood = [r for r in quality_rows(rows, "held-out-nll") if is_measured(r)]
    if likelihood:
        written.append(_curves(likelihood, out_dir / "quality-nll-curves.png", title_suffix))
        written.append(_buckets(likelihood, out_dir / "quality-position-buckets.png", title_suffix))
    music = [r for r in quality_rows(rows, "generated-vs-held-out") if is_measured(r)]
    if music:
        path = out_dir / "quality-generated-vs-held-out.png"
        written.append(_music(music, path, title_suffix))
    probability = [r for r in quality_rows(rows, "note-off-probability") if is_measured(r)]
    deletion = [r for r in quality_rows(rows, "note-off-deletion") if is_measured(r)]
    if probability and deletion:
        path = out_dir / "quality-note-off.png"
        written.append(_note_off(probability[0], deletion[0], path, title_suffix))
    return written


def _lengths(rows) -> list[int]:
    return sorted({int(r["seq_len"]) for r in rows})


def _curves(rows, path: Path, suffix: str) -> Path:
    import matplotlib.pyplot as plt

    lengths = _lengths(rows)
    fig, axes = plt.subplots(
        2, len(lengths), figsize=(4.2 * len(lengths), 6.6), squeeze=False, sharey="col"
    )
    for col, n in enumerate(lengths):
        top, bottom = axes[0][col], axes[1][col]
        for r in rows:
            if r["seq_len"] != n:
                continue
            e, name = r["extra"], r["provider"]
            color = COLORS.get(name)
            if e.get("kind") == "baseline":
                for ax in (top, bottom):
                    ax.axhline(e["nll"], color=color, ls="--", lw=1, label=name)
                continue
            for i, curve in enumerate(e.get("curves") or []):
                label = name if i == 0 else None
                top.plot(curve["step"], curve["nll"], color=color, marker=".", lw=1, label=label)
                bottom.plot(curve["seconds"], curve["nll"], color=color, marker=".", lw=1)
        top.set_title(f"{n} tokens", fontsize=10)
        top.set_xlabel("training step")
        bottom.set_xlabel("training seconds (side by side)")
        for ax in (top, bottom):
            ax.set_ylabel("held-out NLL (nats/token)")
            ax.grid(True, alpha=0.3)
        _zoom(top, rows, n)
        top.legend(fontsize=7)
    return _save(fig, path, f"held-out NLL per attention, every seed\n{suffix}")


def _zoom(ax, rows, n: int) -> None:
    """The y range of the trained part of the curves and the baselines: step 0's NLL
    (about ln 774) would flatten everything else."""
    values = []
    for r in rows:
        if r["seq_len"] != n:
            continue
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
    import matplotlib.pyplot as plt

    lengths = _lengths(rows)
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.8), squeeze=False)
    order = {name: i for i, name in enumerate(VARIANT_ORDER)}
    for col, n in enumerate(lengths):
        ax = axes[0][col]
        chosen = sorted(
            (r for r in rows if r["seq_len"] == n), key=lambda r: order.get(r["provider"], 99)
        )
        for r in chosen:
            e = r["extra"]
            labels = list((e.get("buckets") or {}).keys()) + ["past window"]
            values = list((e.get("buckets") or {}).values()) + [e.get("past_window")]
            xs = [i for i, v in enumerate(values) if v is not None]
            ys = [v for v in values if v is not None]
            ls = "--" if e.get("kind") == "baseline" else "-"
            ax.plot(xs, ys, marker="o", ls=ls, color=COLORS.get(r["provider"]), label=r["provider"])
            ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(f"{n} tokens", fontsize=10)
        ax.set_xlabel("target position in the window")
        ax.set_ylabel("held-out NLL (nats/token)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path, f"held-out NLL by position, median over seeds\n{suffix}")


def _music(rows, path: Path, suffix: str) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    from benchmarks.quality_music import (
        HISTOGRAMS,
        NOTE_STATISTICS,
        STATISTICS,
        UNITS,
        histogram_labels,
    )

    by_source = {r["provider"]: r["extra"]["summary"] for r in rows}
    notes = [s for s in NOTE_STATISTICS if any(s in summary for summary in by_source.values())]
    stats = STATISTICS + tuple(notes)
    sources = ["held-out-B"] + [s for s in SOURCE_ORDER if s in by_source]
    sources = [s for s in sources if s in by_source]
    cols = 3
    rows_n = -(-len(stats) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.0 * cols, 3.4 * rows_n), squeeze=False)
    for ax, stat in zip(axes.flat, stats, strict=False):
        if stat in HISTOGRAMS:
            labels = histogram_labels(stat)
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
            ax.set_ylabel("share")
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
            ax.set_ylabel(UNITS[stat])
        ax.set_title(stat, fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(stats) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    title = "generated pieces against held-out half B (black), half A and the unigram model"
    return _save(fig, path, f"{title}\n{suffix}", dpi=100)


def _note_off(probability, deletion, path: Path, suffix: str) -> Path:
    import matplotlib.pyplot as plt

    left_extra, right_extra = probability["extra"], deletion["extra"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    buckets = left_extra["buckets"]
    labels = list(buckets)
    xs = [i for i, k in enumerate(labels) if buckets[k]["p"] is not None]
    left.plot(xs, [buckets[labels[i]]["p"] for i in xs], marker="o", color=COLORS["transformer"])
    window = left_extra.get("window")
    lows = [int(k.split("-")[0].rstrip("+")) for k in labels]
    past = [i for i, lo in enumerate(lows) if window and lo > window]
    if past:
        left.axvline(past[0] - 0.5, color="tab:red", ls="--", lw=1, label=f"window {window}")
        left.legend(fontsize=7)
    left.set_ylim(bottom=0)  # from 0: "low everywhere" must read as low
    left.set_xticks(range(len(labels)), labels, fontsize=8)
    left.set_xlabel("tokens from the NOTE_ON")
    left.set_ylabel("p(correct NOTE_OFF), teacher-forced")
    left.set_title(f"{probability['provider']}, held-out pieces", fontsize=10)
    shares = right_extra["shares"]
    keys = [k for k in shares if shares[k]["polyphony"] is not None]
    right.plot(
        [100 * float(k) for k in keys],
        [shares[k]["polyphony"] for k in keys],
        marker="o",
        color=COLORS["held-out-B"],
    )
    right.set_xlabel("NOTE_OFFs deleted (%)")
    right.set_ylabel("polyphony (notes)")
    right.set_title("held-out pieces with NOTE_OFFs deleted", fontsize=10)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    return _save(fig, path, f"why generated notes do not end\n{suffix}")


def _save(fig, path: Path, title: str, dpi: int = 110) -> Path:
    """Title, lay out, write and close `fig`; returns `path`."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
