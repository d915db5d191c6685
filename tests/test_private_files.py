"""Tests of private files: 0600 files and 0700 directories whatever the umask; others kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fonzipd.private_files import create_private_file, make_private_dir, open_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277])
def test_new_files_and_directories_are_private_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    old = os.umask(umask)
    try:
        make_private_dir(tmp_path / "a" / "b" / "c")
        assert create_private_file(tmp_path / "a" / "b" / "c" / "data.db")
        fd, created = open_private(tmp_path / "a" / "rows.csv", os.O_WRONLY)
        os.write(fd, b"x")
        os.close(fd)
    finally:
        os.umask(old)
    assert created
    for directory in ("a", "a/b", "a/b/c"):
        assert _mode(tmp_path / directory) == 0o700
    assert _mode(tmp_path / "a" / "b" / "c" / "data.db") == 0o600
    assert _mode(tmp_path / "a" / "rows.csv") == 0o600


def test_existing_files_and_directories_keep_their_mode_and_content(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    os.chmod(shared, 0o750)
    existing = shared / "rows.csv"
    existing.write_bytes(b"kept")
    os.chmod(existing, 0o640)
    make_private_dir(shared / "sub")
    assert not create_private_file(existing)
    fd, created = open_private(existing, os.O_RDONLY)
    assert os.read(fd, 10) == b"kept"
    os.close(fd)
    assert not created
    assert _mode(shared) == 0o750
    assert _mode(existing) == 0o640
    assert _mode(shared / "sub") == 0o700
