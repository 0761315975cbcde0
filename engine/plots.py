"""`loss.png`: a training run's curves, drawn from its logged rows.

Panels: the loss (train and validation, with the discriminator's loss in vae_gan); in
the vae modes the latent's use (latent gap in nats per token, active units); in vae_gan
the discriminator's accuracy on real and fake spans. matplotlib draws it when installed
(it is a dependency of the package); without it a one-line note replaces the picture.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def _series(rows: Sequence[dict], split: str, key: str) -> tuple[list, list]:
    picked = [r for r in rows if r.get("split") == split and r.get(key) is not None]
    return [r["step"] for r in picked], [r[key] for r in picked]


def plot_training(rows: Sequence[dict], path: str | Path) -> Path | None:
    """Draw the curves of `rows` (log.jsonl rows) into `path`; None when matplotlib is
    missing (after saying so on stderr)."""
    try:
        # A bare Figure with the Agg canvas: no pyplot, so the caller's backend is untouched.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print(f"{path} not drawn: matplotlib is not installed", file=sys.stderr)
        return None
    panels = ["loss"]
    if any("latent_gap" in r for r in rows):
        panels.append("latent")
    if any("acc_real" in r for r in rows):
        panels.append("discriminator")
    fig = Figure(figsize=(7, 3.2 * len(panels)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "loss":
            ax.plot(*_series(rows, "train", "loss"), "-", label="train")
            ax.plot(*_series(rows, "val", "loss"), "o-", label="validation")
            if any("disc_loss" in r for r in rows):
                ax.plot(*_series(rows, "train", "disc_loss"), "--", label="discriminator")
            ax.set_ylabel("loss (nats/token)")
        elif panel == "latent":
            ax.plot(*_series(rows, "val", "latent_gap"), "o-", label="latent gap (nats/token)")
            twin = ax.twinx()
            twin.plot(*_series(rows, "val", "active_units"), "s--", color="gray")
            twin.set_ylabel("active units (gray)")
            ax.set_ylabel("latent gap")
        else:
            ax.plot(*_series(rows, "val", "acc_real"), "o-", label="accuracy on real")
            ax.plot(*_series(rows, "val", "acc_fake"), "o-", label="accuracy on fake")
            ax.set_ylim(-0.05, 1.05)
            ax.set_ylabel("discriminator")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
