"""The inputs of an extraction: the image files named, a fingerprint of them, and their
decoding into fixed-shape batches."""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from resnext_jax.transforms import ImageError, Transform, load_image


def list_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named in ``inputs``, and every file under the folders named (recursively,
    sorted, hidden files left out); whether each is an image is found when it is read."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(item).parts))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    return files


def fingerprint(files: Sequence[Path]) -> str:
    """sha256 over the files' paths, sizes and modification times: which inputs a run had."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(os.fsencode(path) + f"|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def image_batches(files: Sequence[Path], pre: Transform, batch_size: int, workers: int,
                  report: Callable[[Path, str], None]
                  ) -> Iterator[tuple[np.ndarray, list[Path]]]:
    """``(images, files)`` batches of ``batch_size`` rows, in the order of ``files``.

    Each file is read with :func:`load_image` and ``pre``; one that is not a readable image
    is left out and passed to ``report(path, reason)``. Every batch has the same shape: zeros
    pad the last one after its ``len(files)`` images. ``workers`` threads decode (Pillow
    decodes off the GIL) at most two batches ahead, so memory stays the same whatever the
    number of files.
    """
    def read(path: Path) -> np.ndarray | None:
        try:
            return load_image(path, pre)
        except ImageError as err:
            report(path, str(err))
        except Exception as err:  # noqa: BLE001 - one bad file never costs the others
            report(path, f"{path}: {type(err).__name__}: {err}")
        return None

    images, names = [], []
    pending: collections.deque = collections.deque()
    todo = iter(files)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for path in itertools.islice(todo, 2 * batch_size):
            pending.append((path, pool.submit(read, path)))
        while pending:
            path, future = pending.popleft()
            for more in itertools.islice(todo, 1):
                pending.append((more, pool.submit(read, more)))
            image = future.result()
            if image is None:
                continue
            images.append(image)
            names.append(path)
            if len(images) == batch_size:
                yield np.stack(images), names
                images, names = [], []
    if images:
        pad = np.zeros((batch_size - len(images), *images[0].shape), np.float32)
        yield np.concatenate([np.stack(images), pad]), names
