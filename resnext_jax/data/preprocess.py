"""Decode and augment one example, deterministically from a stateless seed.

Train: ``inception_crop`` (ImageNet: random area 8-100 %, aspect 3/4-4/3, center crop when
sampling fails, flip) or ``pad_crop`` (CIFAR: pad 4 then random crop, flip). Eval:
``center_crop`` (``crop_pct`` of the short side, e.g. 224/256) or ``resize``.
Output: ``image`` float32 HWC normalised with ``mean`` / ``std`` (0-255 scale), ``label`` int32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import tensorflow as tf

TRAIN_KINDS = ("inception_crop", "pad_crop")
EVAL_KINDS = ("center_crop", "resize")
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How images become model inputs; ``train(example, seed)`` and ``eval(example)``."""

    image_size: int = 224
    channels: int = 3
    train_kind: str = "inception_crop"
    eval_kind: str = "center_crop"
    eval_size: int | None = None  # None: image_size
    crop_pct: float = 0.875  # eval center crop: 224 of 256
    area_range: tuple[float, float] = (0.08, 1.0)
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    pad: int = 4
    flip: bool = True
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    resize_method: str = "bilinear"

    def __post_init__(self) -> None:
        if self.train_kind not in TRAIN_KINDS or self.eval_kind not in EVAL_KINDS:
            raise ValueError(f"train_kind must be one of {TRAIN_KINDS} and eval_kind one of "
                             f"{EVAL_KINDS}; got {self.train_kind!r}, {self.eval_kind!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean {tuple(self.mean)} and std {tuple(self.std)} need one value "
                             f"per channel ({self.channels})")

    def train(self, example: dict, seed: tf.Tensor) -> dict:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if self.train_kind == "inception_crop":
            image = self._inception_crop(example["image"], crop_seed)
        else:
            image = self._resize(_decode(example["image"], self.channels), self.image_size)
            pads = [[self.pad, self.pad], [self.pad, self.pad], [0, 0]]
            image = tf.image.stateless_random_crop(
                tf.pad(image, pads), [self.image_size, self.image_size, self.channels],
                crop_seed)
        if self.flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return self._finish(image, example["label"])

    def eval(self, example: dict) -> dict:
        size = self.eval_size or self.image_size
        image = _decode(example["image"], self.channels)
        if self.eval_kind == "center_crop":
            shape = tf.shape(image)
            side = tf.cast(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * self.crop_pct,
                           tf.int32)
            image = tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2,
                                                  (shape[1] - side) // 2, side, side)
        return self._finish(self._resize(image, size), example["label"])

    def _inception_crop(self, image_bytes: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        shape = tf.cond(tf.io.is_jpeg(image_bytes),
                        lambda: tf.io.extract_jpeg_shape(image_bytes),
                        lambda: tf.shape(_decode(image_bytes, self.channels)))
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, tf.zeros([1, 0, 4]), seed, min_object_covered=0.1,
            aspect_ratio_range=self.aspect_range, area_range=self.area_range,
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        # Sampling returns the whole image when it fails: use the eval center crop then.
        failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
        side = tf.cast(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * self.crop_pct,
                       tf.int32)
        center = tf.stack([(shape[0] - side) // 2, (shape[1] - side) // 2, side, side])
        window = tf.where(failed, center, tf.stack([begin[0], begin[1], size[0], size[1]]))
        image = tf.cond(
            tf.io.is_jpeg(image_bytes),
            lambda: tf.io.decode_and_crop_jpeg(image_bytes, window, channels=self.channels),
            lambda: tf.image.crop_to_bounding_box(_decode(image_bytes, self.channels),
                                                  window[0], window[1], window[2], window[3]))
        return self._resize(image, self.image_size)

    def _resize(self, image: tf.Tensor, size: int) -> tf.Tensor:
        resized = tf.image.resize(image, [size, size], method=self.resize_method)
        return tf.ensure_shape(resized, [size, size, self.channels])

    def _finish(self, image: tf.Tensor, label: tf.Tensor) -> dict:
        image = (tf.cast(image, tf.float32) - tf.constant(self.mean, tf.float32)) \
            / tf.constant(self.std, tf.float32)
        return {"image": image, "label": tf.cast(label, tf.int32)}


def _decode(image_bytes: tf.Tensor, channels: int) -> tf.Tensor:
    image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
    return tf.ensure_shape(image, [None, None, channels])

