"""Writing local files so that a crash, a full disk or a planted link never leaves a half
file or overwrites anything else: a uniquely named temporary file in the destination
folder (never a fixed ``PATH.tmp``, which a symlink planted there would redirect), flushed
to disk, then atomically renamed over the destination."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """``with atomic_open(path) as f: f.write(...)``: ``path`` appears, complete, only when
    the block ends without an error; otherwise it is left as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part",
                               dir=folder)
    try:
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
