"""One transform, two renderings: Pillow (``extract``, ``rx.load_image``) and tf.data (the
trainer's eval) give the same model input."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import resnext_jax as rx
from resnext_jax.data import Preprocess
from resnext_jax.transforms import Transform, render


def _image(kind: str, h: int, w: int) -> np.ndarray:
    if kind == "noise":
        return np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([127 + 100 * np.sin(xx / 7.0) * np.cos(yy / 5.0), 255 * xx / w,
                     255 * yy / h], -1).astype(np.uint8)


def _both(image: np.ndarray, transform: Transform) -> tuple[np.ndarray, np.ndarray]:
    pil = transform.normalize(render(Image.fromarray(image), transform))
    example = {"image": tf.io.encode_png(image), "label": tf.constant(0)}
    tfdata = Preprocess(transform, image_size=transform.size).eval(example)["image"].numpy()
    return pil, tfdata


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("crop_pct", [0.875, 1.0])
@pytest.mark.parametrize("kind, shape", [("smooth", (37, 53)), ("smooth", (300, 200)),
                                         ("noise", (300, 200)), ("noise", (224, 224)),
                                         ("smooth", (500, 375))])
def test_pillow_and_tf_data_give_the_same_input(interpolation, crop_pct, kind, shape):
    """Within one 8-bit level per pixel (both filter with antialiasing and round to 8 bits;
    the last bit differs). Upscaling pixel noise with bicubic differs more (the filters clamp
    their overshoot differently), so noise is only shrunk here."""
    transform = Transform(size=32, crop_pct=crop_pct, interpolation=interpolation)
    pil, tfdata = _both(_image(kind, *shape), transform)
    level = 1 / (255 * min(transform.std))
    assert pil.shape == tfdata.shape == (32, 32, 3)
    np.testing.assert_allclose(pil, tfdata, rtol=0, atol=1.01 * level)


def test_load_image_is_the_pillow_rendering(tmp_path):
    transform = rx.get_pretrained_cfg("seresnext50_32x4d").transform
    path = tmp_path / "photo.png"
    image = _image("smooth", 300, 400)
    Image.fromarray(image).save(path)
    np.testing.assert_array_equal(rx.load_image(path, transform),
                                  _both(image, transform)[0])


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 0 .. 65520
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    t = Transform(size=64, crop_pct=1.0, channels=1, mean=(0.0,), std=(1.0,))
    pixels = np.round(rx.load_image(path, t)[..., 0] * 255)
    assert len(np.unique(pixels)) > 200 and pixels.max() == 255


def test_transform_checks_its_values():
    with pytest.raises(ValueError, match="1 channel.*need 1 mean and std"):
        Transform(channels=1)
    with pytest.raises(ValueError, match="0-1 scale"):
        Transform(mean=(124.0, 116.0, 104.0))
    with pytest.raises(ValueError, match="interpolation='lanczos'"):
        Transform(interpolation="lanczos")
    t = Transform(size=224, crop_pct=0.875)
    assert t.resize_size == 256 and t.resized_shape(480, 640) == (256, 341)
    assert Transform.from_dict(t.to_dict()) == t
