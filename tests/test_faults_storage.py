"""Faults of the storage a sweep resumes from: a disk that fills while files are written, and files
planted or damaged in Tune's storage path. Whatever the harness writes is whole or absent; what
`--resume` would read is checked first, and a damaged or foreign file is one line naming it, with
nothing loaded from it."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.atomic import replacing, temporary_path, write_atomically
from tests.test_faults import _mount_tmpfs


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a tmpfs of the size asked (tmpfs("64k")) in the test's folder; returns its path.
    Unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        _mount_tmpfs(folder, f"size={size}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_an_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    write_atomically(target, b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed while writing")
    assert target.read_bytes() == b"old"
    assert not temporary_path(target).exists()


def test_an_atomic_write_on_a_full_disk_raises_enospc_and_leaves_the_old_file(tmpfs) -> None:
    small = tmpfs("64k")
    target = small / "state.json"
    write_atomically(target, b"old")
    with pytest.raises(OSError) as raised:
        write_atomically(target, b"\0" * 200_000)
    assert raised.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in small.iterdir()) == ["state.json"]
