"""Fuzz `MidiTokenizer.encode(bytes)` for a bounded time (`make fuzz`).

    .venv/bin/python tests/fuzz/fuzz_encode.py --seconds 300

A finding is any exception other than `MidiError` (ids that do not decode cleanly, or
that `encode(decode(ids))` changes, raise AssertionError), an input that runs longer
than `--input-timeout` seconds, or one that needs more memory than `--memory-mb`. Inputs
run in a worker process with an address-space cap (RLIMIT_AS) and a per-input
watchdog. The worker mutates the seeds with byte-level and MIDI-aware edits
(`--engine mutate`, the default) or hands them to libFuzzer through atheris
(`--engine atheris`; its coverage sees only the Python above symusic's C++ parser
and the numba kernels, so it mostly replays mutations of its smallest seed). The
parent watches the worker, restarts it after each finding, minimizes the finding in
fresh bounded processes and saves it under `tests/data/fuzz/` (named by kind and
hash), where `tests/tokenizer/test_fuzz_replay.py` replays it. Seeds:
../shared/midi/dev and ../shared/midi/malformed, read in place, never copied.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_MIDI = REPO.parent / "shared" / "midi"
FINDINGS = REPO / "tests" / "data" / "fuzz"
MAX_LEN = 1 << 16  # inputs beyond 64 KiB add parse time, not new paths
# MIDI-shaped values a mutation plants: VLQ extremes, status bytes, header fields
INTERESTING = [
    b"\x00",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"\x8f\xff\xff\x7f",  # 0x0FFFFFFF delta
    b"\xff\xff\xff\xff",  # a VLQ that never ends
    b"\xff\x51\x03\x00\x00\x00",  # tempo 0
    b"\xff\x51\x03\xff\xff\xff",
    b"\xff\x2f\x00",
    b"\xb0\x40\x7f",
    b"\x90\x3c\x00",
    b"\xf0\x7f",
    b"MTrk\xff\xff\xff\xff",
    b"MTrk\x00\x00\x00\x00",
]


# -- the worker: runs inputs, reports outcomes ------------------------------------------
def _limit_memory(memory_mb: int) -> None:
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _load_target():
    import numpy as np

    from stretto.tokenizer import MidiError, MidiTokenizer

    tok = MidiTokenizer()

    def target(data: bytes) -> None:
        try:
            ids = tok.encode(data)
        except MidiError:
            return
        # what encode returns is a grammatical id sequence...
        assert ids.ndim == 1 and ids.size >= 2, ids.shape
        assert int(ids[0]) == tok.vocab.START and int(ids[-1]) == tok.vocab.END
        assert int(ids.min()) >= 0 and int(ids.max()) < tok.vocab.size
        score = tok.decode(ids)
        skipped = tok.last_decode_stats
        assert skipped.orphan_note_off == skipped.replaced_note_on == 0, skipped
        assert skipped.skipped_special == skipped.after_end == 0, skipped
        # ...and a fixed point of decode then encode
        again = tok.encode_score(score)
        assert np.array_equal(again, ids), "encode(decode(ids)) != ids"

    return target


def _warm_up(target, seeds: list[bytes]) -> None:
    """Compile every numba specialisation before any clock runs: a file with no track,
    one note, two tracks with a pedal and a tempo, and a few seeds."""

    def smf(tracks: list[bytes]) -> bytes:
        head = struct.pack(">4sIHHH", b"MThd", 6, 1, len(tracks), 480)
        return head + b"".join(struct.pack(">4sI", b"MTrk", len(t)) + t for t in tracks)

    end = b"\x00\xff\x2f\x00"
    note = b"\x00\x90\x3c\x40\x60\x80\x3c\x00" + end
    pedal = b"\x00\xff\x51\x03\x07\xa1\x20\x00\xb0\x40\x7f\x10\xb0\x40\x00" + end
    for data in [smf([]), smf([end]), smf([note]), smf([pedal, note]), *seeds[:3]]:
        target(data)


def _seeds(dirs: list[Path]) -> list[bytes]:
    out = []
    for d in dirs:
        if d.is_dir():
            out += [p.read_bytes()[:MAX_LEN] for p in sorted(d.iterdir()) if p.is_file()]
    return out or [struct.pack(">4sIHHH", b"MThd", 6, 1, 0, 480)]


def run_one_main(path: str, memory_mb: int, timeout: float) -> int:
    """Child of `classify`: run one input; exit 0 (ok) or 3 (a Python exception)."""
    target = _load_target()
    _warm_up(target, [])
    data = Path(path).read_bytes()
    _limit_memory(memory_mb)  # after imports: numba's and LLVM's set-up is not the input's
    faulthandler.dump_traceback_later(timeout, exit=True)  # status 1, "Timeout" on stderr
    try:
        target(data)
    except MemoryError:
        print("FINDING MemoryError", flush=True)
        return 4
    except BaseException as exc:  # noqa: BLE001  every exception that is not MidiError counts
        print(f"FINDING {type(exc).__name__}: {exc}"[:300], flush=True)
        return 3
    return 0


def worker_main(args) -> None:
    """Runs inputs forever: atheris/libFuzzer when importable, else our own mutator.

    Protocol with the parent (our own mutator): before each input, its bytes go to
    `<workdir>/current` and the count of inputs run to `<workdir>/runs` (every 100); a
    Python finding exits with status 3 after writing `<workdir>/finding`, a hang with
    status 1 (faulthandler's watchdog, "Timeout" on stderr). With atheris, libFuzzer writes the
    artifact itself (crash-/timeout-/oom-<sha1> under the workdir) and exits.
    """
    target = _load_target()
    seed_dirs = [Path(d) for d in args.seed_dir]
    workdir = Path(args.workdir)
    _warm_up(target, _seeds(seed_dirs))
    _limit_memory(args.memory_mb)
    if args.engine == "atheris":
        import atheris

        from stretto.tokenizer import MidiTokenizer

        # the only Python coverage there is: the parsing and checks above the native code
        for name in ("encode", "encode_score", "_load", "_parse"):
            setattr(MidiTokenizer, name, atheris.instrument_func(getattr(MidiTokenizer, name)))
        corpus = workdir / "corpus"
        corpus.mkdir(exist_ok=True)
        argv = [
            sys.argv[0],
            str(corpus),
            *[str(d) for d in seed_dirs if d.is_dir()],
            f"-timeout={max(1, int(args.input_timeout))}",
            f"-rss_limit_mb={args.memory_mb}",
            f"-max_len={MAX_LEN}",
            f"-max_total_time={max(1, int(args.seconds))}",
            f"-artifact_prefix={workdir}/",
            f"-seed={args.seed}",
            "-print_final_stats=1",
        ]

        def one_input(data: bytes) -> None:
            target(data)

        atheris.Setup(argv, one_input)
        atheris.Fuzz()
        return

    rng = random.Random(args.seed)
    seeds = _seeds(seed_dirs)
    current = workdir / "current"
    counter = workdir / "runs"
    deadline = time.monotonic() + args.seconds
    n = 0
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(seeds), seeds)
        current.write_bytes(data)
        n += 1
        if n % 100 == 0:
            counter.write_text(str(n))
        # a C thread that needs no GIL: exits with status 1 when the input hangs
        faulthandler.dump_traceback_later(args.input_timeout, exit=True)
        try:
            target(data)
        except BaseException as exc:  # noqa: BLE001
            counter.write_text(str(n))
            (workdir / "finding").write_text(f"{type(exc).__name__}: {exc}"[:300])
            os._exit(3)
        finally:
            faulthandler.cancel_dump_traceback_later()
    counter.write_text(str(n))


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    """A few random byte-level and MIDI-aware edits of one seed."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 6))):
        op = rng.randrange(9)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip bits
            i = min(pos, len(buf) - 1)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 2:  # plant a MIDI-shaped value
            v = rng.choice(INTERESTING)
            buf[pos : pos + (len(v) if rng.random() < 0.5 else 0)] = v
        elif op == 3 and buf:  # delete a run
            buf[pos : pos + rng.randint(1, 64)] = b""
        elif op == 4 and buf:  # duplicate a run
            a = rng.randrange(len(buf))
            buf[pos:pos] = buf[a : a + rng.randint(1, 256)]
        elif op == 5:  # splice another seed in
            other = rng.choice(seeds)
            a = rng.randrange(len(other) + 1)
            buf[pos:] = other[a : a + rng.randint(1, 4096)]
        elif op == 6 and len(buf) >= 14:  # a header field: format, ntrks, division
            field = rng.choice((8, 10, 12))
            buf[field : field + 2] = rng.choice((0, 1, 2, 3, 0x7FFF, 0x8000, 0xFFFF)).to_bytes(
                2, "big"
            )
        elif op == 7:  # a chunk length
            i = buf.find(b"MTrk", rng.randrange(len(buf) + 1))
            if i >= 0 and i + 8 <= len(buf):
                buf[i + 4 : i + 8] = rng.choice((0, 1, 0x7FFFFFFF, 0xFFFFFFFF)).to_bytes(4, "big")
        elif op == 8:  # huge deltas, repeated: tick sums past 2**31 and 2**32
            event = b"\x8f\xff\xff\x7f" + rng.choice((b"\xb0\x07\x00", b"\xff\x01\x00"))
            buf[pos:pos] = event * rng.choice((1, 8, 9, 16, 17))
    return bytes(buf[:MAX_LEN])


# -- the parent: watchdog, findings, minimization ----------------------------------------
def classify(data: bytes, timeout: float, memory_mb: int) -> str | None:
    """Run one input in a fresh bounded process: None when it behaves, else the kind."""
    with tempfile.NamedTemporaryFile(suffix=".mid") as f:
        f.write(data)
        f.flush()
        cmd = [sys.executable, __file__, "--run-one", f.name, "--memory-mb", str(memory_mb)]
        cmd += ["--input-timeout", str(timeout)]
        try:  # the child's own start-up (imports, numba's cache) is not the input's time
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            return "timeout"
    return _outcome(proc.returncode, proc.stdout + proc.stderr)


def _outcome(returncode: int, text: str) -> str | None:
    """The kind of finding a worker's or child's exit status and output show."""
    if returncode == 0:
        return None
    if returncode == 1 and "Timeout (" in text:
        return "timeout"
    if returncode == 4 or "MemoryError" in text or returncode == -signal.SIGKILL:
        return "oom"
    if returncode == 3:
        line = next((s for s in text.splitlines() if s.startswith("FINDING ")), "FINDING ?")
        return "crash:" + line.removeprefix("FINDING ").split(":")[0]
    return f"crash:signal{-returncode}" if returncode < 0 else f"crash:exit{returncode}"


def minimize(data: bytes, kind: str, timeout: float, memory_mb: int, budget_s: float) -> bytes:
    """Delta debugging over byte chunks: the shortest input that still gives `kind`."""
    deadline = time.monotonic() + budget_s
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i = 0
        shrunk = False
        while i < len(data) and time.monotonic() < deadline:
            candidate = data[:i] + data[i + chunk :]
            if candidate and classify(candidate, timeout, memory_mb) == kind:
                data = candidate
                shrunk = True
            else:
                i += chunk
        if not shrunk:
            chunk //= 2
    return data


def save_finding(data: bytes, kind: str, detail: str) -> Path:
    FINDINGS.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()[:12]
    path = FINDINGS / f"{kind.split(':')[0]}-{digest}.mid"
    path.write_bytes(data)
    path.with_suffix(".json").write_text(
        json.dumps({"kind": kind, "detail": detail, "bytes": len(data)}, indent=1) + "\n"
    )
    return path


def parent_main(args) -> int:
    engine = args.engine
    seed_dirs = [Path(d) for d in args.seed_dir]
    present = [d for d in seed_dirs if d.is_dir()]
    print(f"fuzz_encode: engine {engine}, seeds from {[str(d) for d in present] or 'none'}")
    start = time.monotonic()
    deadline = start + args.seconds
    runs = 0
    findings: list[dict] = []
    flaky: list[dict] = []
    seed = args.seed
    work = Path(tempfile.mkdtemp(prefix="stretto-fuzz-"))
    try:
        while time.monotonic() < deadline - 5:
            left = deadline - time.monotonic()
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--engine",
                engine,
                "--workdir",
                str(work),
                "--seconds",
                str(left),
                "--seed",
                str(seed),
                "--input-timeout",
                str(args.input_timeout),
                "--memory-mb",
                str(args.memory_mb),
                *sum((["--seed-dir", str(d)] for d in seed_dirs), []),
            ]
            found = _watch(cmd, work, engine, left)
            runs += found["runs"]
            seed += 1
            if found["kind"] is None:
                if found.get("error"):
                    print(f"worker failed: {found['error']}", file=sys.stderr)
                    return 2
                break
            data = found["data"]
            kind = classify(data, args.input_timeout, args.memory_mb)
            if kind is None:  # e.g. a timeout that was the machine's load, not the input
                flaky.append({"kind": found["kind"], "bytes": len(data)})
                print(f"not reproducible in a fresh process: {found['kind']}", flush=True)
                continue
            small = minimize(data, kind, args.input_timeout, args.memory_mb, args.minimize_s)
            path = save_finding(small, kind, found.get("detail", ""))
            rel = str(path.relative_to(REPO))
            findings.append({"kind": kind, "file": rel, "bytes": len(small)})
            print(f"finding: {kind} -> {path.relative_to(REPO)} ({len(small)} bytes)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - start
    summary = {"engine": engine, "seconds": round(elapsed, 1), "inputs": runs}
    summary.update(findings=findings, not_reproducible=flaky)
    print(json.dumps(summary, indent=1))
    return 1 if findings else 0


def _watch(cmd: list[str], work: Path, engine: str, left: float) -> dict:
    """Run one worker until it ends; what it found (kind None when nothing)."""
    for stale in work.glob("*"):
        if stale.is_file():
            stale.unlink()
    with (work / "worker.log").open("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=left + 120)
        except subprocess.TimeoutExpired:  # the worker's own watchdog failed: a hang
            proc.kill()
            proc.wait()
        log.seek(0)
        text = log.read()
    if engine == "atheris":
        runs = _libfuzzer_runs(text)
        artifacts = sorted(p for p in work.iterdir() if p.name.split("-")[0] in _LIBFUZZER_KINDS)
        if not artifacts:
            err = None if proc.returncode == 0 else text[-2000:]
            return {"kind": None, "runs": runs, "error": err}
        art = artifacts[0]
        kind = _LIBFUZZER_KINDS[art.name.split("-")[0]]
        if kind == "crash":
            kind = "crash:" + _python_exception(text)
        return {"kind": kind, "runs": runs, "data": art.read_bytes(), "detail": text[-1500:]}
    runs = int((work / "runs").read_text()) if (work / "runs").is_file() else 0
    if proc.returncode == 3:
        text = "FINDING " + (work / "finding").read_text() + "\n" + text
    kind = _outcome(proc.returncode, text)
    if kind is None:
        return {"kind": None, "runs": runs, "error": None}
    if kind.startswith("crash:exit") and not (work / "current").is_file():
        return {"kind": None, "runs": runs, "error": text[-2000:]}
    return {"kind": kind, "runs": runs, "data": (work / "current").read_bytes(), "detail": text}


_LIBFUZZER_KINDS = {"crash": "crash", "timeout": "timeout", "oom": "oom", "leak": "oom"}


def _libfuzzer_runs(text: str) -> int:
    for line in reversed(text.splitlines()):
        if line.startswith("stat::number_of_executed_units:"):
            return int(line.split(":")[-1])
        if line.startswith("#") and " exec/s" in line or line.startswith("#") and "DONE" in line:
            try:
                return int(line[1:].split()[0])
            except ValueError:
                continue
    return 0


def _python_exception(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("=== Uncaught Python exception: ==="):
            continue
        if ": " in line and line.split(":")[0].isidentifier() and line[0].isupper():
            return line.split(":")[0]
    return "native"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300.0, help="total fuzzing time")
    p.add_argument("--input-timeout", type=float, default=10, help="seconds one input may take")
    p.add_argument("--memory-mb", type=int, default=4096, help="address-space cap of a run")
    p.add_argument("--minimize-s", type=float, default=60.0, help="time to shrink a finding")
    p.add_argument(
        "--engine",
        choices=("mutate", "atheris"),
        default="mutate",
        help="mutate (default): MIDI-aware mutations of the seeds; atheris: libFuzzer, "
        "whose coverage sees only the Python above symusic's C++ and the numba kernels",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seed-dir",
        action="append",
        default=None,
        help="folder of seed inputs, read in place (default: ../shared/midi/{dev,malformed})",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--run-one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seed_dir is None:
        args.seed_dir = [str(SHARED_MIDI / "dev"), str(SHARED_MIDI / "malformed")]
    if args.run_one:
        return run_one_main(args.run_one, args.memory_mb, args.input_timeout)
    if args.worker:
        worker_main(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
