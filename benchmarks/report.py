"""Writers for one run: results.csv, results.json, results.md, and the results README.

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

from benchmarks.schema import RESULTS_ROOT, ROW_FIELDS, is_measured

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
    header = (
        "| suite | provider | mode | shape | dtype | median ms | p20-p80 ms | vs best "
        "| peak MB | tokens/s | TFLOP/s | status |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
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
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


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
    if any(row.get("suite") == "quality" for row in rows):
        from benchmarks.quality_report import quality_markdown

        parts += [quality_markdown(rows), ""]
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
        from benchmarks.quality_report import quality_markdown

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
