"""sha256 of a tree of arrays: what our weight files, safetensors and checkpoints carry to
prove their integrity, and what ties an interrupted extraction to its weights."""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np


def tree_digest(tree: Any) -> str:
    """sha256 over the paths, dtypes, shapes and bytes of every array of ``tree`` (of a
    ``jax.Array`` this process's first copy: the trees digested here are replicated)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        array = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|"
                      .encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
