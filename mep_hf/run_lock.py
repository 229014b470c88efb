"""One training run per ``output_dir``: two runs writing checkpoints into one folder interleave them, or crash on
each other's temporary files and leave a checkpoint that mixes both runs' files.

:class:`OutputDirLock` holds an ``flock`` on ``output_dir/_ep_run.lock`` for the whole of ``train()``, with the
holder's pid, host and start time written in it, so a second run is refused naming the first. The kernel drops the
lock when its process dies however it dies, so the file a killed run leaves behind is taken over, not obeyed. (The
``_`` prefix keeps it out of what ``Trainer.push_to_hub`` uploads.)
"""

from __future__ import annotations

import json
import os
import socket
import time

try:
    import fcntl
except ImportError:  # not POSIX: no lock (nothing else here depends on it)
    fcntl = None

LOCK_NAME = "_ep_run.lock"


class OutputDirLockedError(RuntimeError):
    """Another training run holds the ``output_dir``."""


class OutputDirLock:
    """The lock of one ``output_dir`` (see the module docstring): :meth:`acquire`, then :meth:`release`."""

    def __init__(self, output_dir: str):
        self.output_dir, self.path = output_dir, os.path.join(output_dir, LOCK_NAME)
        self.fd: int | None = None
        self.created_dir = False  # removed again at release when the run left it empty

    def acquire(self) -> None:
        """Take the lock, or raise :class:`OutputDirLockedError` naming the run that holds it."""
        if fcntl is None:
            return
        self.created_dir = not os.path.isdir(self.output_dir)
        os.makedirs(self.output_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise OutputDirLockedError(
                    f"output_dir {self.output_dir} is in use by another training run ({holder}): two runs writing "
                    "checkpoints into one folder mix their files. Wait for that run to end, or give this one another "
                    f"output_dir. (Its lock, {self.path}, is released when that process ends, however it ends.)"
                ) from None
            try:  # the file may have been released and removed between our open and our lock: then lock anew
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.write(fd, json.dumps(record).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None
        if self.created_dir:
            try:
                os.rmdir(self.output_dir)  # only if the run left it empty
            except OSError:
                pass


def _holder(fd: int) -> str:
    """The lock holder in words (pid, host, start), from the lock file's record."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096) or b"{}")
        return f"pid {record['pid']} on host {record['host']}, started {record['started']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "a process that wrote no record yet"
