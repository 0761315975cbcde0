"""Stretto's engine: the music model in three modes, its losses, training, checkpoints
and generation.

The library is this package's top-level modules; the applications built on it live in
`stretto.engine.cli` (the `stretto` command, the demo) and `stretto.engine.audit`, and
the library never imports them.
"""

if __name__ != "stretto.engine":
    # This folder imported as a top-level `engine` (the checkout's root is on sys.path):
    # the name goes to the installed package of that name, if any (_stretto_checkout.py).
    from _stretto_checkout import claim_bare_name

    claim_bare_name(__name__, globals())
else:
    from .checkpoint import Checkpoint, save_checkpoint
    from .config import MODES, PRESETS, ModelConfig
    from .generate import generate, sample
    from .grammar import Grammar
    from .model import MusicModel, load_checkpoint
    from .objectives import TrainingObjective
    from .outputs import MusicModelOutput
    from .train import TrainConfig, Trainer

    __all__ = [
        "MODES",
        "PRESETS",
        "Checkpoint",
        "Grammar",
        "ModelConfig",
        "MusicModel",
        "MusicModelOutput",
        "TrainConfig",
        "Trainer",
        "TrainingObjective",
        "generate",
        "load_checkpoint",
        "sample",
        "save_checkpoint",
    ]
