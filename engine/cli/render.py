"""`stretto render`: a MIDI file to a WAV file through a General MIDI SoundFont."""

from __future__ import annotations

import argparse
import sys

from stretto.tokenizer.audio import (
    DEFAULT_SAMPLE_RATE,
    SOUNDFONT_PACKAGE,
    RendererNotFound,
    SoundfontNotFound,
    render_wav,
)

EXAMPLE = f"""examples:
  stretto render runs/demo/transformer/generated.mid song.wav
  stretto render song.mid song.wav --seconds 30 --sample-rate 22050
  stretto render song.mid song.wav --soundfont ~/sf2/GeneralUser.sf2

Without --soundfont the standard places of Debian's {SOUNDFONT_PACKAGE} are searched
(/usr/share/sounds/sf2/FluidR3_GM.sf2, /usr/share/soundfonts/default.sf2, ...).
Exit codes: 0 written, 1 bad input, 2 no SoundFont or synthesizer on this machine."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "render",
        help="render a MIDI file to WAV with a General MIDI SoundFont",
        description="Render a MIDI file to a 16-bit stereo WAV with symusic's synthesizer "
        "(or the FluidSynth program where symusic cannot return audio) and a General "
        "MIDI SoundFont.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("midi", metavar="FILE.mid", help="MIDI file to render")
    p.add_argument("out", metavar="OUT.wav", help="WAV file to write (its folder must exist)")
    p.add_argument("--soundfont", default=None, metavar="PATH", help=".sf2/.sf3 file to use")
    p.add_argument(
        "--sample-rate",
        type=int,
        default=DEFAULT_SAMPLE_RATE,
        metavar="HZ",
        help=f"samples per second (default {DEFAULT_SAMPLE_RATE})",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="render only the first SECONDS of the music (default: all of it)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        audio = render_wav(
            args.midi,
            args.out,
            soundfont=args.soundfont,
            sample_rate=args.sample_rate,
            seconds=args.seconds,
        )
    except SoundfontNotFound as exc:
        print(f"stretto render: error: {exc}, or pass --soundfont PATH", file=sys.stderr)
        return 2
    except RendererNotFound as exc:
        print(f"stretto render: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{audio.path}: {audio.seconds:.1f} s, {audio.channels} channels at "
        f"{audio.sample_rate} Hz ({audio.renderer}, {audio.soundfont})"
    )
    return 0
