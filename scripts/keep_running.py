"""Run a service's command, and start it again whenever it dies, until told to stop.

    python scripts/keep_running.py COMMAND [ARG...]

The Procfile runs every service through it, so under ``scripts/run.sh`` a
crashed or killed process is restarted instead of honcho stopping the whole
stack. Each death gets one line on stderr: what died, its exit status or
signal, how long it ran, when it restarts. Restarts back off from 1 s to
30 s while the command keeps dying within a minute of starting.

SIGTERM or SIGINT stops it: honcho sends SIGTERM to the process group (the
wrapper and its command alike) on Ctrl-C; the signal is passed on to the
command, and the wrapper exits with its status once it has exited. Reads
nothing from the environment; the command inherits it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

FIRST_DELAY, MAX_DELAY, STEADY_SECONDS = 1.0, 30.0, 60.0


def describe(returncode: int) -> str:
    """``exited with status 3`` or ``was killed by SIGKILL``."""
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def service_name(argv: list[str]) -> str:
    """How the lines name the command: its program, or ``module arg`` for ``python -m module arg``.

    The Procfile runs ``python -m relay.serve worker``: "relay.serve worker"
    says more than "python".
    """
    program = os.path.basename(argv[0])
    if program.startswith("python") and len(argv) > 2 and argv[1] == "-m":
        return " ".join(argv[2:4])
    return program


def run(argv: list[str]) -> int:
    stopping = threading.Event()
    child: subprocess.Popen | None = None

    def stop(signum: int, _frame: object) -> None:
        stopping.set()
        if child and child.poll() is None:
            child.send_signal(signum)  # harmless when it already got the signal from its group

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    name, delay = service_name(argv), FIRST_DELAY
    while True:
        started = time.monotonic()
        child = subprocess.Popen(argv)
        if stopping.is_set():  # told to stop while starting it: it missed the signal
            child.terminate()
        returncode = child.wait()
        if stopping.is_set():
            return returncode if returncode >= 0 else 128 - returncode
        ran = time.monotonic() - started
        delay = FIRST_DELAY if ran >= STEADY_SECONDS else delay
        print(
            f"keep_running: {name} (pid {child.pid}) {describe(returncode)} after {ran:.0f} s;"
            f" restarting in {delay:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        if stopping.wait(delay):
            return 0
        delay = min(delay * 2, MAX_DELAY)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} COMMAND [ARG...]")
    sys.exit(run(sys.argv[1:]))
