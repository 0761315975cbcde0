"""The vocabulary's ids and sizes as module constants, for the numba kernels.

numba compiles module-level integers in as literals; every kernel module reads the
layout of `vocabulary.Vocabulary` from here.
"""

from __future__ import annotations

from .vocabulary import Vocabulary

_V = Vocabulary()
START, END, PAD, UNK = _V.START, _V.END, _V.PAD, _V.UNK
NOTE_ON0 = _V.NOTE_ON.start
NOTE_OFF0 = _V.NOTE_OFF.start
SHIFT0 = _V.TIME_SHIFT.start
VELOCITY0 = _V.VELOCITY.start
SUSTAIN_ON, SUSTAIN_OFF = _V.SUSTAIN_ON, _V.SUSTAIN_OFF
TEMPO0 = _V.TEMPO.start
INSTRUMENT0 = _V.INSTRUMENT.start
NUM_PITCHES = _V.NOTE_ON.stop - _V.NOTE_ON.start
