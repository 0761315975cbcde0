"""Code for a child process (see `bounded.run_bounded`) that SIGKILLs itself at a chosen
point of a real code path: part-way through writing a temporary file, before its fsync,
just before or just after an `os.replace`. `run_killed(kind, at, fn)` forks, arms the
point and runs `fn`; it returns whether the fork was killed there."""

from __future__ import annotations

KILL_HOOKS = """
import os, signal

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def arm(kind, at):
    '''SIGKILL this process at the `at`-th event of `kind` (counted from 0).'''
    seen = [0]

    def due():
        seen[0] += 1
        return seen[0] - 1 == at

    if kind == "write":  # after `at` bytes of the temporary file
        real_fdopen = os.fdopen

        class Killing:
            def __init__(self, f):
                self.f, self.n = f, 0
            def write(self, b):
                b = bytes(b)
                if self.n + len(b) > at:
                    self.f.write(b[: at - self.n])
                    self.f.flush()
                    die()
                self.n += len(b)
                return self.f.write(b)
            def __getattr__(self, name):
                return getattr(self.f, name)
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

        os.fdopen = lambda *a, **k: Killing(real_fdopen(*a, **k))
    if kind == "fsync":  # the temporary file written, not yet synced or renamed
        real = os.fsync
        os.fsync = lambda fd: die() if due() else real(fd)
    elif kind == "before_replace":
        real = os.replace
        os.replace = lambda a, b: die() if due() else real(a, b)
    elif kind == "after_replace":
        real = os.replace
        def replace(a, b):
            real(a, b)
            if due():
                die()
        os.replace = replace

def run_killed(kind, at, fn):
    '''fn() in a forked child armed to die at the point; True when it was killed.'''
    pid = os.fork()
    if pid == 0:
        arm(kind, at)
        fn()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
"""
