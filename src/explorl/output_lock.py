"""One run per output folder.

``output_dir/.lock`` holds the pid of the run that writes there and an advisory ``flock`` on it
while the run lives. A second run on the same folder stops at start with one line naming the
folder and that process; the kernel drops the lock of a process that dies (even by SIGKILL), so
a lock left behind is taken over by the next run.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from explorl.errors import UserError

LOCK_NAME = ".lock"


class OutputLock:
    def __init__(self, folder: Path):
        self.folder, self.path = Path(folder), Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`UserError` naming the process that holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"output_dir: {self.folder} is in use by process {holder} (lock "
                            f"{self.path}); wait for that run to end, stop it, or choose "
                            "another output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
