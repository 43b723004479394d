"""Where an extraction's results go: atomically written chunks in ``<out>.parts/``, which a
restarted run resumes from, merged at the end into the ``.npz`` or ``.npy`` output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from resnext_jax.errors import UsageError
from resnext_jax.files import atomic_write


class ChunkStore:
    """Results in ``<out>.parts/`` as atomically written chunks, merged at the end.

    ``settings`` describe the run; finding chunks of a run with other settings is an error
    rather than a silent mix of features.
    """

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back
        self.dir = out.with_name(out.name + ".parts")
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "settings.json"
        if meta.exists():
            saved = json.loads(meta.read_text())
            differ = sorted(k for k in settings.keys() | saved.keys()
                            if settings.get(k) != saved.get(k))
            if differ:
                raise UsageError(f"{self.dir} holds results of another run (its "
                                 f"{', '.join(differ)} differ); delete it or choose another "
                                 "--out")
        else:
            atomic_write(meta, lambda f: f.write(json.dumps(settings).encode()))
        self.parts = sorted(self.dir.glob("part-*.npz"))

    def done(self) -> set[str]:
        """Files whose results are already stored."""
        names: set[str] = set()
        for part in self.parts:
            with np.load(part) as data:
                names.update(data["files"].tolist())
        return names

    def add(self, results: dict[str, np.ndarray], files: list[str]) -> None:
        """Store one chunk: ``results`` row for row with ``files``."""
        part = self.dir / f"part-{len(self.parts):06d}.npz"
        atomic_write(part, lambda f: np.savez(f, files=np.asarray(files), **results))
        self.parts.append(part)

    def merged(self) -> dict[str, np.ndarray]:
        """Every chunk's arrays (``files`` among them) concatenated in order; ``{}`` if none."""
        loaded = [dict(np.load(p)) for p in self.parts]
        return {k: np.concatenate([d[k] for d in loaded]) for k in loaded[0]} if loaded else {}

    def remove(self) -> None:
        """Delete ``<out>.parts/``, once the output is written."""
        shutil.rmtree(self.dir)


def write_output(out: Path, results: dict[str, np.ndarray], skipped: list[str]) -> None:
    """Write ``out`` atomically: for ``.npz``, ``results`` plus ``skipped`` (file names); for
    ``.npy``, ``results["features"]`` plus ``<out>.files.jsonl``, the file of each row."""
    if out.suffix == ".npz":
        atomic_write(out, lambda f: np.savez(f, skipped=np.asarray(skipped, dtype=str),
                                              **results))
        return
    atomic_write(out, lambda f: np.save(f, results["features"]))
    # One JSON string a line: a name with a newline, or bytes that are not UTF-8 (escaped
    # as \udcXX), still takes exactly one line, row for row with the features.
    index = out.with_name(out.name.removesuffix(".npy") + ".files.jsonl")
    atomic_write(index, lambda f: f.write("".join(json.dumps(str(n)) + "\n"
                                                  for n in results["files"]).encode()))
