"""Safe file output: atomic writes, no silent overwrite of a user's file, no orphan temporary files.

:func:`atomic_path` writes ``.NAME.PID-XXXXXXXX.tmp`` beside the target and renames it into place.
A process killed mid-write (SIGKILL, power loss) leaves that file behind; the next atomic write in
the same folder removes every such file whose process is gone (:func:`clean_orphans`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "check_writable", "clean_orphans", "sha256_file"]

_TMP = re.compile(r"^\..+\.(\d+)-[A-Za-z0-9_]+\.tmp$")
_LEGACY_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
LEGACY_ORPHAN_AGE_S = 3600.0


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_orphans(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of atomic writes in ``folder`` whose writing process no longer runs.

    Files of the older name pattern (no process id) are removed once older than an hour. Returns the
    removed paths; files of running processes are never touched.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        if not e.name.endswith(".tmp") or not e.is_file(follow_symlinks=False):
            continue
        m = _TMP.match(e.name)
        try:
            orphan = (not _alive(int(m.group(1)))) if m else (
                _LEGACY_TMP.match(e.name) is not None and now - e.stat().st_mtime > LEGACY_ORPHAN_AGE_S)
            if orphan:
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse to overwrite an existing file unless asked (OutputError, also a FileExistsError), refuse
    names and folders that cannot be written (:func:`condiff.validate.check_output`); create parent folders."""
    from .validate import check_output

    path = check_output(path, overwrite, suffixes=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto ``path`` on success.

    A crash mid-write leaves the old file (or none) in place, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 (and writers such as safetensors may recreate the file): give the result the
        # usual permissions of a new file
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
