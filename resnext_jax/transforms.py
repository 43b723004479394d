"""How an image becomes a model input: one description for every place that needs it.

A :class:`Transform` holds what the evaluation preprocessing of a set of weights needs: the
crop ``size``, ``crop_pct`` (resize the shorter side to ``floor(size / crop_pct)``, then take
the central ``size`` x ``size``, as timm and torchvision evaluate), the resampling filter,
``mean`` / ``std`` on the 0-1 scale and the number of ``channels``. It comes from a weight
set's config, from a training config's ``data`` section, or from a weight file, which stores
the transform its weights were evaluated with. It is rendered twice: with Pillow for files
(:func:`load_image`, used by ``extract``) and in tf.data by :mod:`resnext_jax.data.preprocess`
(training and evaluation); tests/test_transforms.py checks that both give the same array.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclasses.dataclass(frozen=True)
class Transform:
    """Resize the shorter side to ``resize_size``, center-crop ``size``, scale to [0, 1],
    normalise per channel with ``mean`` / ``std``."""

    size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = []
        if not len(self.mean) == len(self.std) == self.channels:
            problems.append(f"{self.channels} channel(s) need {self.channels} mean and std "
                            f"values, got mean={self.mean}, std={self.std}")
        if any(v > 1.0 for v in self.mean) or any(not 0 < v <= 1.0 for v in self.std):
            problems.append(f"mean={self.mean} and std={self.std} must be on the 0-1 scale "
                            "(divide 0-255 values by 255)")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation={self.interpolation!r} is not one of "
                            f"{INTERPOLATIONS}")
        if not 0 < self.crop_pct <= 1 or self.size < 1:
            problems.append(f"crop_pct={self.crop_pct} must lie in (0, 1] and size="
                            f"{self.size} be positive")
        if problems:
            raise ValueError("invalid transform: " + "; ".join(problems))

    @property
    def resize_size(self) -> int:
        """The shorter side before the center crop (timm: ``floor(size / crop_pct)``)."""
        return math.floor(self.size / self.crop_pct)

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` after resizing the shorter side to :attr:`resize_size`
        (torchvision's ``Resize(int)``: the longer side truncated)."""
        short = self.resize_size
        if height <= width:
            return short, int(short * width / height)
        return int(short * height / width), short

    def crop_offsets(self, height: int, width: int) -> tuple[int, int]:
        """Top-left corner of the center crop of a ``height`` x ``width`` image."""
        return int(round((height - self.size) / 2)), int(round((width - self.size) / 2))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """0-255 pixel values (HWC) to the model's input scale, float32."""
        mean = np.asarray(self.mean, np.float32) * 255
        std = np.asarray(self.std, np.float32) * 255
        return (np.asarray(pixels, np.float32) - mean) / std

    def denormalize(self, image: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`normalize`, on the 0-1 scale (for showing an input)."""
        return np.asarray(image) * np.asarray(self.std) + np.asarray(self.mean)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Transform:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown transform field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


class ImageError(ValueError):
    """A file that is not an image Pillow can read."""


def load_image(path: str | os.PathLike, transform: Transform) -> np.ndarray:
    """One image file as a ``(size, size, channels)`` float32 model input."""
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError as err:
        raise ImportError("reading image files needs Pillow: pip install "
                          "'resnext_jax[tools]'") from err
    try:
        with Image.open(path) as image:
            new_h, new_w = transform.resized_shape(image.size[1], image.size[0])
            if new_h * new_w > MAX_RESIZED_PIXELS:  # before decoding anything
                raise ImageError(f"{path}: a {image.size[0]}x{image.size[1]} image is too "
                                 f"elongated to resize for a {transform.size} crop")
            image = ImageOps.exif_transpose(image)
            image = _to_8bit(image, transform.channels)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    return transform.normalize(render(image, transform))


# The resize before the center crop scales the shorter side to about the crop: an image far
# longer than wide would become billions of pixels (Pillow's own limit is on the input).
MAX_RESIZED_PIXELS = 2**26


def _to_8bit(image: Any, channels: int) -> Any:
    """RGB or grey 8-bit, scaling 16- and 32-bit images down instead of clipping them."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(np.round(array * 255.0 / top), 0, 255).astype(np.uint8))
    return image.convert("L" if channels == 1 else "RGB")  # palette, CMYK, alpha


def render(image: Any, transform: Transform) -> np.ndarray:
    """Resize and center-crop a Pillow image; ``(size, size, channels)`` 0-255 floats."""
    from PIL import Image

    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[transform.interpolation]
    height, width = image.size[1], image.size[0]
    new_h, new_w = transform.resized_shape(height, width)
    image = image.resize((new_w, new_h), resample)
    top, left = transform.crop_offsets(new_h, new_w)
    image = image.crop((left, top, left + transform.size, top + transform.size))
    return np.asarray(image, np.float32).reshape(transform.size, transform.size, -1)
