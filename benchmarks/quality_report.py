"""The quality suite's tables (Markdown), drawn from its rows' `extra`.

`quality_markdown(rows)`: the held-out likelihood per length and attention (with the
n-gram baselines), then the distances of each source's pieces to held-out half B,
statistic by statistic, with real against real as the reference (and each distance as
a multiple of it), how each source's notes end, and the cause section: the held-out
NOTE_OFF probability by distance from the NOTE_ON, polyphony with NOTE_OFFs deleted,
and the sampler comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.schema import is_measured

VARIANT_ORDER = ("wha", "wha-no-note-state", "sliding-window", "dense", "unigram", "bigram")
SOURCE_ORDER = (
    "held-out-A",
    "transformer",
    "transformer-no-note-state",
    "vae",
    "vae_gan",
    "unigram",
)


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
    from benchmarks.quality_music import HISTOGRAMS, NOTE_STATISTICS, STATISTICS, UNITS

    rows = {r["provider"]: r for r in quality_rows(rows, "generated-vs-held-out")}
    sources = [s for s in SOURCE_ORDER if s in rows]
    if not sources:
        return ""
    header = ["statistic", "distance"] + [
        "real vs real (A vs B)" if s == "held-out-A" else s for s in sources
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = [stat for stat in NOTE_STATISTICS if _has(rows, stat)]
    for stat in STATISTICS + tuple(notes):
        measure = "1 - overlap" if stat in HISTOGRAMS else f"abs. mean diff. ({UNITS[stat]})"
        cells = [stat if stat in STATISTICS else f"{stat} (not of the 9)", measure]
        for source in sources:
            e = rows[source]["extra"]
            d = (e.get("distance") or {}).get(stat, {}).get("distance")
            cell = _f(d)
            multiple = (e.get("distance_multiple") or {}).get(stat)
            real = (e.get("reference_distance") or {}).get(stat)
            if multiple is not None and source != "held-out-A":
                cell += f" ({multiple:.1f}x)"
            elif real == 0 and d and source != "held-out-A":
                cell += " (real: 0)"
            if (e.get("closer_than_unigram") or {}).get(stat) is False:
                cell += " (not < unigram)"
            if (e.get("as_close_as_real") or {}).get(stat):
                cell += " (<= real)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    means = ["", "", "**mean per piece**"] + [""] * (len(sources) - 1)
    lines.append("| " + " | ".join(means[: len(header)]) + " |")
    for stat in STATISTICS + tuple(notes):
        if stat in HISTOGRAMS:
            continue
        reference = _mean(rows["held-out-B"], stat) if "held-out-B" in rows else ""
        cells = [stat, f"mean ({UNITS[stat]}); half B: {reference}"]
        cells += [_mean(rows[s], stat) for s in sources]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _has(rows: Mapping[str, Mapping[str, Any]], stat: str) -> bool:
    return any(stat in (r["extra"].get("distance") or {}) for r in rows.values())


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else ""


def endings_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """How each source's notes end (notes summed over its pieces)."""
    from benchmarks.quality_music import ENDINGS

    rows = {r["provider"]: r for r in quality_rows(rows, "generated-vs-held-out")}
    order = [s for s in ("held-out-B", *SOURCE_ORDER) if s in rows]
    header = ["source", "notes", "NOTE_OFF (model)", "re-struck", "closed at END / end", "at limit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for source in order:
        endings = (rows[source]["extra"].get("summary") or {}).get("endings")
        if not endings:
            continue
        total = sum(endings.values())
        cells = [source, f"{total:.0f}"] + [_share(endings[k], total) for k in ENDINGS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def note_off_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Teacher-forced probability of the correct NOTE_OFF per distance bucket."""
    found = [r for r in quality_rows(rows, "note-off-probability") if is_measured(r)]
    if not found:
        return ""
    lines = []
    for r in found:
        e = r["extra"]
        window = e.get("window")
        labels = list(e["buckets"])
        heads = [
            f"{label} *" if window and int(label.split("-")[0].rstrip("+")) > window else label
            for label in labels
        ]
        lines += [
            f"Model `{r['provider']}`, attention window {window} tokens (`*`: every NOTE_ON "
            f"of the bucket is out of the window), {e.get('pieces')} held-out pieces of "
            f"{r['seq_len']} tokens.",
            "",
            "| tokens from NOTE_ON | " + " | ".join(heads) + " |",
            "|" + "---|" * (len(labels) + 1),
            "| p(correct NOTE_OFF) | "
            + " | ".join(_f(e["buckets"][k]["p"]) for k in labels)
            + " |",
            "| NOTE_OFFs | " + " | ".join(str(e["buckets"][k]["count"]) for k in labels) + " |",
            "",
        ]
    return "\n".join(lines).rstrip()


def deletion_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Polyphony of held-out pieces with a share of their NOTE_OFFs deleted."""
    found = [r for r in quality_rows(rows, "note-off-deletion") if is_measured(r)]
    if not found:
        return ""
    shares = found[0]["extra"]["shares"]
    lines = [
        "| NOTE_OFFs deleted | polyphony (notes) | closed by NOTE_OFF |",
        "|---|---|---|",
    ]
    for share, v in shares.items():
        closed = v.get("closed_by_model")
        lines.append(
            f"| {100 * float(share):.0f}% | {_f(v.get('polyphony'), 2)} | "
            f"{'' if closed is None else f'{100 * closed:.1f}%'} |"
        )
    return "\n".join(lines)


def sampler_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The sampler comparison, or the reason it was skipped."""
    found = quality_rows(rows, "sampler")
    if not found:
        return ""
    skipped = [r for r in found if not is_measured(r)]
    if skipped and len(skipped) == len(found):
        return "\n".join(f"- {r['status']}" for r in skipped)
    header = [
        "sampler",
        "settings",
        "polyphony (notes)",
        "closed by NOTE_OFF",
        "closer than unigram (of 9)",
        "sample s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in found:
        if not is_measured(r):
            lines.append(f"| {r['provider']} | {r['status']} |" + " |" * (len(header) - 2))
            continue
        e = r["extra"]
        settings = ", ".join(f"{k}={v}" for k, v in (e.get("settings") or {}).items())
        closed = e.get("closed_by_model")
        name = r["provider"] + (" (best)" if e.get("best") else "")
        cells = [
            name,
            settings,
            _f(e.get("polyphony"), 2),
            "" if closed is None else f"{100 * closed:.1f}%",
            f"{e.get('closer_count')}",
            _f((r.get("median_ms") or 0) / 1e3, 1),
        ]
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
            "unigram model's samples; `(<= real)`: as close as real is to real; `(3.0x)`: "
            "the distance as a multiple of real against real (`(real: 0)` where that is 0). "
            "Rows `(not of the 9)` are note statistics reported beside the nine, not "
            "counted in the verdicts.",
            "",
            music,
            "",
            *verdicts(rows),
            "",
        ]
    cause = [
        ("How notes end", endings_table(rows), ENDINGS_NOTE),
        ("Teacher-forced NOTE_OFF probability by distance", note_off_table(rows), NOTE_OFF_NOTE),
        ("Polyphony with NOTE_OFFs deleted", deletion_table(rows), DELETION_NOTE),
        ("Samplers", sampler_table(rows), SAMPLER_NOTE),
    ]
    if any(table for _, table, _ in cause):
        parts += [f"{heading} Quality: why generated notes do not end", ""]
        for title, table, note in cause:
            if table:
                parts += [f"{heading}# {title}", "", note, "", table, ""]
    return "\n".join(parts)


ENDINGS_NOTE = (
    "Each note of each source's pieces, by what ended it: a NOTE_OFF the model "
    "emitted, a NOTE_ON on its sounding pitch (re-struck), nothing (closed by the "
    "decoder at END or at the end of the piece; a real window's notes cut by its end "
    "land here too), or a NOTE_OFF at the note-length limit."
)
NOTE_OFF_NOTE = (
    "Mean probability the model gives, teacher-forced on held-out pieces, to each "
    "NOTE_OFF that ends a sounding note, by its distance in tokens from that note's "
    "NOTE_ON. A drop past the attention window points at context; low everywhere, at "
    "what the model learnt."
)
DELETION_NOTE = (
    "Held-out pieces (both halves) with a random share of their NOTE_OFFs deleted, "
    "decoded and measured as the music table does: how far polyphony moves when "
    "releases go missing."
)
SAMPLER_NOTE = (
    "The transformer model's samples under each sampler setting (same seed and count "
    "as the music table; validity from its unconstrained samples), then temperature "
    "and top-p on the best setting (most statistics closer than unigram, then the "
    "smallest polyphony distance)."
)
