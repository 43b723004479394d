"""Workdir files, local or remote (``gs://...``, through ``tf.io.gfile``), written so that a
crash never leaves a half-written file."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time

import tensorflow as tf

from resnext_jax.files import append_text, atomic_write, open_no_follow
from resnext_jax.workdir import is_remote


def write_text(path: str, text: str) -> None:
    """Write then rename, so that a crash never leaves a half-written file."""
    if not is_remote(path):
        atomic_write(path, text.encode())
        return
    tmp = f"{path}.{os.getpid()}.{time.time_ns()}.part"  # object stores have no symlinks
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def append_line(path: str, line: str) -> None:
    """Append one line; object stores cannot append, so there the file is rewritten."""
    if not is_remote(path):
        append_text(path, line + "\n")
        return
    old = tf.io.gfile.GFile(path).read() if tf.io.gfile.exists(path) else ""
    write_text(path, old + line + "\n")


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir."""


class WorkdirLock:
    """One training run per workdir: an exclusive ``flock`` on ``WORKDIR/.lock``, held for
    the run's lifetime. The kernel drops it when the process ends, however it ends (SIGKILL
    included), so a stale lock never blocks a restart. Object stores have no locks: there it
    only logs that nothing stops a second writer."""

    def __init__(self, workdir: str) -> None:
        self.fd: int | None = None
        if is_remote(workdir):
            logging.warning("%s is on an object store, which has no locks: make sure only one "
                            "run writes to it", workdir)
            return
        path = os.path.join(workdir, ".lock")
        fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirBusyError(f"{workdir} is in use by another run ({holder}); wait for "
                                   "it to finish or stop it, or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None
