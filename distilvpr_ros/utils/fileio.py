"""File helpers shared by checkpoints, maps, caches and results: sha256 and crash-safe writes (no heavy imports).

Crash-safe writes (:func:`atomic_write`), the one way this package replaces a file or a folder:

1. The new version is written to a temporary sibling named ``.<name>.tmp-<pid>`` (the writer's process id),
   and every file in it, and every folder, is fsynced.
2. A file is then renamed over the old one (``os.replace`` is atomic). A folder cannot be replaced in one
   rename: the old folder is first renamed to ``<name>.bak``, the new one renamed into place, the parent
   folder fsynced, and only then is the backup removed.
3. A crash at any point leaves the old or the new version complete under the final name, or (between the two
   folder renames) only ``<name>.bak``. Readers call :func:`recovered_path`, which returns the backup then,
   with a warning. An exception during the write removes the temporary and puts a moved backup back.
4. Temporaries left by a process that was killed (its pid no longer runs) are removed, with a log line, by
   the next write or :func:`recovered_path` of the same name (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

BACKUP_SUFFIX = ".bak"
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def temp_path(path: str | Path, pid: int | None = None) -> Path:
    """The temporary sibling a write of ``path`` by process ``pid`` (default: this one) goes through."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def backup_path(path: str | Path) -> Path:
    """Where the previous version of a folder waits while the new one is renamed into place."""
    path = Path(path)
    return path.with_name(path.name + BACKUP_SUFFIX)


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a folder's contents (a folder: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path`` (itself included), innermost first; a link is left as it
    is (its entry is made durable by the fsync of the folder it is renamed into)."""
    if path.is_symlink():
        return
    if path.is_dir():
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                fsync_path(Path(root) / name)
            fsync_path(root)
    else:
        fsync_path(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # ours: another thread may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0  # exists under another user (or not a valid pid at all)
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries of writes of ``path`` whose process is gone (killed mid-write); log each.

    Only names of our own pattern, ``.<name>.tmp-<pid>`` beside ``path``, are touched, and only when no
    process ``pid`` runs on this machine. Returns what was removed.
    """
    path = Path(path)
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        m = _TEMP.match(p.name)
        if m is None or m["name"] != path.name or _pid_alive(int(m["pid"])):
            continue
        try:
            _remove(p)
        except OSError as e:
            log.warning("could not remove stale temporary %s: %s", p, e)
            continue
        log.warning("removed %s: a temporary left by process %s, which is no longer running (killed while "
                    "writing %s)", p, m["pid"], path.name)
        removed.append(p)
    return removed


def recovered_path(path: str | Path) -> Path:
    """The path to read for ``path``: itself, or ``<name>.bak`` when a folder write was interrupted between
    its two renames (warns). Removes stale temporaries of ``path`` first."""
    path = Path(path)
    remove_stale_temporaries(path)
    bak = backup_path(path)
    if not path.exists() and bak.exists():
        warnings.warn(f"{path} is missing (interrupted save); loading the previous version {bak}", stacklevel=3)
        return bak
    return path


def _lock(path: Path) -> threading.Lock:
    key = path.absolute()
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


@contextmanager
def atomic_write(path: str | Path, *, folder: bool = False) -> Iterator[Path]:
    """Replace the file (or, with ``folder=True``, the folder) ``path`` crash-safely (module docstring).

    Yields the temporary path to write: a file path, or an empty folder to fill. When the block ends normally,
    its contents are fsynced and moved into place; when it raises, nothing changes at ``path``. Writes of the
    same path from several threads of one process take turns.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        remove_stale_temporaries(path)
        tmp = temp_path(path)
        _remove(tmp)
        if folder:
            tmp.mkdir()
        try:
            yield tmp
            if not (tmp.exists() or tmp.is_symlink()):
                raise FileNotFoundError(f"{tmp}: nothing was written for {path}")
            _fsync_tree(tmp)
            (_replace_folder if folder else _replace_file)(tmp, path)
        except BaseException:
            _remove(tmp)
            raise


def _replace_file(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_path(path.parent)


def _replace_folder(tmp: Path, path: Path) -> None:
    bak = backup_path(path)
    moved_old = False
    try:
        if path.exists() or path.is_symlink():
            _remove(bak)
            os.replace(path, bak)
            moved_old = True
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        if moved_old and not path.exists():
            os.replace(bak, path)
        raise
    _remove(bak)
    fsync_path(path.parent)
