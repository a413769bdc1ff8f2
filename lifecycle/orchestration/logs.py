"""Per-run log files for the local runner.

``dag.test()`` runs every task in the calling process and Airflow prints the tasks' logs
to that process's stdout/stderr instead of the per-task files its workers write. The
runner therefore sends everything the process writes to file descriptors 1 and 2 during
one DAG run (Airflow's structured logs, the tasks' own logging, dbt, subprocesses) into
one file per run, optionally echoing it to the console too. The failure callback reports
that file as the log location while a capture is active.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

_active: Path | None = None


def active_run_log() -> Path | None:
    """Return the log file the local runner is writing in this process, if any."""
    return _active


def _pump(
    read_fd: int, echo_fd: int | None, sink, lock: threading.Lock, done: threading.Event
) -> None:
    """Copy the pipe to the file (and the console) until it is closed, or drained after `done`.

    A child process started during the capture (e.g. multiprocessing's resource tracker,
    which dbt starts) inherits the pipe and keeps it open after the capture ends, so the
    end of the capture cannot wait for end-of-file: once `done` is set, whatever is still
    buffered is copied and the pump stops.
    """
    stop_at: float | None = None
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], 0.05)
            if done.is_set():
                # Drain, but never chase a detached writer for more than a few seconds.
                stop_at = stop_at or time.monotonic() + 5.0
                if not ready or time.monotonic() > stop_at:
                    break
            if not ready:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            with lock:
                sink.write(chunk)
            if echo_fd is not None:
                with suppress(OSError):
                    os.write(echo_fd, chunk)
    except OSError:
        pass
    finally:
        os.close(read_fd)


@contextmanager
def capture(path: Path, *, echo: bool = False) -> Iterator[Path]:
    """Append everything written to fds 1 and 2 inside the block to `path`.

    With `echo`, the output still reaches the original stdout/stderr as well.
    """
    global _active
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with suppress(AttributeError, ValueError):
            stream.flush()
    lock = threading.Lock()
    done = threading.Event()
    saved: list[int] = []
    threads: list[threading.Thread] = []
    previous = _active
    with open(path, "ab", buffering=0) as sink:
        try:
            for fd in (1, 2):
                read_fd, write_fd = os.pipe()
                saved.append(os.dup(fd))
                os.dup2(write_fd, fd)
                os.close(write_fd)
                t = threading.Thread(
                    target=_pump,
                    args=(read_fd, saved[-1] if echo else None, sink, lock, done),
                    name=f"lifecycle-log-capture-{fd}",
                    daemon=True,
                )
                t.start()
                threads.append(t)
            _active = path
            yield path
        finally:
            _active = previous
            for stream in (sys.stdout, sys.stderr):
                with suppress(AttributeError, ValueError):
                    stream.flush()
            # Restore the descriptors, then let the pumps copy what is left and stop.
            for fd, original in zip((1, 2), saved, strict=False):
                os.dup2(original, fd)
            done.set()
            for t in threads:
                t.join(timeout=30)
            for original in saved:
                os.close(original)
