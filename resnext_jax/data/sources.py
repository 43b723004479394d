"""Where examples come from: a TFDS dataset by name or a folder of class subfolders.

Every source yields ``{"image": encoded bytes, "label": int64}`` so that decoding and
preprocessing are one code path for ImageNet, CIFAR, the embedded digits and a user's folder.
Shards are contiguous, disjoint slices that together cover a split exactly once
(``tfds.even_splits`` semantics).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from resnext_jax.data import digits  # noqa: F401  (registers "sklearn_digits" with TFDS)

# tf.data runs on the host CPU only; the accelerators belong to JAX.
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow was initialised before this import: too late to change
    logging.warning("TensorFlow already initialised its devices; it may hold GPU memory")

_SLICE = re.compile(r"(?P<name>\w+)(?P<slice>\[(?P<start>\d*)%?:(?P<stop>\d*)%?\])?")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
EMBEDDED = ("sklearn_digits",)  # built locally on first use, no download

PREPARE_HINTS = {
    "imagenet2012": "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
                    "https://image-net.org into MANUAL_DIR, then run `tfds build imagenet2012 "
                    "--manual_dir=MANUAL_DIR --data_dir=DATA_DIR` (or set "
                    "--config.data.manual_dir=MANUAL_DIR to build it on first use)",
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not prepared; the message says how to prepare it."""


@dataclasses.dataclass
class Source:
    """A split-addressable dataset of encoded images."""

    name: str
    num_classes: int
    _builder: tfds.core.DatasetBuilder | None = None
    _files: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # split -> (paths, labels)
    skipped: int = 0  # unreadable images left out of a folder

    @property
    def splits(self) -> list[str]:
        return list(self._builder.info.splits) if self._builder else list(self._files)

    def num_examples(self, split: str, shard: int = 0, num_shards: int = 1) -> int:
        """Examples in shard ``shard`` of ``num_shards`` of ``split``."""
        self._check_split(split)
        if self._builder is not None:
            sub = tfds.even_splits(split, num_shards)[shard]
            return self._builder.info.splits[sub].num_examples
        lo, hi = _bounds(len(self._folder_split(split)[0]), shard, num_shards)
        return hi - lo

    def _folder_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A folder's split, or a slice of it such as ``train[:80%]`` / ``train[80%:]``,
        taken class by class (each class keeps its share; files in sorted order)."""
        match = _SLICE.fullmatch(split)
        if match is None:
            raise ValueError(f"split {split!r} of folder {self.name}: use a split name or a "
                             "percent slice such as 'train[:80%]'")
        paths, labels = self._files[match["name"]]
        if match["slice"] is None:
            return paths, labels
        start, stop = (int(v) if v else d for v, d in ((match["start"], 0),
                                                        (match["stop"], 100)))
        keep = np.zeros(len(paths), bool)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            n = len(members)
            keep[members[n * start // 100:n * stop // 100]] = True
        return paths[keep], labels[keep]

    def read(self, split: str, shard: int = 0, num_shards: int = 1,
             shuffle_seed: int | None = None) -> tf.data.Dataset:
        """One shard as ``{"image": bytes, "label": int64}``; file order shuffled by the seed."""
        self._check_split(split)
        if self._builder is not None:
            sub = tfds.even_splits(split, num_shards)[shard]
            config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
            ds = self._builder.as_dataset(
                split=sub, shuffle_files=shuffle_seed is not None, read_config=config,
                decoders={"image": tfds.decode.SkipDecoding()})
            return ds.map(lambda e: {"image": e["image"], "label": e["label"]})
        paths, labels = self._folder_split(split)
        lo, hi = _bounds(len(paths), shard, num_shards)
        paths, labels = paths[lo:hi], labels[lo:hi]
        if shuffle_seed is not None:  # a folder is small enough to shuffle fully
            order = np.random.default_rng(shuffle_seed).permutation(len(paths))
            paths, labels = paths[order], labels[order]
        ds = tf.data.Dataset.from_tensor_slices({"image": paths, "label": labels})
        return ds.map(lambda e: {"image": tf.io.read_file(e["image"]), "label": e["label"]},
                      num_parallel_calls=tf.data.AUTOTUNE)

    def _check_split(self, split: str) -> None:
        base = split.split("[")[0]
        if base not in self.splits:
            raise ValueError(f"dataset {self.name!r} has no split {base!r}; "
                             f"it has {sorted(self.splits)}")


def _bounds(n: int, shard: int, num_shards: int) -> tuple[int, int]:
    """``tfds.even_splits`` boundaries: the first ``n % k`` shards get one extra example."""
    size, extra = divmod(n, num_shards)
    lo = shard * size + min(shard, extra)
    return lo, lo + size + (shard < extra)


def open_source(name: str, *, data_dir: str | None = None, manual_dir: str | None = None,
                bad_images: str = "skip") -> Source:
    """``name`` is a TFDS name (``imagenet2012``, ``cifar10``, ``sklearn_digits`` ...) or a
    directory with one subfolder per class (optionally ``train/`` and ``test/`` inside; a
    flat folder is the ``train`` split, and ``train[:80%]`` / ``train[80%:]`` split it class
    by class)."""
    if bad_images not in ("skip", "fail"):
        raise ValueError(f"data.bad_images={bad_images!r}; use 'skip' (count and leave out "
                         "unreadable images) or 'fail'")
    if not name:
        raise DatasetNotFoundError("no dataset named: set --config.data.name to a TFDS name or "
                                   "a folder of class subfolders")
    if os.path.isdir(name):
        return _open_folder(name, bad_images)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetNotFoundError(
            f"{name!r} is neither a folder nor a TFDS dataset ({e.__class__.__name__}); give "
            "a TFDS name (see `tfds.list_builders()`) or a directory of class subfolders") from e
    if not builder.is_prepared():
        if name.split(":")[0] in EMBEDDED or manual_dir:
            config = tfds.download.DownloadConfig(manual_dir=manual_dir)
            builder.download_and_prepare(download_config=config)
        else:
            hint = PREPARE_HINTS.get(name.split(":")[0].split("/")[0],
                                     f"run `tfds build {name} --data_dir=DATA_DIR` on a machine "
                                     "with network access")
            raise DatasetNotFoundError(
                f"dataset {name!r} is not prepared in {builder.data_dir!r}; to prepare it, "
                f"{hint}, and pass --config.data.data_dir=DATA_DIR")
    num_classes = builder.info.features["label"].num_classes
    return Source(name, num_classes, _builder=builder)


def _open_folder(root: str, bad_images: str) -> Source:
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    split_dirs = {s: os.path.join(root, s) for s in ("train", "test", "validation", "val")
                  if s in subdirs}
    if not split_dirs:  # a flat folder of classes is the "train" split
        split_dirs = {"train": root}
    classes = _class_names(next(iter(split_dirs.values())))
    files, skipped = {}, 0
    for split, path in split_dirs.items():
        if _class_names(path) != classes:
            raise ValueError(f"{path} has classes {_class_names(path)}, but "
                             f"{next(iter(split_dirs.values()))} has {classes}; every split "
                             "needs the same class subfolders")
        paths, labels = _list_images(path, classes)
        ok = _readable(paths)
        bad = [p for p, good in zip(paths, ok, strict=True) if not good]
        if bad and bad_images == "fail":
            raise ValueError(f"{len(bad)} unreadable image(s) in {path}, e.g. {bad[:3]}; remove "
                             "them or set --config.data.bad_images=skip")
        if bad:
            logging.warning("skipped %d unreadable image(s) in %s, e.g. %s", len(bad), path,
                            bad[:3])
        files[split], skipped = (paths[ok], labels[ok]), skipped + len(bad)
    return Source(root, len(classes), _files=files, skipped=skipped)


def _class_names(path: str) -> list[str]:
    names = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not names:
        raise DatasetNotFoundError(f"{path} has no class subfolders; lay images out as "
                                   f"{path}/CLASS_NAME/IMAGE.jpg")
    return names


def _list_images(path: str, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, _, filenames in sorted(os.walk(os.path.join(path, name))):
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(label)
    if not paths:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
    return np.array(paths), np.array(labels, np.int64)


def _readable(paths: np.ndarray) -> np.ndarray:
    """Which files decode, checked once up front (in parallel) so that every process sees
    the same example count and no batch is cut short mid-training."""
    ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
    ds = ds.map(lambda i, p: (i, tf.shape(tf.io.decode_image(tf.io.read_file(p), channels=3,
                                                              expand_animations=False))),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors()
    ok = np.zeros(len(paths), bool)
    for i, _ in ds.as_numpy_iterator():
        ok[i] = True
    return ok
