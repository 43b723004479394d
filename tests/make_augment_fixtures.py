"""Writes tests/fixtures/augment_ops.npz: small images and what torchvision's
TrivialAugmentWide and timm's RandAugment ops make of them (Pillow underneath), for
tests/test_augment.py. Needs torch, torchvision and timm (not project dependencies):

    /path/to/torch-venv/bin/python tests/make_augment_fixtures.py

Each case fixes the draws (op, magnitude, sign) so that the reference and
``resnext_jax.data.augment`` compute the same thing.
"""

import json
import os
import random

import numpy as np
import timm
import torch
import torchvision
from PIL import Image
from timm.data import auto_augment as timm_aa
from torchvision.transforms import InterpolationMode
from torchvision.transforms import autoaugment as tv_aa

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "augment_ops.npz")
FILL = (124, 116, 104)  # timm's fill: the ImageNet mean in 0-255


def images():
    rng = np.random.default_rng(0)

    def scene(height, width, spread):
        y, x = np.mgrid[:height, :width]
        base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 128 / (height + width)], -1)
        base[height // 4:height // 2, width // 3:2 * width // 3] = (250, 30, 90)
        noisy = base + rng.normal(0, 20, base.shape)
        return np.clip(128 + (noisy - 128) * spread, 0, 255).astype(np.uint8)

    # Non-square, square (Pillow rotates multiples of 90 degrees by transposing), low contrast.
    return [scene(27, 34, 1.0), scene(30, 30, 1.0), scene(22, 26, 0.25)]


def ta_wide_reference(image, op, index, negative):
    meta = tv_aa.TrivialAugmentWide()._augmentation_space(31)
    magnitudes, signed = meta[op]
    magnitude = float(magnitudes[index].item()) if magnitudes.ndim > 0 else 0.0
    if signed and negative:
        magnitude *= -1.0
    out = tv_aa._apply_op(Image.fromarray(image), op, magnitude,
                          interpolation=InterpolationMode.BILINEAR, fill=None)
    return np.asarray(out)


def rand_reference(image, op, level, negative, increasing):
    name = op
    if increasing and op in ("Posterize", "Solarize", "Color", "Contrast", "Brightness",
                             "Sharpness"):
        name = op + "Increasing"
    hparams = {"translate_const": 100, "img_mean": FILL, "interpolation": Image.BILINEAR}
    augment = timm_aa.AugmentOp(name, prob=1.0, magnitude=level, hparams=hparams)
    random.random = (lambda: 0.9) if negative else (lambda: 0.1)  # timm negates if > 0.5
    try:
        return np.asarray(augment(Image.fromarray(image)))
    finally:
        random.random = _random


_random = random.random


def main():
    imgs = images()
    cases, outputs = [], []
    ta_ops = list(tv_aa.TrivialAugmentWide()._augmentation_space(31))
    for k in (0, 1):
        for op in ta_ops:
            draws = [(15, False), (30, True), (7, True), (20, False)]
            if op in ("Identity", "AutoContrast", "Equalize"):
                draws = [(0, False)]
            elif op in ("Posterize", "Solarize"):
                draws = [(3, False), (16, False), (30, False)]
            for index, negative in draws:
                cases.append({"policy": "ta_wide", "image": k, "op": op, "index": index,
                              "negative": negative})
                outputs.append(ta_wide_reference(imgs[k], op, index, negative))
    for op in ("AutoContrast", "Equalize", "Contrast"):
        cases.append({"policy": "ta_wide", "image": 2, "op": op, "index": 30, "negative": True})
        outputs.append(ta_wide_reference(imgs[2], op, 30, True))
    for op in timm_aa._RAND_TRANSFORMS:
        for increasing in (False, True):
            for level, negative in ((7.0, False), (4.0, True), (10.0, False)):
                if op == "Posterize" and increasing and level == 10.0:
                    continue  # 0 bits: Pillow >= 10 refuses, older Pillow made it black
                cases.append({"policy": "rand", "image": 0, "op": op, "level": level,
                              "negative": negative, "increasing": increasing})
                outputs.append(rand_reference(imgs[0], op, level, negative, increasing))
    tables = {"shifts": [int(v) for v in torch.linspace(0.0, 32.0, 31).int()],
              "posterize_bits": [int(v) for v in tv_aa.TrivialAugmentWide()
                                 ._augmentation_space(31)["Posterize"][0]],
              "ta_wide_ops": ta_ops, "rand_ops": list(timm_aa._RAND_TRANSFORMS)}
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "timm": timm.__version__, "pillow": Image.__version__}
    arrays = {f"image_{k}": im for k, im in enumerate(imgs)}
    arrays.update({f"out_{i}": out for i, out in enumerate(outputs)})
    np.savez_compressed(OUT, cases=json.dumps(cases), tables=json.dumps(tables),
                        versions=json.dumps(versions), fill=np.array(FILL), **arrays)
    print(f"{len(cases)} cases -> {OUT} ({os.path.getsize(OUT) // 1024} KiB)")


if __name__ == "__main__":
    main()
