"""RandAugment (timm's) and TrivialAugment Wide (torchvision's) as tf.data graph ops.

``AutoAugment.parse(spec)`` reads the spec string the recipes use: ``"ta_wide"`` is
torchvision's ``TrivialAugmentWide`` (one of 14 ops, one of 31 magnitudes, a random sign) and
``"rand-m7-mstd0.5-inc1"`` is timm's ``rand_augment_transform`` (``n`` ops drawn with
replacement, each applied with probability ``p``, magnitude ``m`` of 10 plus N(0, ``mstd``)
noise, ``inc1`` for the ops that grow stronger with the magnitude). Each image's draws come
from its stateless seed, so the same seed gives the same images on any host, thread count or
restart.

Each op takes and returns a uint8 HWC image and reproduces Pillow's arithmetic (what both
references run on): blends truncate like ``Image.blend``, greys use Pillow's integer luma,
sharpness its SMOOTH kernel with the border kept, equalize and autocontrast its lookup tables,
geometric ops its inverse affine maps sampled at pixel centres; tests/test_augment.py compares
every op with Pillow's output through torchvision and timm. Not TensorFlow Model Garden's
``official.vision.ops.augment``: it pins one TensorFlow minor version, draws with stateful
random ops (no per-example replay after a restart) and has no TrivialAugment; timm's and
torchvision's run on PIL images, outside the tf.data graph. Differences left: bilinear sampling
may differ from Pillow's on the one-pixel border, and timm's random bilinear / bicubic choice is
bilinear here (TensorFlow's projective transform has no bicubic).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import tensorflow as tf

# torchvision's TrivialAugmentWide ops, in its order, with 31 magnitude bins.
TA_WIDE_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
               "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
               "AutoContrast", "Equalize")
TA_WIDE_BINS = 31
# int(torch.linspace(0, 32, 31)): float32 rounding makes bin 15 a 15, not 16.
TA_WIDE_SHIFTS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 18, 19, 20, 21,
                  22, 23, 24, 25, 26, 27, 28, 29, 30, 32)
# 8 - round(i / 5); the solarize thresholds are linspace(255, 0, 31) = 255 - 8.5 i.
TA_WIDE_POSTERIZE_BITS = (8, 8, 8, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 5, 5, 5, 5, 5, 4, 4, 4, 4, 4,
                          3, 3, 3, 3, 3, 2, 2, 2)

# timm's _RAND_TRANSFORMS / _RAND_INCREASING_TRANSFORMS, in timm's order.
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
            "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
            "TranslateXRel", "TranslateYRel")
_LEVEL_MAX = 10.0  # timm's _LEVEL_DENOM: magnitudes are on a 0-10 scale


def affine(image: tf.Tensor, matrix: tf.Tensor, interpolation: str, fill: tuple[int, ...]
           ) -> tf.Tensor:
    """Pillow's ``Image.transform(AFFINE, matrix)``: output pixel (x, y) (corner-origin
    coordinates, centres at +0.5) reads input (a x + b y + c, d x + e y + f)."""
    a, b, c, d, e, f = tf.unstack(tf.cast(matrix, tf.float32))
    # TensorFlow's coordinates put pixel centres at integers: shift in and out by 0.5.
    c, f = c + 0.5 * (a + b) - 0.5, f + 0.5 * (d + e) - 0.5
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=tf.stack([a, b, c, d, e, f, 0.0, 0.0])[None],
        output_shape=tf.stack([height, width]), fill_value=0.0,
        interpolation=interpolation.upper(), fill_mode="NEAREST")[0]
    # Pillow fills the pixels that read from outside the input and samples the others with
    # the edge repeated; TensorFlow's constant fill would blend the fill into the border.
    y = tf.cast(tf.range(height), tf.float32)[:, None]
    x = tf.cast(tf.range(width), tf.float32)[None, :]
    x_in, y_in = a * x + b * y + c, d * x + e * y + f
    inside = ((x_in >= -0.5) & (x_in < tf.cast(width, tf.float32) - 0.5)
              & (y_in >= -0.5) & (y_in < tf.cast(height, tf.float32) - 0.5))
    fill = tf.constant([fill[k % len(fill)] for k in range(image.shape[-1])], tf.float32)
    return _to_uint8(tf.where(inside[:, :, None], tf.floor(moved), fill))


def shear_x(image, factor, interpolation="nearest", fill=(0,)):
    return affine(image, [1.0, factor, 0.0, 0.0, 1.0, 0.0], interpolation, fill)


def shear_y(image, factor, interpolation="nearest", fill=(0,)):
    return affine(image, [1.0, 0.0, 0.0, factor, 1.0, 0.0], interpolation, fill)


def translate(image, dx, dy, interpolation="nearest", fill=(0,)):
    """Output (x, y) reads input (x + dx, y + dy), like Pillow's (1, 0, dx, 0, 1, dy)."""
    return affine(image, [1.0, 0.0, dx, 0.0, 1.0, dy], interpolation, fill)


def rotate(image, degrees, interpolation="nearest", fill=(0,)):
    """Pillow's ``Image.rotate(degrees)``: counter-clockwise about the image centre."""
    shape = tf.cast(tf.shape(image), tf.float64)
    cx, cy = shape[1] / 2, shape[0] / 2
    angle = -tf.cast(degrees, tf.float64) * math.pi / 180
    # Pillow rounds to 15 decimals, which makes multiples of 90 degrees exact.
    cos, sin = _round15(tf.cos(angle)), _round15(tf.sin(angle))
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return affine(image, tf.stack([cos, sin, c, -sin, cos, f]), interpolation, fill)


def brightness(image, factor):
    return _blend(tf.zeros_like(image), image, factor)


def color(image, factor):
    grey = tf.broadcast_to(_luma(image)[..., None], tf.shape(image))
    return _blend(grey, image, factor)


def contrast(image, factor):
    mean = tf.floor(tf.reduce_mean(tf.cast(_luma(image), tf.float64)) + 0.5)
    return _blend(tf.fill(tf.shape(image), tf.cast(mean, tf.uint8)), image, factor)


def sharpness(image, factor):
    """Blend with Pillow's SMOOTH filter (3x3, centre 5, the rest 1, over 13), whose
    one-pixel border keeps the input's values."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, image.shape[-1], 1])
    smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1],
                                    "VALID")[0]
    smooth = _to_uint8(tf.floor(smooth + 0.5))
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    shape = tf.shape(image)
    rows, cols = tf.range(shape[0])[:, None, None], tf.range(shape[1])[None, :, None]
    inside = (rows > 0) & (rows < shape[0] - 1) & (cols > 0) & (cols < shape[1] - 1)
    return _blend(tf.where(inside, smooth, image), image, factor)


def posterize(image, bits):
    """Keep the top ``bits`` bits (0 keeps none)."""
    mask = 256 - tf.bitwise.left_shift(1, 8 - tf.cast(bits, tf.int32))
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.uint8)


def solarize(image, threshold):
    return tf.where(tf.cast(image, tf.float32) < tf.cast(threshold, tf.float32), image,
                    255 - image)


def solarize_add(image, add, threshold=128):
    added = _to_uint8(tf.cast(image, tf.float32) + tf.cast(add, tf.float32))
    return tf.where(tf.cast(image, tf.float32) < tf.cast(threshold, tf.float32), added, image)


def invert(image):
    return 255 - image


def auto_contrast(image):
    """Pillow's ``ImageOps.autocontrast``: each channel's range stretched to 0-255."""
    pixels = tf.cast(image, tf.float64)  # Pillow's lookup table is computed in double
    lo = tf.reduce_min(pixels, axis=[0, 1])
    hi = tf.reduce_max(pixels, axis=[0, 1])
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = _to_uint8(tf.floor(pixels * scale + -lo * scale))
    return tf.where(hi > lo, stretched, image)


def equalize(image):
    """Pillow's ``ImageOps.equalize``, channel by channel, with its lookup table."""
    out = []
    for k in range(image.shape[-1]):
        channel = tf.cast(image[:, :, k], tf.int32)
        hist = tf.math.bincount(tf.reshape(channel, [-1]), minlength=256, maxlength=256)
        last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)[:, 0]))
        step = (tf.reduce_sum(hist) - last) // 255
        before = tf.cumsum(hist, exclusive=True)
        lut = tf.clip_by_value((step // 2 + before) // tf.maximum(step, 1), 0, 255)
        out.append(tf.where(step > 0, tf.gather(lut, channel), channel))
    return tf.cast(tf.stack(out, -1), tf.uint8)


def _blend(degenerate, image, factor):
    """``Image.blend(degenerate, image, factor)``: float32, clipped, truncated."""
    d = tf.cast(degenerate, tf.float32)
    return _to_uint8(tf.floor(d + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - d)))


def _luma(image):
    """Pillow's ``convert("L")``: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    if image.shape[-1] == 1:
        return image[..., 0]
    rgb = tf.cast(image, tf.int32)
    luma = tf.bitwise.right_shift(
        rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000, 16)
    return tf.cast(luma, tf.uint8)


def _to_uint8(pixels):
    return tf.cast(tf.clip_by_value(pixels, 0, 255), tf.uint8)


def _round15(x):
    return tf.round(x * 1e15) / 1e15


# Each op with its one argument (a float32 scalar; unused by some).
_OPS = {
    "Identity": lambda image, arg, geometric: image,
    "AutoContrast": lambda image, arg, geometric: auto_contrast(image),
    "Equalize": lambda image, arg, geometric: equalize(image),
    "Invert": lambda image, arg, geometric: invert(image),
    "ShearX": lambda image, arg, geometric: shear_x(image, arg, **geometric),
    "ShearY": lambda image, arg, geometric: shear_y(image, arg, **geometric),
    "TranslateX": lambda image, arg, geometric: translate(image, arg, 0.0, **geometric),
    "TranslateY": lambda image, arg, geometric: translate(image, 0.0, arg, **geometric),
    "TranslateXRel": lambda image, arg, geometric: translate(
        image, arg * tf.cast(tf.shape(image)[1], tf.float32), 0.0, **geometric),
    "TranslateYRel": lambda image, arg, geometric: translate(
        image, 0.0, arg * tf.cast(tf.shape(image)[0], tf.float32), **geometric),
    "Rotate": lambda image, arg, geometric: rotate(image, arg, **geometric),
    "Brightness": lambda image, arg, geometric: brightness(image, arg),
    "Color": lambda image, arg, geometric: color(image, arg),
    "Contrast": lambda image, arg, geometric: contrast(image, arg),
    "Sharpness": lambda image, arg, geometric: sharpness(image, arg),
    "Posterize": lambda image, arg, geometric: posterize(image, tf.cast(arg, tf.int32)),
    "Solarize": lambda image, arg, geometric: solarize(image, arg),
    "SolarizeAdd": lambda image, arg, geometric: solarize_add(image, arg),
}


@functools.cache
def _branches(names: tuple[str, ...], channels: int, interpolation: str,
              fill: tuple[int, ...]) -> list:
    geometric = {"interpolation": interpolation, "fill": fill}
    specs = (tf.TensorSpec([None, None, channels], tf.uint8), tf.TensorSpec([], tf.float32))
    return [tf.function(functools.partial(_OPS[name], geometric=geometric), autograph=False)
            .get_concrete_function(*specs) for name in names]


def _apply(image: tf.Tensor, names: tuple[str, ...], op: tf.Tensor, args: dict,
           interpolation: str, fill: tuple[int, ...]) -> tf.Tensor:
    """``names[op]`` with ``args[name]``, by a functional ``Case`` that runs only that branch
    (``tf.switch_case`` lowers to switch / merge, which still pays for the untaken ones)."""
    arg = tf.gather(tf.stack([tf.cast(args.get(name, 0.0), tf.float32) for name in names]),
                    op)
    branches = _branches(names, image.shape[-1], interpolation, tuple(fill))
    out = tf.raw_ops.Case(branch_index=tf.cast(op, tf.int32), input=[image, arg],
                          Tout=[tf.uint8], branches=branches)[0]
    return tf.ensure_shape(out, image.shape)


def ta_wide_op(image: tf.Tensor, op: tf.Tensor, index: tf.Tensor, negative: tf.Tensor,
               interpolation: str = "bilinear", fill: tuple[int, ...] = (0,)) -> tf.Tensor:
    """torchvision's ``TrivialAugmentWide`` after its draws: ``TA_WIDE_OPS[op]`` at
    magnitude bin ``index``, negated when ``negative`` (for the signed ops)."""
    sign = tf.where(negative, -1.0, 1.0)
    step = tf.cast(index, tf.float32) / (TA_WIDE_BINS - 1)  # linspace(0, largest, 31)
    shear, enhance = sign * 0.99 * step, 1 + sign * 0.99 * step
    # torchvision's affine reads x - shift where Pillow's translate reads x + shift.
    shift = -sign * tf.cast(tf.gather(TA_WIDE_SHIFTS, index), tf.float32)
    args = {"ShearX": shear, "ShearY": shear, "TranslateX": shift, "TranslateY": shift,
            "Rotate": sign * 135.0 * step, "Brightness": enhance, "Color": enhance,
            "Contrast": enhance, "Sharpness": enhance,
            "Posterize": tf.gather(TA_WIDE_POSTERIZE_BITS, index),
            "Solarize": 255 - 8.5 * tf.cast(index, tf.float32)}
    return _apply(image, TA_WIDE_OPS, op, args, interpolation, fill)


def rand_op(image: tf.Tensor, op: tf.Tensor, level: tf.Tensor, negative: tf.Tensor,
            increasing: bool, interpolation: str = "bilinear", fill: tuple[int, ...] = (0,)
            ) -> tf.Tensor:
    """timm's RandAugment ``AugmentOp`` after its draws: ``RAND_OPS[op]`` (the increasing
    variants when ``increasing``) at magnitude ``level`` on timm's 0-10 scale, negated when
    ``negative`` (for the signed ops), with timm's level-to-argument rules;
    ``op == len(RAND_OPS)`` (an op not applied) leaves the image as it is."""
    level = tf.clip_by_value(tf.cast(level, tf.float32), 0.0, _LEVEL_MAX) / _LEVEL_MAX
    sign = tf.where(negative, -1.0, 1.0)
    enhance = tf.maximum(0.1, 1.0 + sign * level * 0.9) if increasing else level * 1.8 + 0.1
    bits = tf.floor(level * 4)
    threshold = tf.minimum(256.0, tf.floor(level * 256))
    args = {"Rotate": sign * level * 30, "Posterize": 4 - bits if increasing else bits,
            "Solarize": 256 - threshold if increasing else threshold,
            "SolarizeAdd": tf.minimum(128.0, tf.floor(level * 110)), "Color": enhance,
            "Contrast": enhance, "Brightness": enhance, "Sharpness": enhance,
            "ShearX": sign * level * 0.3, "ShearY": sign * level * 0.3,
            "TranslateXRel": sign * level * 0.45, "TranslateYRel": sign * level * 0.45}
    return _apply(image, (*RAND_OPS, "Identity"), op, args, interpolation, fill)


@dataclasses.dataclass(frozen=True)
class AutoAugment:
    """One of the two policies, with its parameters; ``apply(image, seed)`` on uint8 HWC."""

    kind: str  # "ta_wide" or "rand"
    num_layers: int = 2
    magnitude: float = 10.0
    prob: float = 0.5
    magnitude_std: float = 0.0
    increasing: bool = False
    fill: tuple[int, ...] = (0,)  # for pixels moved in from outside
    interpolation: str = "bilinear"

    @classmethod
    def parse(cls, spec: str, fill: tuple[int, ...] = (0,), interpolation: str = "bilinear"
              ) -> AutoAugment:
        """``"ta_wide"`` or a timm RandAugment string (``rand-m9-n2-mstd0.5-inc1-p0.5``)."""
        if spec == "ta_wide":
            return cls("ta_wide", fill=fill, interpolation=interpolation)
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"data.auto_augment={spec!r}: use 'ta_wide' (torchvision's "
                             "TrivialAugmentWide) or a timm RandAugment string such as "
                             "'rand-m9-mstd0.5-inc1'")
        kwargs = {}
        names = {"m": "magnitude", "n": "num_layers", "p": "prob", "mstd": "magnitude_std",
                 "inc": "increasing"}
        for part in parts[1:]:
            match = re.fullmatch(r"([a-z]+)([0-9.]+)", part)
            if not match or match.group(1) not in names:
                raise ValueError(f"data.auto_augment={spec!r}: cannot read {part!r}; the "
                                 "parts are m (magnitude 0-10), n (ops per image), p (each "
                                 "op's probability), mstd (magnitude noise), inc (0 or 1)")
            key, value = names[match.group(1)], float(match.group(2))
            kwargs[key] = (int(value) if key == "num_layers" else bool(value)
                           if key == "increasing" else value)
        # timm: a noise std above 100 means a uniform magnitude in [0, m].
        if kwargs.get("magnitude_std", 0) > 100:
            kwargs["magnitude_std"] = math.inf
        return cls("rand", fill=fill, interpolation=interpolation, **kwargs)

    def apply(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        geometric = {"interpolation": self.interpolation, "fill": self.fill}
        if self.kind == "ta_wide":  # torchvision's draws: op, bin, sign, all uniform
            op_s, bin_s, sign_s = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
            return ta_wide_op(
                image, _randint(op_s, len(TA_WIDE_OPS)), _randint(bin_s, TA_WIDE_BINS),
                _randint(sign_s, 2) > 0, **geometric)
        for layer_seed in tf.unstack(
                tf.random.experimental.stateless_split(seed, self.num_layers)):
            # timm's: ops with replacement, each applied with probability p, magnitude m
            # plus N(0, mstd) (uniform in [0, m] when mstd is infinite), a sign per op.
            op_s, apply_s, level_s, sign_s = tf.unstack(
                tf.random.experimental.stateless_split(layer_seed, 4))
            level = tf.constant(self.magnitude, tf.float32)
            if self.magnitude_std == math.inf:
                level = tf.random.stateless_uniform([], level_s, 0.0, self.magnitude)
            elif self.magnitude_std > 0:
                level += self.magnitude_std * tf.random.stateless_normal([], level_s)
            applied = tf.random.stateless_uniform([], apply_s) < self.prob
            op = tf.where(applied, _randint(op_s, len(RAND_OPS)), len(RAND_OPS))
            image = rand_op(image, op, level, tf.random.stateless_uniform([], sign_s) > 0.5,
                            self.increasing, **geometric)
        return image


def _randint(seed: tf.Tensor, high: int) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed, 0, high, tf.int32)
