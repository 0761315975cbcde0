"""The demo's default corpus: Bach chorales from music21's bundled corpus, rendered to MIDI.

music21 (the `demo` extra: `pip install -e ".[demo]"`) ships MusicXML scores inside its
wheel, so the corpus comes from the package registry through the ordinary install and
nothing is downloaded from anywhere else. Rendered files are cached (one `.mid` per
score, written under a temporary name and renamed), so a second run renders nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

DEFAULT_CACHE = Path("data") / "demo-corpus"
DEFAULT_PIECES = 48


def music21_version() -> str | None:
    try:
        import music21
    except ImportError:
        return None
    return music21.__version__


def chorale_sources(count: int) -> list[Path]:
    """`count` Bach chorale scores (`bwv*.mxl`) of music21's corpus, spread evenly over
    the sorted list so the choice is stable across runs."""
    if count < 1:
        raise ValueError(f"count={count} must be >= 1")
    try:
        from music21 import corpus
    except ImportError as exc:
        raise RuntimeError(
            "the default demo corpus needs music21: pip install -e '.[demo]' "
            "(make demo does this), or set STRETTO_CORPUS to a folder of MIDI files"
        ) from exc
    paths = sorted(
        (Path(p) for p in corpus.getComposer("bach") if Path(p).name.startswith("bwv")),
        key=lambda p: p.name,
    )
    if not paths:
        raise RuntimeError("music21's corpus holds no Bach chorales")
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def _render_one(args: tuple[str, str]) -> str:
    source, target = args
    from music21 import converter

    tmp = Path(target).with_name(f".{Path(target).name}.tmp")
    converter.parse(source).write("midi", fp=str(tmp))
    os.replace(tmp, target)
    return target


def render_corpus(
    out_dir: str | os.PathLike = DEFAULT_CACHE,
    *,
    pieces: int = DEFAULT_PIECES,
    workers: int = 2,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Render `pieces` chorales to `out_dir/<name>.mid`; files already there are kept.

    Returns the MIDI paths, in the order of `chorale_sources(pieces)`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # left by a render that was killed
        stale.unlink(missing_ok=True)
    sources = chorale_sources(pieces)
    targets = [out / f"{src.stem}.mid" for src in sources]
    todo = [(str(s), str(t)) for s, t in zip(sources, targets, strict=True) if not t.is_file()]
    if todo:
        if log:
            log(f"rendering {len(todo)} music21 chorales to MIDI in {out}")
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(min(workers, len(todo))) as pool:
                list(pool.map(_render_one, todo))
        else:
            for item in todo:
                _render_one(item)
    return targets
