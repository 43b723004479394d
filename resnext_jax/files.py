"""Writing local files so that a crash, a full disk or a planted link never leaves a half
file or overwrites anything else: a uniquely named temporary file in the destination
folder (never a fixed ``PATH.tmp``, which a symlink planted there would redirect), flushed
to disk, then atomically renamed over the destination, with the mode the umask gives a new
file. Files opened in place (appends, locks) are opened without following a link."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

from resnext_jax.errors import UsageError


def _new_file_mode() -> int:
    """What ``open(path, "w")`` would give: 0o666 less the process's umask (mkstemp's files
    are 0o600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def open_no_follow(path: str | os.PathLike, flags: int) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (one planted in a workdir would
    send the writes to a file elsewhere): a one-line error naming it."""
    path = os.fspath(path)
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, _new_file_mode())
    except OSError as err:
        if os.path.islink(path):
            raise UsageError(f"{path} is a symbolic link; remove it (nothing was written "
                             "through it) and run again") from None
        raise err


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to a local file, never through a link."""
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "a", encoding="utf-8") as stream:
        stream.write(text)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """``with atomic_open(path) as f: f.write(...)``: ``path`` appears, complete, only when
    the block ends without an error; otherwise it is left as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part",
                               dir=folder)
    try:
        os.fchmod(fd, _new_file_mode())
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[IO[bytes]], object]) -> None:
    """Write ``data`` (bytes, or a function that writes to the open file) to ``path``."""
    with atomic_open(path) as stream:
        if isinstance(data, bytes | bytearray):
            stream.write(data)
        else:
            data(stream)
