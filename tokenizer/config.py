"""`TokenizerConfig`: the knobs of encoding and decoding that are not part of the vocabulary."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TokenizerConfig:
    """Limits and output settings of `MidiTokenizer`.

    - `max_seconds`: a file whose last event lies later than this is refused with a
      `MidiError` (a 0x0FFFFFFF delta reads as a 259-hour silence; nothing that long is
      music, and tokenizing it would mean ~116k TIME_SHIFTs of nothing).
    - `max_file_bytes`: larger inputs are refused before symusic parses them.
    - `decode_tpq`: ticks per quarter of decoded scores (3840: one tick is at most
      0.26 ms at the slowest tempo bin, far below the 15.625 ms grid).
    - `default_velocity`: MIDI velocity of notes decoded before any VELOCITY token.
    """

    max_seconds: float = 4 * 3600.0
    max_file_bytes: int = 64 * 1024 * 1024
    decode_tpq: int = 3840
    default_velocity: int = 64

    def __post_init__(self) -> None:
        if not (self.max_seconds > 0 and self.max_seconds <= 48 * 3600):
            raise ValueError(f"max_seconds={self.max_seconds} is outside (0, 172800]")
        if self.max_file_bytes < 14:
            raise ValueError(f"max_file_bytes={self.max_file_bytes} is below a MIDI header")
        if not 24 <= self.decode_tpq <= 32767:
            raise ValueError(f"decode_tpq={self.decode_tpq} is outside 24..32767")
        if not 1 <= self.default_velocity <= 127:
            raise ValueError(f"default_velocity={self.default_velocity} is outside 1..127")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> TokenizerConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown TokenizerConfig fields: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> TokenizerConfig:
        return cls.from_dict(json.loads(text))
