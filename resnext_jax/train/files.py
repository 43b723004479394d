"""Workdir files, local or remote (``gs://...``, through ``tf.io.gfile``), written so that a
crash never leaves a half-written file."""

from __future__ import annotations

import tensorflow as tf


def is_remote(path: str) -> bool:
    """An object-store URL (``gs://``, ``s3://`` ...): no appends, no directory renames."""
    return "://" in path


def write_text(path: str, text: str) -> None:
    """Write then rename, so that a crash never leaves a half-written file."""
    tmp = path + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.remove(tmp)
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
