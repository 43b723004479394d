"""A TFDS dataset with real split metadata and made-up examples, for pipeline tests.

Each example's label is its index in the split (modulo ``num_classes``), images are random
JPEGs (every fifth a PNG) of ``sizes`` pixels; sub-splits (``tfds.even_splits``) are honoured.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


def fake_image(index: int, sizes: tuple[int, int] = (24, 64)) -> bytes:
    rng = np.random.default_rng(index)
    h, w = rng.integers(sizes[0], sizes[1] + 1, 2)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    encode = tf.io.encode_png if index % 5 == 0 else tf.io.encode_jpeg
    return encode(image).numpy()


@contextlib.contextmanager
def mock_tfds(data_dir: str, name: str, splits: dict[str, int], *,
              sizes: tuple[int, int] = (24, 64), num_classes: int | None = None
              ) -> Iterator[None]:
    """Inside: ``tfds.builder(name, data_dir=data_dir)`` reads the made-up examples."""
    builder = tfds.builder(name, data_dir=data_dir)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=name, filetype_suffix="tfrecord")
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0,
                            filename_template=template.replace(split=s))
        for s, n in splits.items()]))
    os.makedirs(builder.data_path, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kw):
        ids = [i for f in self.info.splits[split].file_instructions
               for i in range(f.skip, f.skip + f.take)]
        return tf.data.Dataset.from_generator(
            lambda: ({"image": fake_image(i, sizes), "label": i % (num_classes or 2**31)}
                     for i in ids),
            output_signature={"image": tf.TensorSpec((), tf.string),
                              "label": tf.TensorSpec((), tf.int64)})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=data_dir):
        yield
