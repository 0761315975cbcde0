"""The quality suite's tables (Markdown), drawn from its rows' `extra`.

`quality_markdown(rows)`: the held-out likelihood per length and attention (with the
n-gram baselines), then the distances of each source's pieces to held-out half B,
statistic by statistic, with real against real as the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.schema import is_measured

VARIANT_ORDER = ("wha", "sliding-window", "dense", "unigram", "bigram")
SOURCE_ORDER = ("held-out-A", "transformer", "vae", "vae_gan", "unigram")


def _f(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def quality_rows(rows: Sequence[Mapping[str, Any]], mode: str) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("suite") == "quality" and r.get("mode") == mode]


def likelihood_table(rows: Sequence[Mapping[str, Any]]) -> str:
    rows = [r for r in quality_rows(rows, "held-out-nll") if is_measured(r)]
    if not rows:
        return ""
    labels: list[str] = []
    for r in rows:
        for label in r["extra"].get("buckets") or {}:
            if label not in labels:
                labels.append(label)
    labels.sort(key=lambda s: int(s.split("-")[0]))
    header = (
        ["length", "model", "NLL/token (seeds)", "bits/token", "NLL/s of music"]
        + [f"pos {label}" for label in labels]
        + ["past window", "NLL at equal time", "train step ms"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = {name: i for i, name in enumerate(VARIANT_ORDER)}
    rows = sorted(rows, key=lambda r: (r["seq_len"] or 0, order.get(r["provider"], 99)))
    for r in rows:
        e = r["extra"]
        nll = _f(e.get("nll"))
        seeds = e.get("nll_seeds")
        if seeds and len(seeds) > 1:
            nll += f" ({', '.join(_f(v) for v in seeds)})"
        model = r["provider"]
        if e.get("kind") == "attention":
            block = e.get("block")
            model += f" (w{e.get('window')}" + (f", b{block})" if block else ")")
            if e.get("attention") == "dense":
                model = "dense"
        buckets = e.get("buckets") or {}
        cells = [
            str(r["seq_len"]),
            model,
            nll,
            _f(e.get("bits")),
            _f(e.get("nll_per_second"), 2),
            *[_f(buckets.get(label)) for label in labels],
            _f(e.get("past_window")),
            _f(e.get("nll_equal_time")),
            _f(r.get("median_ms"), 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def music_table(rows: Sequence[Mapping[str, Any]]) -> str:
    from benchmarks.quality_music import HISTOGRAMS, STATISTICS, UNITS

    rows = {r["provider"]: r for r in quality_rows(rows, "generated-vs-held-out")}
    sources = [s for s in SOURCE_ORDER if s in rows]
    if not sources:
        return ""
    header = ["statistic", "distance"] + [
        "real vs real (A vs B)" if s == "held-out-A" else s for s in sources
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for stat in STATISTICS:
        measure = "1 - overlap" if stat in HISTOGRAMS else f"abs. mean diff. ({UNITS[stat]})"
        cells = [stat, measure]
        for source in sources:
            e = rows[source]["extra"]
            d = (e.get("distance") or {}).get(stat, {}).get("distance")
            cell = _f(d)
            if (e.get("closer_than_unigram") or {}).get(stat) is False:
                cell += " (not < unigram)"
            if (e.get("as_close_as_real") or {}).get(stat):
                cell += " (<= real)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    means = ["", "", "**mean per piece**"] + [""] * (len(sources) - 1)
    lines.append("| " + " | ".join(means[: len(header)]) + " |")
    for stat in STATISTICS:
        if stat in HISTOGRAMS:
            continue
        reference = _mean(rows["held-out-B"], stat) if "held-out-B" in rows else ""
        cells = [stat, f"mean ({UNITS[stat]}); half B: {reference}"]
        cells += [_mean(rows[s], stat) for s in sources]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean(row: Mapping[str, Any], stat: str) -> str:
    value = ((row["extra"].get("summary") or {}).get(stat) or {}).get("mean")
    return _f(value)


def verdicts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per mode: the statistics where it is not closer than the unigram
    model's samples, and those where it is as close as real is to real."""
    out = []
    for r in quality_rows(rows, "generated-vs-held-out"):
        closer = r["extra"].get("closer_than_unigram")
        if not closer:
            continue
        worse = [k for k, ok in closer.items() if ok is False]
        real = [k for k, ok in (r["extra"].get("as_close_as_real") or {}).items() if ok]
        sentence = f"- {r['provider']}: closer to held-out than the unigram samples on "
        sentence += f"{sum(1 for ok in closer.values() if ok)} of {len(closer)} statistics"
        sentence += f" (not on: {', '.join(worse)})" if worse else " (all)"
        sentence += f"; as close as real is to real on: {', '.join(real) or 'none'}."
        out.append(sentence)
    return out


def quality_markdown(rows: Sequence[Mapping[str, Any]], *, heading: str = "##") -> str:
    """Both tables under `heading`-level titles; "" when the run has no quality rows."""
    likelihood = likelihood_table(rows)
    music = music_table(rows)
    parts = []
    if likelihood:
        first = next(r for r in quality_rows(rows, "held-out-nll") if is_measured(r))
        e = first["extra"]
        parts += [
            f"{heading} Quality: held-out likelihood",
            "",
            f"Corpus `{e.get('corpus')}`: {e.get('train_files')} training files, "
            f"{e.get('validation_files')} held-out files; preset `{e.get('preset')}`. "
            "NLL in nats per target token on windows of the held-out files, median over "
            "seeds (each seed in parentheses), at equal steps; `pos a-b`: targets at those "
            "positions of the window; `past window`: targets whose query is at or past "
            "the window; `NLL at equal time`: each variant's curve read at the training "
            "time of the fastest variant (step times measured side by side).",
            "",
            likelihood,
            "",
        ]
    if music:
        parts += [
            f"{heading} Quality: generated music against held-out music",
            "",
            "Distance of each set of pieces to held-out half B (1 - overlap of the pooled "
            "histogram, or the absolute difference of per-piece means); `real vs real` is "
            "held-out half A, the reference. `(not < unigram)`: not closer than the "
            "unigram model's samples; `(<= real)`: as close as real is to real.",
            "",
            music,
            "",
            *verdicts(rows),
            "",
        ]
    return "\n".join(parts)
