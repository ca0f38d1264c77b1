"""File-system helpers shared by the run directory, the adapter save and the reports.

Every write that a later run reads goes through a temporary file (or folder) and a
rename, so a crash, a kill or a full disk leaves the old file or nothing, never half of
one. Operating-system failures become a :class:`LorakitError` that names the path and
says what to do.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from lorakit.errors import LorakitError

__all__ = [
    "LOCK_FILE",
    "WRITE_FAILURES",
    "RunLock",
    "current_umask",
    "fs_error",
    "make_temp_dir",
    "read_json_object",
    "remove_stale_temporaries",
    "replace_dir_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

TEMP_PREFIXES = (".adapter-", ".adapter.old")
LOCK_FILE = ".lock"

_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
WRITE_FAILURES = frozenset(_FULL | _DENIED | {errno.ENOTDIR, errno.EISDIR})
"""Operating-system errors that mean a file could not be written where it was asked."""


def fs_error(error: OSError, action: str, path: Path | str | None = None) -> LorakitError:
    """A one-line :class:`LorakitError` for an operating-system failure while ``action``."""
    where = str(path if path is not None else (error.filename or "?"))
    reason = error.strerror or str(error)
    if error.errno in _FULL:
        hint = (
            "free disk space (or raise the file-size limit), then run the same command again: "
            "the run resumes from its last complete checkpoint"
        )
    elif error.errno in _DENIED:
        hint = "make the folder writable, or choose another --run-dir"
    elif error.errno == errno.ENOTDIR:
        hint = "a part of the path is a file, not a folder: choose another --run-dir"
    elif error.errno == errno.EISDIR:
        hint = "a folder stands where a file is expected: remove it or choose another --run-dir"
    else:
        hint = "check the path and the disk, then run the same command again"
    return LorakitError(f"cannot {action}: {reason}", file=where, hint=hint)


def current_umask() -> int:
    """The process's file-creation mask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to ``path`` through a temporary file in the same folder and a rename.

    Raises:
        LorakitError: the folder is not writable or the disk is full (``path`` is untouched).
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:
        raise fs_error(error, "write a file", path) from None
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes owner-only files
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise fs_error(error, "write a file", path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a :class:`LorakitError` naming it when it is unreadable,
    not JSON, or not an object."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise fs_error(error, f"read {what}", path) from None
    except UnicodeDecodeError:
        raise LorakitError(
            f"{what} is not UTF-8 text",
            file=str(path),
            hint="it was damaged: remove it, or start a new --run-dir",
        ) from None
    try:
        data = json.loads(text)
    except ValueError as error:
        line, column = getattr(error, "lineno", None), getattr(error, "colno", None)
        raise LorakitError(
            f"{what} is not valid JSON ({getattr(error, 'msg', error)})",
            file=str(path),
            line=line,
            hint=f"column {column}: the file was damaged; remove it, or start a new --run-dir",
        ) from None
    if not isinstance(data, dict):
        raise LorakitError(
            f"{what} holds a JSON {type(data).__name__}, not an object",
            file=str(path),
            hint="the file was damaged: remove it, or start a new --run-dir",
        )
    return data


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new folder in ``parent`` with the usual permissions (``mkdtemp`` makes it owner-only)."""
    try:
        folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
        os.chmod(folder, 0o777 & ~current_umask())
    except OSError as error:
        raise fs_error(error, "create a folder", parent) from None
    return folder


def replace_dir_atomic(source: Path, target: Path) -> None:
    """Move the complete folder ``source`` to ``target``, replacing an older one."""
    try:
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(source, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(source, target)
    except OSError as error:
        raise fs_error(error, "move a folder into place", target) from None


def remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Remove what a killed process left half-written in ``run_dir``: temporary adapter
    folders and the temporary files of atomic writes. Returns the names removed.

    Call it only while holding the run directory's :class:`RunLock`.
    """
    removed = []
    for path in sorted(run_dir.iterdir()):
        name = path.name
        is_temp_file = path.is_file() and name.startswith(".") and name.count(".") >= 2
        if name.startswith(TEMP_PREFIXES) or (is_temp_file and name != LOCK_FILE):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(name)
    return removed


class RunLock:
    """An exclusive lock on a run directory, held for the whole run.

    A second process is refused and told which process holds the lock. The lock is the
    operating system's (``flock``): it ends with the process that held it, so a lock file
    left by a killed run is simply taken over.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`LorakitError` naming the holder."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        except OSError as error:
            raise fs_error(error, "create the run directory's lock file", self.path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise LorakitError(
                f"another lorakit process (pid {holder}) is using this run directory",
                file=str(self.run_dir),
                hint="wait for it to finish, stop it, or choose another --run-dir",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (the file stays; it holds no lock without a process)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
