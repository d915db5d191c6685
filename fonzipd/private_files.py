"""Files and directories that hold personal data: created 0600 and 0700, whatever the umask.

Outside systemd (whose unit sets ``UMask=0077``) the umask is usually 022, and a file
opened with the default mode is readable by every local user. These helpers give
the mode at creation, so that the data is never readable by others, not even for a
moment; an explicit chmod follows, since a umask may also take bits away from us.
Existing files and directories are left as they are: their owner chose their mode.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700; existing ones are kept as is."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by someone else: theirs
        os.chmod(directory, DIR_MODE)


def open_private(path: Path, flags: int) -> tuple[int, bool]:
    """Open ``path`` with ``flags``, creating it 0600 if missing: ``(fd, created)``."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return os.open(path, flags & ~os.O_CREAT), False
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def create_private_file(path: Path) -> bool:
    """Create an empty ``path`` 0600 unless it exists (then leave it); True if created.

    SQLite gives its ``-wal`` and ``-shm`` files the mode of the database file, so a
    database created empty this way before SQLite opens it keeps all three private.
    """
    fd, created = open_private(path, os.O_RDONLY)
    os.close(fd)
    return created
