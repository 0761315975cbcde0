"""Writers for one run: results.csv, results.json, results.md, and the results README.

results.md holds the speed table and, for the quality suite, its own tables drawn from
its rows' `extra` (`quality_markdown`): the held-out likelihood per length and
attention with the n-gram baselines; the distances of each source's pieces to held-out
half B, statistic by statistic, with real against real as the reference (and each
distance as a multiple of it); how each source's notes end; and the cause section
(held-out NOTE_OFF probability by distance from the NOTE_ON, polyphony with NOTE_OFFs
deleted, the sampler comparison).

`python -m benchmarks.report RUN_DIR [--readme]` re-renders results.md and the plots of
a run folder from its results.json (for a folder copied back from a GPU machine), and
with `--readme` puts its table into benchmarks/results/README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.schema import (
    QUALITY_SOURCES,
    RESULTS_ROOT,
    ROW_FIELDS,
    is_measured,
    quality_rows,
    variant_rank,
)

CSV_NAME, JSON_NAME, MD_NAME = "results.csv", "results.json", "results.md"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """One line per row, columns in ROW_FIELDS order; `extra` as a JSON object."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW_FIELDS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            line = {k: row.get(k) for k in ROW_FIELDS}
            line["extra"] = json.dumps(row.get("extra") or {}, sort_keys=True, default=str)
            writer.writerow({k: "" if v is None else v for k, v in line.items()})
    os.replace(tmp, path)


def write_json(path: Path, meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> None:
    _atomic_write(path, json.dumps({"meta": meta, "rows": rows}, indent=1, default=str) + "\n")


def read_json(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data["meta"], data["rows"]


# -- Markdown -------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10**digits:
        return f"{value:,.0f}"
    decimals = max(0, digits - 1 - int(f"{magnitude:e}".split("e")[1]))
    return f"{value:.{decimals}f}"


def _fixed(value: float | None, decimals: int = 3) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def _line(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    """A Markdown table: the `header` cells, then one line per row of `body`."""
    return "\n".join([_line(header), "|" + "---|" * len(header), *map(_line, body)])


def relative_times(rows: Sequence[Mapping[str, Any]]) -> list[float | None]:
    """Each measured row's median over the best median among rows of the same case.

    Rows measured side by side (same suite, mode, shape and dtype) are one case; the
    fastest provider reads 1.00. A case with a single measured row has no ratio.
    """
    best: dict[tuple, float] = {}
    count: dict[tuple, int] = {}
    for row in rows:
        if is_measured(row) and row.get("median_ms"):
            key = (row["suite"], row["mode"], row["shape"], row["dtype"])
            best[key] = min(best.get(key, float("inf")), row["median_ms"])
            count[key] = count.get(key, 0) + 1
    best = {key: value for key, value in best.items() if count[key] > 1}  # a ratio needs two
    out: list[float | None] = []
    for row in rows:
        key = (row["suite"], row["mode"], row["shape"], row["dtype"])
        median = row.get("median_ms") if is_measured(row) else None
        out.append(median / best[key] if median and key in best else None)
    return out


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    header = ["suite", "provider", "mode", "shape", "dtype", "median ms", "p20-p80 ms"]
    header += ["vs best", "peak MB", "tokens/s", "TFLOP/s", "status"]
    body = []
    for row, rel in zip(rows, relative_times(rows), strict=True):
        spread = ""
        if row.get("p20_ms") is not None and row.get("p80_ms") is not None:
            spread = f"{_fmt(row['p20_ms'])}-{_fmt(row['p80_ms'])}"
        cells = [
            row["suite"],
            row["provider"],
            row["mode"],
            f"`{row['shape']}`" if row["shape"] not in ("", "-") else "-",
            row["dtype"],
            _fmt(row.get("median_ms")),
            spread,
            "" if rel is None else f"{rel:.2f}x",
            _fmt(row.get("peak_mem_mb")),
            _fmt(row.get("tokens_per_s")),
            _fmt(row.get("tflops")),
            str(row.get("status", "ok")).replace("|", "/"),
        ]
        body.append(cells)
    return _table(header, body)


def environment_line(meta: Mapping[str, Any]) -> str:
    commit = str(meta.get("commit", "unknown"))
    dirty = " (uncommitted changes)" if meta.get("commit_dirty") else ""
    run = ("quick" if meta.get("quick") else "full") + " run"
    filters = meta.get("filters") or {}
    if filters:
        parts = [f"{key} {', '.join(map(str, values))}" for key, values in filters.items()]
        run = f"{run}, filtered: {'; '.join(parts)}"
    options = meta.get("options") or {}
    if options:
        run = f"{run}, options: {'; '.join(f'{k} {v}' for k, v in options.items())}"
    return (
        f"Device: **{meta.get('device')}** · torch {meta.get('torch')} · "
        f"triton {meta.get('triton') or 'absent'} · stretto {meta.get('stretto')} · "
        f"commit `{commit[:12]}`{dirty} · {meta.get('date')} · {run}"
    )


PROTOCOL_NOTE = (
    "Medians with 20th-80th percentiles. CUDA: CUDA events via `triton.testing.do_bench`, "
    "peak memory from `torch.cuda.max_memory_allocated` above the inputs. CPU: providers "
    "timed side by side in one process (read the ratios, column *vs best*), peak memory "
    "as the peak RSS of a fresh child process above its size before the case. Rows marked "
    "skipped or error were not measured."
)


def render_markdown(
    meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], plots: Sequence[str] = ()
) -> str:
    parts = [
        f"# Benchmark run {meta.get('date', '')[:10]}",
        "",
        environment_line(meta),
        "",
        PROTOCOL_NOTE,
        "",
        markdown_table(rows),
        "",
    ]
    quality = quality_markdown(rows)
    if quality:
        parts += [quality, ""]
    profiles = profile_markdown(rows)
    if profiles:
        parts += [profiles, ""]
    for name in plots:
        parts += [f"![{Path(name).stem}]({name})", ""]
    return "\n".join(parts)


def write_run(
    out_dir: Path,
    meta: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    plots: bool = True,
) -> list[Path]:
    """Write results.csv/json/md (and plots) into `out_dir`; returns the plot files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / CSV_NAME, rows)
    write_json(out_dir / JSON_NAME, meta, rows)
    plot_files: list[Path] = []
    if plots:
        from benchmarks.plot import plot_rows

        try:
            plot_files = plot_rows(rows, out_dir, title_suffix=str(meta.get("device", "")))
        except ImportError as exc:  # matplotlib absent: the tables still stand
            meta = dict(meta, plots=f"skipped: {exc}")
    names = [p.name for p in plot_files]
    _atomic_write(out_dir / MD_NAME, render_markdown(meta, rows, names))
    return plot_files


PROFILE_NOTE = (
    "Each profiled generation (provider `compiled-profile`: the compiled token step under "
    "`torch.profiler`, each of Inductor's CPU kernels recorded as an event) by event, "
    "the events with the most self time first: microseconds per token step (one token "
    "for each row of the batch), share of the events' self time, calls per step. "
    "`wall` is the step's wall time under the profiler, overhead included; read speed "
    "from the `compiled` rows."
)


def _short(name: str, limit: int = 80) -> str:
    """An event name fit for a table cell."""
    name = name.replace("|", "/").replace("`", "'")
    return name if len(name) <= limit else name[: limit - 1] + "…"


def profile_markdown(rows: Sequence[Mapping[str, Any]], *, heading: str = "##") -> str:
    """The generate suite's profiles, one table per profiled case; "" without any."""
    profiled = [r for r in rows if (r.get("extra") or {}).get("profile")]
    if not profiled:
        return ""
    parts = [f"{heading} Generation: where a token step's time goes", "", PROFILE_NOTE, ""]
    for r in profiled:
        p = r["extra"]["profile"]
        parts += [
            f"`{r['shape']}`: wall {p['wall_us_per_step']:,.0f} µs per step, events "
            f"{p['self_us_per_step']:,.0f} µs ({p['clock']} self time).",
            "",
            _table(
                ["event", "µs per step", "share", "calls per step"],
                [
                    [
                        f"`{_short(e['event'])}`",
                        f"{e['us_per_step']:,.1f}",
                        _percent(e["share"]),
                        f"{e['calls_per_step']:.2f}",
                    ]
                    for e in p["events"]
                ],
            ),
            "",
        ]
    return "\n".join(parts).rstrip()


# -- the quality suite's tables -------------------------------------------------------


def likelihood_table(rows: Sequence[Mapping[str, Any]]) -> str:
    rows = [r for r in quality_rows(rows, "held-out-nll") if is_measured(r)]
    if not rows:
        return ""
    labels: list[str] = []
    for r in rows:
        labels += [label for label in r["extra"].get("buckets") or {} if label not in labels]
    labels.sort(key=lambda s: int(s.split("-")[0]))
    header = (
        ["length", "model", "NLL/token (seeds)", "bits/token", "NLL/s of music"]
        + [f"pos {label}" for label in labels]
        + ["past window", "NLL at equal time", "train step ms"]
    )
    body = []
    for r in sorted(rows, key=lambda r: (r["seq_len"] or 0, variant_rank(r["provider"]))):
        e = r["extra"]
        nll = _fixed(e.get("nll"))
        seeds = e.get("nll_seeds")
        if seeds and len(seeds) > 1:
            nll += f" ({', '.join(_fixed(v) for v in seeds)})"
        model = r["provider"]
        if e.get("kind") == "attention":
            block = e.get("block")
            model += f" (w{e.get('window')}" + (f", b{block})" if block else ")")
            if e.get("attention") == "dense":
                model = "dense"
        buckets = e.get("buckets") or {}
        body.append(
            [
                r["seq_len"],
                model,
                nll,
                _fixed(e.get("bits")),
                _fixed(e.get("nll_per_second"), 2),
                *[_fixed(buckets.get(label)) for label in labels],
                _fixed(e.get("past_window")),
                _fixed(e.get("nll_equal_time")),
                _fixed(r.get("median_ms"), 1),
            ]
        )
    return _table(header, body)


def music_table(rows: Sequence[Mapping[str, Any]]) -> str:
    from benchmarks.quality_music import HISTOGRAMS, NOTE_STATISTICS, STATISTICS, UNITS

    rows = {r["provider"]: r for r in quality_rows(rows, "generated-vs-held-out")}
    sources = [s for s in QUALITY_SOURCES if s in rows]
    if not sources:
        return ""
    header = ["statistic", "distance"] + [
        "real vs real (A vs B)" if s == "held-out-A" else s for s in sources
    ]
    distances = [r["extra"].get("distance") or {} for r in rows.values()]
    stats = STATISTICS + tuple(s for s in NOTE_STATISTICS if any(s in d for d in distances))
    body = []
    for stat in stats:
        measure = "1 - overlap" if stat in HISTOGRAMS else f"abs. mean diff. ({UNITS[stat]})"
        cells = [stat if stat in STATISTICS else f"{stat} (not of the 9)", measure]
        for source in sources:
            e = rows[source]["extra"]
            d = (e.get("distance") or {}).get(stat, {}).get("distance")
            cell = _fixed(d)
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
        body.append(cells)
    body.append((["", "", "**mean per piece**"] + [""] * (len(sources) - 1))[: len(header)])
    for stat in (s for s in stats if s not in HISTOGRAMS):
        reference = _mean(rows["held-out-B"], stat) if "held-out-B" in rows else ""
        cells = [stat, f"mean ({UNITS[stat]}); half B: {reference}"]
        body.append(cells + [_mean(rows[s], stat) for s in sources])
    silences = [s for s in SILENCES if s in stats]
    if silences:
        title = ["", "", "**longest in any piece**"] + [""] * (len(sources) - 1)
        body.append(title[: len(header)])
    for stat in silences:
        cells = [stat, f"max ({UNITS[stat]})"]
        body.append(cells + [_fixed(_largest(rows[s], stat)) for s in sources])
    return _table(header, body)


SILENCES = ("lead_silence", "longest_silence")


def _largest(row: Mapping[str, Any], stat: str) -> float | None:
    """The largest per-piece value of `stat` in a music row (None without values)."""
    values = ((row["extra"].get("summary") or {}).get(stat) or {}).get("values") or []
    kept = [v for v in values if v is not None]
    return max(kept) if kept else None


def _sampling_sentence(rows: Sequence[Mapping[str, Any]]) -> str:
    """How the music table's sources sampled, as its rows record it ("" if they do not)."""
    sampled = {
        r["provider"]: json.dumps(r["extra"]["sampling"], sort_keys=True)
        for r in quality_rows(rows, "generated-vs-held-out")
        if r["extra"].get("sampling")
    }
    if not sampled:
        return ""

    def words(settings: str) -> str:
        return ", ".join(f"{k}={v}" for k, v in json.loads(settings).items())

    seeds = {
        tuple(r["extra"]["seeds"])
        for r in quality_rows(rows, "generated-vs-held-out")
        if len(r["extra"].get("seeds") or ()) > 1
    }
    pooled = ""
    if len(seeds) == 1:
        (chosen,) = seeds
        pooled = (
            f" Each model source pools the pieces of models trained from seeds "
            f"{', '.join(map(str, chosen))} (each sampled with its seed), the unigram as "
            "many seeds' samples."
        )
    if len(set(sampled.values())) == 1:
        return pooled + f" Models and unigram sampled with {words(next(iter(sampled.values())))}."
    each = "; ".join(f"{name}: {words(s)}" for name, s in sampled.items())
    return pooled + f" Each source sampled with (every mode with its pick of the samplers): {each}."


def silence_verdicts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per model source: whether any of its pieces opens with, or holds,
    a silence longer than the longest silence of the held-out pieces (both halves)."""
    found = {r["provider"]: r for r in quality_rows(rows, "generated-vs-held-out")}
    held = [
        v
        for name in ("held-out-A", "held-out-B")
        if name in found
        for v in (_largest(found[name], stat) for stat in SILENCES)
        if v is not None
    ]
    if not held:
        return []
    bound = max(held)
    out = []
    for name, r in found.items():
        if r["extra"].get("kind") != "model":
            continue
        lead, inside = (_largest(r, stat) for stat in SILENCES)
        if lead is None or inside is None:
            continue
        over = lead > bound or inside > bound
        out.append(
            f"- {name}: longest opening silence {lead:.3f} s, longest inside a piece "
            f"{inside:.3f} s, against {bound:.3f} s in the held-out music: "
            + ("longer." if over else "within it.")
        )
    return out


def _mean(row: Mapping[str, Any], stat: str) -> str:
    return _fixed(((row["extra"].get("summary") or {}).get(stat) or {}).get("mean"))


def _percent(share: float | None) -> str:
    return "" if share is None else f"{100 * share:.1f}%"


def endings_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """How each source's notes end (notes summed over its pieces)."""
    from benchmarks.quality_music import ENDINGS

    rows = {r["provider"]: r for r in quality_rows(rows, "generated-vs-held-out")}
    header = ["source", "notes", "NOTE_OFF (model)", "re-struck", "closed at END / end", "at limit"]
    body = []
    for source in (s for s in ("held-out-B", *QUALITY_SOURCES) if s in rows):
        endings = (rows[source]["extra"].get("summary") or {}).get("endings")
        if endings:
            total = sum(endings.values())
            shares = [_percent(endings[k] / total if total else None) for k in ENDINGS]
            body.append([source, f"{total:.0f}", *shares])
    return _table(header, body) if body else ""


def note_off_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Teacher-forced probability of the correct NOTE_OFF per distance bucket."""
    parts = []
    for r in (r for r in quality_rows(rows, "note-off-probability") if is_measured(r)):
        e = r["extra"]
        window, buckets = e.get("window"), e["buckets"]
        heads = [
            f"{label} *" if window and int(label.split("-")[0].rstrip("+")) > window else label
            for label in buckets
        ]
        body = [
            ["p(correct NOTE_OFF)", *(_fixed(b["p"]) for b in buckets.values())],
            ["NOTE_OFFs", *(b["count"] for b in buckets.values())],
        ]
        parts.append(
            f"Model `{r['provider']}`, attention window {window} tokens (`*`: every NOTE_ON "
            f"of the bucket is out of the window), {e.get('pieces')} held-out pieces of "
            f"{r['seq_len']} tokens.\n\n" + _table(["tokens from NOTE_ON", *heads], body)
        )
    return "\n\n".join(parts)


def new_instrument_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Held-out pieces' share of INSTRUMENT ids naming an instrument not yet played, and
    each model's teacher-forced probability of one, per position bucket."""
    found = [r for r in quality_rows(rows, "new-instrument") if is_measured(r)]
    if not found:
        return ""
    buckets = found[0]["extra"]["buckets"]
    body = [
        ["held-out (share)", *(_fixed(b["real"]) for b in buckets.values())],
        *(
            [r["provider"], *(_fixed(b["model"]) for b in r["extra"]["buckets"].values())]
            for r in found
        ),
        ["INSTRUMENT ids", *(b["count"] for b in buckets.values())],
    ]
    return _table(["positions", *buckets], body)


def deletion_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Polyphony of held-out pieces with a share of their NOTE_OFFs deleted."""
    found = [r for r in quality_rows(rows, "note-off-deletion") if is_measured(r)]
    if not found:
        return ""
    body = [
        [
            f"{100 * float(share):.0f}%",
            _fixed(v.get("polyphony"), 2),
            _percent(v.get("closed_by_model")),
        ]
        for share, v in found[0]["extra"]["shares"].items()
    ]
    return _table(["NOTE_OFFs deleted", "polyphony (notes)", "closed by NOTE_OFF"], body)


def sampler_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The sampler comparison, or the reason it was skipped."""
    found = quality_rows(rows, "sampler")
    if not any(is_measured(r) for r in found):
        return "\n".join(f"- {r['status']}" for r in found)
    header = [
        "model",
        "sampler",
        "settings",
        "polyphony (notes)",
        "closed by NOTE_OFF",
        "closer than unigram (of 9)",
        "as close as real (of 9)",
        "mean multiple of real",
        "sample s",
    ]
    body = []
    for r in found:
        e = r.get("extra") or {}
        model = e.get("model_mode", "transformer")  # runs before 2026-12-07: one model
        if not is_measured(r):
            body.append([model, r["provider"], r["status"]] + [""] * (len(header) - 3))
            continue
        body.append(
            [
                model,
                r["provider"]
                + (" (best)" if e.get("best") else "")
                + (" (pick)" if e.get("pick") else ""),
                ", ".join(f"{k}={v}" for k, v in (e.get("settings") or {}).items()),
                _fixed(e.get("polyphony"), 2),
                _percent(e.get("closed_by_model")),
                e.get("closer_count"),
                e.get("as_close_as_real_count", ""),
                _fixed(e.get("mean_multiple"), 2),
                _fixed((r.get("median_ms") or 0) / 1e3, 1),
            ]
        )
    return _table(header, body)


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
    """The quality tables under `heading`-level titles; "" when the run has none."""
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
            + LIKELIHOOD_NOTE,
            "",
            likelihood,
            "",
        ]
    if music:
        parts += [
            f"{heading} Quality: generated music against held-out music",
            "",
            MUSIC_NOTE + _sampling_sentence(rows),
            "",
            music,
            "",
            *verdicts(rows),
            *silence_verdicts(rows),
            "",
        ]
    cause = [
        ("How notes end", endings_table(rows), ENDINGS_NOTE),
        ("Teacher-forced NOTE_OFF probability by distance", note_off_table(rows), NOTE_OFF_NOTE),
        ("Polyphony with NOTE_OFFs deleted", deletion_table(rows), DELETION_NOTE),
        ("Instruments not yet played", new_instrument_table(rows), NEW_INSTRUMENT_NOTE),
        ("Samplers", sampler_table(rows), _sampler_note(rows)),
    ]
    if any(table for _, table, _ in cause):
        parts += [f"{heading} Quality: why generated notes do not end", ""]
        for title, table, note in cause:
            if table:
                parts += [f"{heading}# {title}", "", note, "", table, ""]
    return "\n".join(parts)


LIKELIHOOD_NOTE = (
    "NLL in nats per target token on windows of the held-out files, median over "
    "seeds (each seed in parentheses), at equal steps; `pos a-b`: targets at those "
    "positions of the window; `past window`: targets whose query is at or past "
    "the window; `NLL at equal time`: each variant's curve read at the training "
    "time of the fastest variant (step times measured side by side)."
)
MUSIC_NOTE = (
    "Distance of each set of pieces to held-out half B (1 - overlap of the pooled "
    "histogram, or the absolute difference of per-piece means); `real vs real` is "
    "held-out half A, the reference. `(not < unigram)`: not closer than the "
    "unigram model's samples; `(<= real)`: as close as real is to real; `(3.0x)`: "
    "the distance as a multiple of real against real (`(real: 0)` where that is 0). "
    "Rows `(not of the 9)` are note statistics reported beside the nine, not "
    "counted in the verdicts."
)
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
NEW_INSTRUMENT_NOTE = (
    "Where held-out pieces (both halves) name an instrument, by position in the piece: "
    "the share naming one that has struck no note yet in the piece, then each model's "
    "mean teacher-forced probability of such an instrument (out of its probability of "
    "any INSTRUMENT; the first seed's model of each source). A model above the share "
    "brings in instruments the piece does not have."
)
DELETION_NOTE = (
    "Held-out pieces (both halves) with a random share of their NOTE_OFFs deleted, "
    "decoded and measured as the music table does: how far polyphony moves when "
    "releases go missing."
)
SAMPLER_NOTE_SEEDS = (
    "Each mode's models (one per seed of the run, each sampled with its seed, the pieces pooled, "
    "as the music table does) under each sampler setting (with and without the grammar "
    "mask: validity from the unconstrained samples), then temperature and top-p on the "
    "best setting; `closer than unigram`: than the unigram model sampled with the same "
    "settings and seeds; `as close as real`: statistics whose distance is at most real "
    "against real; `mean multiple of real`: the statistics' distances as multiples of "
    "real against real, averaged (validity, 0 between real halves, left out). `best` "
    "and `pick` (the best of every row of its mode) are chosen against held-out half A, "
    "by the smallest mean multiple; the columns are measured against half B, which the "
    "choice never saw. The music table holds each mode's pick's pieces."
)
# Runs up to 2026-12-07-ab8a39a: the comparison on the first seed's model alone.
SAMPLER_NOTE = (
    "Each mode's model sampled under each sampler setting (the music table's seed and "
    "count, with and without the grammar mask: validity from the unconstrained "
    "samples), then temperature and top-p on the best setting; `closer than unigram`: "
    "than the unigram model sampled with the same settings; `as close as real`: "
    "statistics whose distance is at most real against real; `mean multiple of real`: "
    "the statistics' distances as multiples of real against real, averaged (validity, "
    "0 between real halves, left out). `best` and `pick` (the best of every row of its "
    "model) are chosen against held-out half A, by the smallest mean multiple; the "
    "columns are measured against half B, which the choice never saw. The music table "
    "samples each mode with its pick."
)
# Runs of 2026-12-06: the transformer's comparison alone, the music table sampled with
# LISTENING_SAMPLING.
SAMPLER_NOTE_ONE_MODEL = (
    "The transformer model's samples under each sampler setting (same seed and count "
    "as the music table; validity from its unconstrained samples), then temperature "
    "and top-p on the best setting; `closer than unigram`: than the unigram model "
    "sampled with the same settings; `as close as real`: statistics whose distance is "
    "at most real against real; `mean multiple of real`: the statistics' distances as "
    "multiples of real against real, averaged (validity, 0 between real halves, left "
    "out). `best` and `pick` (the best of every row) are chosen against held-out half "
    "A, by the smallest mean multiple; the columns are measured against half B, which "
    "the choice never saw."
)
# Runs before the choice moved to half A chose the best setting on half B.
SAMPLER_NOTE_HALF_B = (
    "The transformer model's samples under each sampler setting (same seed and count "
    "as the music table; validity from its unconstrained samples), then temperature "
    "and top-p on the best setting (most statistics closer than unigram, then the "
    "smallest polyphony distance)."
)


# Runs of 2026-12-06 before the mean multiple chose on half A by counts.
SAMPLER_NOTE_HALF_A_COUNTS = (
    "The transformer model's samples under each sampler setting (same seed and count "
    "as the music table; validity from its unconstrained samples), then temperature "
    "and top-p on the best setting. `best` and `pick` (the best of every row) are "
    "chosen against held-out half A (most statistics closer than unigram, then the "
    "smallest polyphony distance); the columns are measured against half B."
)


def _sampler_note(rows: Sequence[Mapping[str, Any]]) -> str:
    extras = [r.get("extra") or {} for r in quality_rows(rows, "sampler")]
    if any("seeds" in e for e in extras):
        return SAMPLER_NOTE_SEEDS
    if any("model_mode" in e for e in extras):
        return SAMPLER_NOTE
    if any("mean_multiple" in e for e in extras):
        return SAMPLER_NOTE_ONE_MODEL
    if any("selection_key" in e for e in extras):
        return SAMPLER_NOTE_HALF_A_COUNTS
    return SAMPLER_NOTE_HALF_B


# -- results/README.md --------------------------------------------------------------

README_HEAD = """# Committed benchmark runs

One folder per device (`<device>/<YYYY-MM-DD>-<commit>/`), each run with results.csv,
results.json, results.md and PNG plots. Below: the latest run per device, written by
`python -m benchmarks` (or `python -m benchmarks.report RUN_DIR --readme`). A run
restricted by suite, `--seq-len` or `--preset` says so after "full run"/"quick run".
"""


NO_RUNS_YET = "No run has been committed yet: one section per device appears below once measured."


def _section_markers(slug: str) -> tuple[str, str]:
    return f"<!-- device: {slug} -->", f"<!-- end device: {slug} -->"


def update_results_readme(
    readme: Path, run_dir: Path, meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> None:
    """Put this run's table under its device's section; other devices' sections stay.

    The quality suite's rows have a section of their own per device
    (`<device-slug> quality`), so a quality run and a speed run do not replace each
    other's tables.
    """
    readme = Path(readme)
    slug = str(meta.get("device_slug") or "unknown")
    try:
        rel = Path(os.path.relpath(Path(run_dir).resolve(), readme.parent.resolve()))
    except ValueError:  # another drive
        rel = Path(run_dir)
    plots = sorted(p.name for p in Path(run_dir).glob("*.png"))
    quality = [r for r in rows if r.get("suite") == "quality"]
    speed = [r for r in rows if r.get("suite") != "quality"]
    text = readme.read_text(encoding="utf-8") if readme.is_file() else README_HEAD
    text = text.replace(NO_RUNS_YET + "\n", "")
    if speed or not quality:
        shown = [p for p in plots if not p.startswith("quality-")]
        body = [markdown_table(speed)]
        text = _put_section(text, slug, f"{meta.get('device')}", meta, rel, body, shown)
    if quality:
        shown = [p for p in plots if p.startswith("quality-")]
        body = [quality_markdown(quality, heading="###")]
        title = f"{meta.get('device')}: quality"
        text = _put_section(text, f"{slug} quality", title, meta, rel, body, shown)
    readme.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(readme, text)


def _put_section(
    text: str,
    key: str,
    title: str,
    meta: Mapping[str, Any],
    rel: Path,
    body: list[str],
    plots: Sequence[str],
) -> str:
    """`text` with the section between `key`'s markers replaced (or appended)."""
    begin, end = _section_markers(key)
    lines = [
        begin,
        f"## {title}",
        "",
        environment_line(meta) + f" · run folder [`{rel.as_posix()}`]({rel.as_posix()}/)",
        "",
        *body,
        "",
    ]
    lines += [f"![{Path(p).stem}]({(rel / p).as_posix()})" for p in plots]
    lines += ["", end]
    section = "\n".join(lines)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text)
    return text.rstrip("\n") + "\n\n" + section + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Re-render results.md and plots of a run folder from its results.json.",
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--readme", action="store_true", help="also update benchmarks/results/README.md"
    )
    args = parser.parse_args(argv)
    meta, rows = read_json(args.run_dir / JSON_NAME)
    write_run(args.run_dir, meta, rows)
    if args.readme:
        update_results_readme(RESULTS_ROOT / "README.md", args.run_dir, meta, rows)
    print(args.run_dir / MD_NAME)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
