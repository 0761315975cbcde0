"""The docs pages' examples run as written, and their links lead somewhere.

Every ```python block of a `docs/*.md` page runs, in order, as one script (one namespace
per page), in a fresh folder holding `midi/` (two files of the real corpus) and
`song.mid` (the first of them). A block that cannot run there says why in its fence:
```python no-run: <reason>. The convention is documented in docs/development.md.
"""

from __future__ import annotations

import re
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)
NO_RUN = re.compile(r"no-run:\s*(\S.*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def python_blocks(page: Path) -> list[tuple[str, str, int]]:
    """(info string, code, line) of every ```python fence of `page`, in order."""
    text = page.read_text(encoding="utf-8")
    return [
        (m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 2)
        for m in FENCE.finditer(text)
    ]


def runnable_blocks(page: Path) -> list[tuple[str, int]]:
    """(code, line) of the blocks to run; a fence with an unknown info string fails."""
    blocks = []
    for info, code, line in python_blocks(page):
        if not info:
            blocks.append((code, line))
        elif not NO_RUN.fullmatch(info):
            raise AssertionError(
                f"{page.name}:{line}: fence info {info!r}: write ```python to run the block "
                "or ```python no-run: <reason> to skip it (docs/development.md)"
            )
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def test_there_are_pages_and_every_fence_is_runnable_or_says_why():
    assert {p.name for p in PAGES} >= {
        "tokenizer.md",
        "kernels.md",
        "engine.md",
        "integrations.md",
        "benchmarks.md",
        "development.md",
    }
    for page in PAGES:
        runnable_blocks(page)  # raises on a fence without a valid info string


def test_the_no_run_rule_refuses_a_fence_without_a_reason(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python no-run:\nx = 1\n```\n\n```python\ny = 2\n```\n")
    with pytest.raises(AssertionError, match="no-run: <reason>"):
        runnable_blocks(page)
    page.write_text("```python no-run: needs CUDA\nx = 1\n```\n\n```python\ny = 2\n```\n")
    assert runnable_blocks(page) == [("y = 2\n", 6)]


@pytest.mark.parametrize(
    "page", [REPO / "README.md", *PAGES], ids=["README", *(p.stem for p in PAGES)]
)
def test_every_relative_link_leads_to_a_file_and_heading(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link {target!r} leads nowhere"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: no heading for {target!r}"


def test_the_readme_links_every_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for page in PAGES:
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


# A figure in prose: not inside a word (B32, fp16), commas as thousands separators.
FIGURE = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def figures(text: str) -> list[str]:
    return [m.group().replace(",", "") for m in FIGURE.finditer(text)]


def unquoted_headline_figures(readme: str, root: Path) -> list[str]:
    """Each figure in the result column of the README's headline table that is neither
    in a file its row links nor a ratio of two figures of that result (to its printed
    precision, give or take one unit: the figures are rounded); counts below 10 are
    prose. One line per figure, naming the row."""
    section = readme.split("## Headline numbers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    problems = []
    for row in rows:
        measured, result = row.split(" | ")[:2]
        pool = set()
        for target in LINK.findall(measured):
            pool |= {Decimal(f) for f in figures((root / target).read_text(encoding="utf-8"))}
        shown = figures(result)
        values = [Decimal(f) for f in shown]
        for text, value in zip(shown, values, strict=True):
            if "." not in text and value < 10 or value in pool:
                continue
            unit = Decimal(1).scaleb(-len(text.partition(".")[2]))
            ratios = (a / b for a in values for b in values if b and a != b)
            if any(abs(r - value) <= unit * Decimal("1.5") for r in ratios):
                continue
            problems.append(f"{text} in {measured.strip('| ')[:60]!r}")
    return problems


def test_every_headline_figure_is_in_the_run_its_row_links():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert unquoted_headline_figures(readme, REPO) == []


def test_a_figure_the_runs_do_not_hold_fails_the_headline_check():
    """Planted faults: a time that no run measured, and a ratio of nothing in its row."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for old, new, figure in [
        ("1.341 ms:", "1.314 ms:", "1.314"),
        ("(dynamic cache, 4.97x)", "(dynamic cache, 4.79x)", "4.79"),
    ]:
        assert old in readme, old
        planted = unquoted_headline_figures(readme.replace(old, new), REPO)
        assert [p.split()[0] for p in planted] == [figure], planted


@pytest.fixture
def workdir(midi_corpus, tmp_path, monkeypatch):
    (tmp_path / "midi").mkdir()
    for path in midi_corpus[:2]:
        shutil.copy(path, tmp_path / "midi")
    shutil.copy(midi_corpus[0], tmp_path / "song.mid")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if any(not info for info, _, _ in python_blocks(p))],
    ids=lambda p: p.stem,
)
def test_the_page_examples_run_in_order(page, workdir):
    pytest.importorskip("torch")
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for code, line in runnable_blocks(page):
        # Pad so that a traceback's line numbers are the page's own.
        exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)
