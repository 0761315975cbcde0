"""A piano-roll PNG of a symusic Score: one bar per note, time in seconds against pitch."""

from __future__ import annotations

import os
from pathlib import Path


def save_piano_roll(score, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draw every note of `score` (a `symusic.Score`, any time unit) into a PNG at `path`.

    One colour per track; drum tracks are drawn too (at their key numbers). Returns the
    path written. Uses a bare Agg figure, so the caller's matplotlib backend is untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    seconds = score.to("second")
    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    count = 0
    for i, track in enumerate(seconds.tracks):
        notes = track.notes.numpy()
        if not len(notes["pitch"]):
            continue
        count += len(notes["pitch"])
        ax.barh(
            notes["pitch"],
            notes["duration"],
            left=notes["time"],
            height=0.8,
            color=f"C{i % 10}",
            label=f"{track.name or 'track'} ({'drums' if track.is_drum else track.program})",
        )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title or f"{count} notes")
    ax.grid(alpha=0.25)
    if count:
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
