"""The docs pages' examples run as written, and their links lead somewhere.

Every ```python block of a `docs/*.md` page runs, in order, as one script (one namespace
per page), in a fresh folder holding `midi/` (two files of the real corpus) and
`song.mid` (the first of them). A block that cannot run there says why in its fence:
```python no-run: <reason>. The convention is documented in docs/development.md.
"""

from __future__ import annotations

import re
import shutil
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
