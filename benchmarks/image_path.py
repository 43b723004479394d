"""Which of the package's files a training image passes through, from the input pipeline to
the optimizer update: a structure measure (docs/training.md names the files).

    PYTHONPATH=. python benchmarks/image_path.py [--config seresnext50_32x4d_racm]

Runs three steps of a recipe (by default the racm ImageNet recipe: RandAugment, random
erasing, Mixup / CutMix, EMA) with ``tiny_seresnext`` at 32 px on a made-up ``imagenet2012``
(``tests/mock_tfds.py``; ``digits`` runs on its own data), and records, once the training
data starts flowing, every function of the package called with an image-like argument: an
array of rank >= 3 that is not an HWIO convolution kernel, or a dict or tuple holding one.
tf.data's map functions are traced with such tensors and the jitted steps with tracers, so
both show. Two files pass the image in other forms and are not seen: ``data/sources.py``
(the encoded bytes, rank 0) and ``train/optim.py`` (gradients of kernels).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "resnext_jax") + os.sep


def image_like(value, depth: int = 0) -> bool:
    shape = getattr(value, "shape", None)
    if shape is not None:
        try:
            shape = tuple(shape)
        except TypeError:  # a tf.Tensor of unknown rank
            return False
        kernel = len(shape) == 4 and shape[0] == shape[1] and shape[0] in (1, 3, 7)
        return len(shape) >= 3 and not kernel
    if depth < 2 and isinstance(value, dict):
        return any(image_like(v, depth + 1) for v in list(value.values())[:8])
    if depth < 2 and isinstance(value, tuple | list):
        return any(image_like(v, depth + 1) for v in list(value)[:8])
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="seresnext50_32x4d_racm")
    args = parser.parse_args()
    from resnext_jax import data, train

    seen: dict[str, set[str]] = collections.defaultdict(set)
    flowing = threading.Event()

    def profile(frame, event, _):
        code = frame.f_code
        if event != "call" or not flowing.is_set() or not code.co_filename.startswith(PACKAGE):
            return
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if any(image_like(frame.f_locals.get(n)) for n in names):
            seen[code.co_filename[len(PACKAGE):]].add(code.co_name)

    for cls in (data.TrainData, data.SyntheticData):
        def iterate(self, *a, _iterate=cls.iterate, **k):
            flowing.set()
            return _iterate(self, *a, **k)
        cls.iterate = iterate

    config = train.get_config(args.config)
    scope = contextlib.nullcontext()
    if config.data.name == "imagenet2012":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from mock_tfds import mock_tfds

        config.data.data_dir = tempfile.mkdtemp()
        scope = mock_tfds(config.data.data_dir, "imagenet2012",
                          {"train": 64, config.data.eval_split: 16}, num_classes=10)
        config.model.name, config.data.image_size = "tiny_seresnext", 32
        config.model.dtype = "float32"
        config.batch_size = config.eval_batch_size = 8
    config.num_train_steps, config.eval_every_epochs = 3, 0.0
    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        with scope:
            train.train_and_evaluate(config, tempfile.mkdtemp())
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    for path in sorted(seen):
        print(f"{path:24s} {', '.join(sorted(seen[path]))}")
    print(f"{len(seen)} files seen, plus data/sources.py and train/optim.py: "
          f"{len(seen) + 2}")


if __name__ == "__main__":
    main()
