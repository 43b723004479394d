"""Shared pieces of the speed benchmarks: steps, timing, FLOP counts, tables."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh

import resnext_jax as rx
from resnext_jax.ops import DATA_AXIS
from resnext_jax.train.steps import TrainState, create_state, make_train_step

WARMUP = 2  # untimed calls first: a first call can still allocate or pick kernels


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = WARMUP) -> float:
    """Median wall time of ``fn()`` (which must block until its result is ready) over
    ``repeats`` calls after ``warmup`` untimed ones. torch_cpu.py times PyTorch the same way."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_gflops(name: str, image_size: int = 224) -> float:
    """Forward GFLOP per image (2 x XLA's MAC count with the reference lowering)."""
    return 2 * rx.count_macs(rx.create_model(name), (1, image_size, image_size, 3)) / 1e9


def build(name: str, lowering: str, dtype: Any, batch: int, image_size: int = 224):
    """Model, variables, optimizer state, an image batch and labels on the default device."""
    model = rx.create_model(name, lowering=lowering, dtype=dtype)
    images = jax.random.normal(jax.random.key(0), (batch, image_size, image_size, 3), dtype)
    labels = jax.random.randint(jax.random.key(1), (batch,), 0, model.num_classes)
    variables = jax.jit(model.init)(jax.random.key(2), images[:1])
    return model, variables, images, labels


def jit(fn: Callable, options: dict | None = None, **kwargs):
    """``jax.jit`` with XLA ``options`` (default: ``rx.compiler_options()``)."""
    return jax.jit(fn, compiler_options=rx.compiler_options() if options is None else options,
                   **kwargs)


def make_steps(model, tx: optax.GradientTransformation, options: dict | None = None):
    """Jitted inference (``(variables, images)``) and the trainer's own train step
    (``(state, batch) -> (state, metrics)``, BatchNorm in train mode, on one device).

    ``options``: XLA compiler options for both (default: ``rx.compiler_options()``).
    """

    @functools.partial(jit, options=options)
    def infer(variables, images):
        return model.apply(variables, images, train=False)

    mesh = Mesh(np.array(jax.devices()[:1]), (DATA_AXIS,))
    step = make_train_step(model, tx, optax.constant_schedule(0.0), num_classes=model.num_classes,
                           label_smoothing=0.0, ema_decay=0.0, accum_steps=1, seed=0, mesh=mesh)
    train = jit(step, options, donate_argnums=0)
    return infer, train


def train_state(model, tx: optax.GradientTransformation, variables) -> TrainState:
    return create_state(model, tx, None, (), ema=False, variables=variables)


def time_model(name: str, lowering: str, dtype: Any, batch: int, modes: Sequence[str],
               repeats: int, image_size: int = 224,
               options: dict | None = None) -> dict[str, float]:
    """Compile seconds and img/s of inference (batch ``batch``) and / or a training step."""
    model, variables, images, labels = build(name, lowering, dtype, batch, image_size)
    tx = optax.sgd(0.1, momentum=0.9)
    infer, train = make_steps(model, tx, options)
    out = {}
    if "infer" in modes:
        start = time.perf_counter()
        compiled = infer.lower(variables, images).compile()
        out["infer_compile_s"] = time.perf_counter() - start
        seconds = median_seconds(lambda: jax.block_until_ready(compiled(variables, images)),
                                 repeats)
        out["infer_img_s"] = batch / seconds
    if "train" in modes:
        state, batch_ = train_state(model, tx, variables), {"image": images, "label": labels}
        start = time.perf_counter()
        compiled = train.lower(state, batch_).compile()
        out["train_compile_s"] = time.perf_counter() - start

        def step():
            nonlocal state
            state = jax.block_until_ready(compiled(state, batch_))[0]

        out["train_img_s"] = batch / median_seconds(step, repeats)
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (floats to three significant figures)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
