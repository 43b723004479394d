"""Decode and augment one example in tf.data, deterministically from a stateless seed.

Eval renders a :class:`resnext_jax.transforms.Transform` (resize the shorter side, center
crop, normalise; the same arrays as its Pillow rendering in ``extract``, within rounding).
Train: ``inception_crop`` (ImageNet: random area 8-100 %, aspect 3/4-4/3, the eval crop when
sampling fails, flip) or ``pad_crop`` (CIFAR: pad then random crop, flip), resized with the
transform's filter; then, when ``auto_augment`` names a policy, TrivialAugment Wide or
RandAugment on the 8-bit crop (:mod:`resnext_jax.data.augment`); normalised with the
transform's mean / std; then, with probability ``erase_prob``, random erasing (timm's
``RandomErasing``: 1 to ``erase_count`` boxes of 2-33 % of the crop, aspect ratio log-uniform
in 0.3-3.3, filled with standard normal noise on the normalised scale, or zeros as
torchvision does).
Output: ``image`` float32 HWC, ``label`` int32.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from resnext_jax.data.augment import AutoAugment
from resnext_jax.transforms import Transform

TRAIN_KINDS = ("inception_crop", "pad_crop")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How images become model inputs; ``train(example, seed)`` and ``eval(example)``."""

    transform: Transform = Transform()  # eval, and train's filter, mean, std and channels
    image_size: int = 224  # the training crop
    train_kind: str = "inception_crop"
    area_range: tuple[float, float] = (0.08, 1.0)
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    pad: int = 4
    flip: bool = True
    auto_augment: str = ""  # "", "ta_wide" or a timm RandAugment string ("rand-m9-mstd0.5")
    erase_prob: float = 0.0
    erase_count: int = 1  # timm's --recount: 1 to this many boxes
    erase_mode: str = "pixel"  # timm's --remode; "const" is torchvision's (zeros)

    def __post_init__(self) -> None:
        if self.train_kind not in TRAIN_KINDS:
            raise ValueError(f"train_kind must be one of {TRAIN_KINDS}, got {self.train_kind!r}")
        if self.auto_augment:
            self.policy  # noqa: B018 -- a bad policy string fails here, not in tf.data
        if self.erase_mode not in ERASE_MODES or self.erase_count < 1:
            raise ValueError(f"random erasing: mode must be one of {ERASE_MODES} (got "
                             f"{self.erase_mode!r}) and count >= 1 (got {self.erase_count})")

    @property
    def policy(self) -> AutoAugment:
        # torchvision fills with black; timm with the mean pixel (its ``img_mean``).
        fill = (0,) if self.auto_augment == "ta_wide" else tuple(
            round(m * 255) for m in self.transform.mean)
        return AutoAugment.parse(self.auto_augment, fill=fill)

    @property
    def channels(self) -> int:
        return self.transform.channels

    def train(self, example: dict, seed: tf.Tensor) -> dict:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if self.train_kind == "inception_crop":
            image = self._inception_crop(example["image"], crop_seed)
        else:
            image = self._resize(_decode(example["image"], self.channels),
                                 [self.image_size, self.image_size])
            pads = [[self.pad, self.pad], [self.pad, self.pad], [0, 0]]
            image = tf.image.stateless_random_crop(
                tf.pad(image, pads), [self.image_size, self.image_size, self.channels],
                crop_seed)
        if self.flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if self.auto_augment:  # on 8-bit pixels, as the references run it on PIL images
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
            image = self.policy.apply(image, tf.random.experimental.stateless_fold_in(seed, 2))
        out = self._finish(image, example["label"])
        if self.erase_prob > 0:
            # A key of its own, so that crops and flips stay what they were without erasing.
            erase_seed = tf.random.experimental.stateless_fold_in(seed, 1)
            out["image"] = random_erase(out["image"], erase_seed, self.erase_prob,
                                        self.erase_count, self.erase_mode)
        return out

    def eval(self, example: dict) -> dict:
        t = self.transform
        image = _decode(example["image"], self.channels)
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        short, size = t.resize_size, t.size
        # Transform.resized_shape: the shorter side to ``short``, the longer truncated.
        longer = tf.cast(tf.cast(short, tf.float64) * tf.cast(tf.maximum(height, width),
                                                              tf.float64)
                         / tf.cast(tf.minimum(height, width), tf.float64), tf.int32)
        new_h = tf.where(height <= width, short, longer)
        new_w = tf.where(height <= width, longer, short)
        # Pillow filters with antialiasing and rounds to 8 bits; so does this.
        image = tf.image.resize(image, tf.stack([new_h, new_w]), method=t.interpolation,
                                antialias=True)
        image = tf.clip_by_value(tf.round(image), 0, 255)
        top = tf.cast(tf.round(tf.cast(new_h - size, tf.float64) / 2), tf.int32)
        left = tf.cast(tf.round(tf.cast(new_w - size, tf.float64) / 2), tf.int32)
        image = tf.ensure_shape(image[top:top + size, left:left + size],
                                [size, size, self.channels])
        return self._finish(image, example["label"])

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
        side = tf.cast(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
                       * self.transform.crop_pct, tf.int32)
        center = tf.stack([(shape[0] - side) // 2, (shape[1] - side) // 2, side, side])
        window = tf.where(failed, center, tf.stack([begin[0], begin[1], size[0], size[1]]))
        image = tf.cond(
            tf.io.is_jpeg(image_bytes),
            lambda: tf.io.decode_and_crop_jpeg(image_bytes, window, channels=self.channels),
            lambda: tf.image.crop_to_bounding_box(_decode(image_bytes, self.channels),
                                                  window[0], window[1], window[2], window[3]))
        return self._resize(image, [self.image_size, self.image_size])

    def _resize(self, image: tf.Tensor, size: list[int]) -> tf.Tensor:
        resized = tf.image.resize(image, size, method=self.transform.interpolation)
        return tf.ensure_shape(resized, [*size, self.channels])

    def _finish(self, image: tf.Tensor, label: tf.Tensor) -> dict:
        t = self.transform
        mean = tf.constant([m * 255 for m in t.mean], tf.float32)
        std = tf.constant([s * 255 for s in t.std], tf.float32)
        image = (tf.cast(image, tf.float32) - mean) / std
        return {"image": image, "label": tf.cast(label, tf.int32)}


ERASE_MODES = ("pixel", "rand", "const")


def random_erase(image: tf.Tensor, seed: tf.Tensor, prob: float, max_count: int = 1,
                 mode: str = "pixel", attempts: int = 10) -> tf.Tensor:
    """timm's ``RandomErasing(prob, mode, max_count)`` on a normalised HWC image, from a
    stateless ``seed``: with probability ``prob``, 1 to ``max_count`` boxes (uniform), each
    the first of ``attempts`` draws (area 2-33 % of the image / count, log-uniform aspect
    0.3-3.3) that fits, filled with N(0, 1) noise per pixel (``"pixel"``), per channel
    (``"rand"``) or zeros (``"const"``, torchvision's ``RandomErasing(value=0)``). Written here
    because timm's and torchvision's run in PyTorch on the host and tf.data needs graph ops."""
    apply_s, count_s, *box_seeds = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2 + max_count))
    count = tf.random.stateless_uniform([], count_s, 1, max_count + 1, tf.int32)

    def erase(image):
        shape = tf.shape(image)
        for k, box_seed in enumerate(box_seeds):
            box, noise = _erase_box(shape, box_seed, count, mode, attempts, image.dtype)
            image = tf.where((k < count) & box[:, :, None], noise, image)
        return image

    # Drawing the boxes and the noise costs more than the rest of the preprocessing: only
    # for the images that are erased.
    return tf.cond(tf.random.stateless_uniform([], apply_s) < prob, lambda: erase(image),
                   lambda: image)


def _erase_box(shape, seed, count, mode, attempts, dtype):
    area_s, aspect_s, top_s, left_s, noise_s = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5))
    height, width = shape[0], shape[1]
    area = tf.cast(height * width, tf.float32) / tf.cast(count, tf.float32)
    target = tf.random.stateless_uniform([attempts], area_s, 0.02, 1 / 3) * area
    aspect = tf.exp(tf.random.stateless_uniform([attempts], aspect_s, math.log(0.3),
                                                math.log(1 / 0.3)))
    box_h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    box_w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (box_h < height) & (box_w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    # When no draw fits the box is empty; clipped, it still pads into place below.
    box_h, box_w = tf.minimum(box_h[first], height), tf.minimum(box_w[first], width)
    # Top-left corners uniform over the positions that keep the box inside, as randint does.
    top = tf.cast(tf.random.stateless_uniform([], top_s) * tf.cast(height - box_h + 1,
                                                                    tf.float32), tf.int32)
    left = tf.cast(tf.random.stateless_uniform([], left_s) * tf.cast(width - box_w + 1,
                                                                      tf.float32), tf.int32)
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    box = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    box &= tf.reduce_any(fits)
    if mode == "const":
        return box, tf.zeros(shape, dtype)
    # Noise for the box only, padded into place: drawing it for every pixel cost 4 ms.
    noise = tf.random.stateless_normal(
        tf.stack([box_h, box_w, shape[2]]) if mode == "pixel" else [1, 1, shape[2]],
        noise_s, dtype=dtype)
    noise = tf.broadcast_to(noise, tf.stack([box_h, box_w, shape[2]]))
    return box, tf.pad(noise, [[top, height - top - box_h], [left, width - left - box_w],
                               [0, 0]])


def _decode(image_bytes: tf.Tensor, channels: int) -> tf.Tensor:
    image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
    return tf.ensure_shape(image, [None, None, channels])
