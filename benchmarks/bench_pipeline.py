"""Host input pipeline speed: ImageNet-sized JPEGs through tf.data, per host CPU core.

    PYTHONPATH=. python benchmarks/bench_pipeline.py [--images 256] [--threads 1,2]

Generates JPEGs of ImageNet's typical sizes (500x375 and the like, about 110 KB each at
quality 90) in memory, then times, in one run: a reference pipeline with the ops of flax's
ImageNet example (``decode_and_crop_jpeg`` of a sampled box, bicubic resize, flip); the
trainer's train preprocessing (``resnext_jax.data.Preprocess.train``: the same with the
transform's filter, plus normalisation), alone and with each augmentation the recipes add
(random erasing, TrivialAugment Wide, RandAugment, and the torchvision V2 recipe's whole
pipeline at 176); and the eval preprocessing (resize the shorter side, center crop,
normalise). Each runs with a private thread pool of N threads (the cores it may use) and
``AUTOTUNE`` map parallelism, and once more with tf.data's defaults (the global pool).
Cold start: seconds to the first batch of a fresh iterator; steady: images per second over
the following batches. A second table runs the plain train pipeline under tf.data options
that could matter, as ratios to the defaults. The last lines say how many cores, at one
thread's rate, would feed an accelerator training at the given rates (``--feed``).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import tensorflow as tf

from resnext_jax.data.preprocess import Preprocess

SIZES = [(375, 500), (500, 375), (333, 500), (480, 640)]  # ImageNet's common (H, W)
# Training images/s of one accelerator (reference.md: NVIDIA DeepLearningExamples, A100 AMP).
FEED = "A100 ResNeXt-101 32x4d AMP=1211,A100 SE-ResNeXt-101 32x4d AMP=855"


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Photograph-like content (smooth fields plus grain), so that decode costs what it would."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        coarse = rng.uniform(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
        smooth = tf.image.resize(coarse[None], (h, w), method="bicubic")[0].numpy()
        image = np.clip(smooth + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        out.append(tf.io.encode_jpeg(image, quality=90).numpy())
    return out


def reference_train(image_bytes: tf.Tensor, seed: tf.Tensor, size: int = 224) -> tf.Tensor:
    """flax/examples/imagenet's train preprocessing, with stateless seeds."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.io.extract_jpeg_shape(image_bytes)
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4]), crop_seed, min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    y, x, _ = tf.unstack(begin)
    h, w, _ = tf.unstack(crop)
    image = tf.image.decode_and_crop_jpeg(image_bytes, tf.stack([y, x, h, w]), channels=3)
    image = tf.image.resize(image, [size, size], method="bicubic")
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


# The train pipelines: what each adds to Preprocess.train's defaults.
TRAIN_KINDS = {
    "train": {},
    "train + random erasing 0.25": {"erase_prob": 0.25},
    "train + TrivialAugment Wide": {"auto_augment": "ta_wide"},
    "train + RandAugment m7 mstd0.5 inc1": {"auto_augment": "rand-m7-mstd0.5-inc1"},
    "torchvision V2 (176, TA Wide, erase 0.1)": {"image_size": 176, "auto_augment": "ta_wide",
                                                  "erase_prob": 0.1, "erase_mode": "const"},
}


def _options(threads: int | None = None, autotune: bool = True, deterministic: bool = True,
             optimize: bool = True) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = autotune
    options.experimental_optimization.apply_default_optimizations = optimize
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return options


def pipeline(jpegs: list[bytes], kind: str, batch: int, epochs: int,
             options: tf.data.Options, parallel: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    count = len(jpegs)
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(jpegs)).repeat(epochs)
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(count * epochs))
    if kind in TRAIN_KINDS:
        preprocess = Preprocess(**TRAIN_KINDS[kind])
        fn = lambda b, i: preprocess.train({"image": b, "label": 0},  # noqa: E731
                                           tf.stack([i, 0]))["image"]
    elif kind == "eval":
        preprocess = Preprocess()
        fn = lambda b, i: preprocess.eval({"image": b, "label": 0})["image"]  # noqa: E731
    else:
        fn = lambda b, i: reference_train(b, tf.stack([i, 0]))  # noqa: E731
    ds = ds.map(fn, num_parallel_calls=parallel)
    ds = ds.batch(batch, drop_remainder=True).prefetch(2)
    return ds.with_options(options)


def measure(jpegs, kind, batch, epochs, options, parallel=tf.data.AUTOTUNE
            ) -> tuple[float, float]:
    ds = pipeline(jpegs, kind, batch, epochs, options, parallel)
    start = time.perf_counter()
    batches = iter(ds)
    next(batches).numpy()
    cold = time.perf_counter() - start
    start, images = time.perf_counter(), 0
    for b in batches:
        images += int(b.shape[0])
    return cold, images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}")
    parser.add_argument("--feed", default=FEED, help="NAME=img/s,... to size the host for")
    args = parser.parse_args()
    jpegs = make_jpegs(args.images)
    print(f"{args.images} JPEGs, mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} KB; "
          f"{os.cpu_count()} cores; TensorFlow {tf.__version__}; batch {args.batch}, "
          f"{args.epochs} passes\n")
    print("| pipeline | threads | cold start s | steady img/s | img/s per thread |")
    print("|---|---|---|---|---|")
    per_core = {}
    for kind in ("reference", *TRAIN_KINDS, "eval"):
        for threads in [int(t) for t in args.threads.split(",")] + [None]:
            cold, rate = measure(jpegs, kind, args.batch, args.epochs, _options(threads))
            label = str(threads) if threads else "tf.data defaults"
            per = f"{rate / threads:.0f}" if threads else "-"
            print(f"| {kind} | {label} | {cold:.2f} | {rate:.0f} | {per} |")
            if threads == 1 and kind != "eval":
                per_core[kind] = rate
    cores = os.cpu_count()
    variants = {
        "defaults (global pool, AUTOTUNE, deterministic, default optimisations)": {},
        f"private pool of {cores} threads, no intra-op parallelism": {"threads": cores},
        "deterministic = False": {"deterministic": False},
        "default static optimisations off": {"optimize": False},
        f"autotune off, map parallelism fixed at {cores}": {"autotune": False,
                                                             "parallel": cores},
    }
    print("\n| train pipeline, tf.data options | steady img/s | vs defaults |\n|---|---|---|")
    base = None
    for label, kw in variants.items():
        parallel = kw.pop("parallel", tf.data.AUTOTUNE)
        # Median of three runs of each: a shared machine is noisy.
        rate = float(np.median([measure(jpegs, "train", args.batch, args.epochs,
                                        _options(**kw), parallel)[1] for _ in range(3)]))
        base = base or rate
        print(f"| {label} | {rate:.0f} | {rate / base:.2f}x |")
    print()
    for item in args.feed.split(","):
        name, rate = item.rsplit("=", 1)
        need = {k: float(rate) / v for k, v in per_core.items()}
        print(f"{name} ({rate} img/s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in need.items()) + " cores at one thread's rate")


if __name__ == "__main__":
    main()
