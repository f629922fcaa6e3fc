"""Atomic replacement of an output directory or file: a reader or a crash sees the old complete output or the new one.
(And :func:`read_json`, which reads such a file back with an error that names it.)

Every command that writes a directory (map, model, synthetic sequence) writes it into a temporary sibling, fsyncs
it, and swaps it in here. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)``, so there is no moment without
a complete directory at the target. Where the OS cannot exchange, the old directory is renamed aside first: a
crash between the two renames leaves the complete old output at ``.NAME.old-*``, never a half-written one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = ["exchange", "fsync_dir", "read_json", "replace_dir", "write_text_atomic"]

_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the OS cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the complete directory ``tmp`` at ``target`` (replacing what is there); ``tmp`` is gone afterwards."""
    tmp, target = Path(tmp), Path(target)
    fsync_dir(tmp)
    if target.exists():
        if exchange(tmp, target):  # tmp now holds the old output
            fsync_dir(target.parent)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)  # put the previous output back
            raise
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
        fsync_dir(target.parent)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling (fsynced, then renamed over it): a reader sees the
    old file or the new one, never part of either."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def read_json(path: Path, what: str) -> Any:
    """The JSON document at ``path``; ``DataError`` naming the file and ``what`` it should hold when it cannot be
    read or parsed."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from exc
