"""Workdir files, local or remote (``gs://...``, through ``tf.io.gfile``), written so that a
crash never leaves a half-written file."""

from __future__ import annotations

import os
import time

import tensorflow as tf

from resnext_jax.files import atomic_write


def is_remote(path: str) -> bool:
    """An object-store URL (``gs://``, ``s3://`` ...): no appends, no directory renames."""
    return "://" in path


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
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        return
    old = tf.io.gfile.GFile(path).read() if tf.io.gfile.exists(path) else ""
    write_text(path, old + line + "\n")
