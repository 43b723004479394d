"""Run by tests/test_parallel.py in a subprocess with 8 simulated CPU devices: compiles and
runs the trainer's steps and a backbone's own sharded jit on 1- and 8-device meshes and
prints one JSON object with what each device computes and moves, and the numbers."""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import resnext_jax as rx
from resnext_jax import hlo
from resnext_jax.train.steps import Mixing, create_state, make_eval_step, make_train_step

assert jax.device_count() == 8, jax.devices()
SIZE, BATCH = 32, 16
MESHES = {n: Mesh(np.array(jax.devices()[:n]), ("data",)) for n in (1, 8)}


def _batch(mesh, dtype=jnp.float32):
    sharding = NamedSharding(mesh, P("data"))
    images = jax.random.normal(jax.random.key(1), (BATCH, SIZE, SIZE, 3), dtype)
    labels = jnp.arange(BATCH) % 10
    return {k: jax.device_put(v, sharding) for k, v in
            {"image": images, "label": labels, "mask": jnp.ones(BATCH)}.items()}


def _ideal_bytes(state, accum: int) -> int:
    """Gradients once, BatchNorm statistics forward and backward per micro-batch, metrics."""
    params = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state.params))
    stats = sum(x.size * 4 for x in jax.tree_util.tree_leaves(state.batch_stats))
    return params + 2 * accum * stats + 16


@functools.cache
def _variables(name: str) -> dict:
    """Initialised once per architecture (initialisation compiles slowly on the CPU)."""
    model = rx.create_model(name)
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))


def train_case(name: str, lowering: str, accum: int, dtype: str, drop_path: float,
               mixing: Mixing) -> dict:
    model = rx.create_model(name, lowering=lowering, dtype=jnp.dtype(dtype),
                            drop_path_rate=drop_path)
    tx = optax.sgd(0.1, momentum=0.9)
    out = {}
    for n, mesh in MESHES.items():
        replicated = NamedSharding(mesh, P())
        state = jax.device_put(create_state(model, tx, None, (SIZE, SIZE, 3), False,
                                            _variables(name)), replicated)
        step = jax.jit(make_train_step(
            model, tx, optax.constant_schedule(0.1), num_classes=10, label_smoothing=0.1,
            ema_decay=0.0, accum_steps=accum, seed=0, mesh=mesh, mixing=mixing),
            out_shardings=(replicated, replicated))
        batch = _batch(mesh)
        train = {k: v for k, v in batch.items() if k != "mask"}
        compiled = step.lower(state, train).compile()
        new, metrics = compiled(state, train)
        evaluate = jax.jit(make_eval_step(model, num_classes=10, use_ema=False, mesh=mesh))
        eval_compiled = evaluate.lower(new, batch).compile()
        sums = eval_compiled(new, batch)
        out[n] = {"train": hlo.per_device(compiled), "eval": hlo.per_device(eval_compiled),
                  "ideal": _ideal_bytes(state, accum), "loss": float(metrics["loss"]),
                  "eval_loss": float(sums["loss"]),
                  "params": [np.asarray(x, np.float64).ravel().tolist()[:64]
                             for x in jax.tree_util.tree_leaves(new.params)]}
    return out


def backbone_case(name: str, data_axis: str | None) -> dict:
    """A user's own jit of ``model.apply`` (and its gradient) with a batch-sharded input."""
    mesh = MESHES[8]
    model = rx.create_model(name, data_axis=data_axis)
    variables = _variables(name)
    images = _batch(mesh)["image"]

    def loss(params, images):
        logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                images, train=True, mutable=["batch_stats"])
        return jnp.mean(logits ** 2)

    with warnings.catch_warnings(record=True) as caught, jax.set_mesh(mesh):
        warnings.simplefilter("always")
        forward = jax.jit(model.apply).lower(variables, images).compile()
        grad = jax.jit(jax.grad(loss)).lower(variables["params"], images).compile()
        logits, grads = forward(variables, images), grad(variables["params"], images)
    plain = rx.create_model(name)  # one device, no mesh: the reference numbers
    ref_logits = jax.jit(plain.apply)(variables, np.asarray(images))
    ref_grads = jax.jit(jax.grad(loss))(variables["params"], np.asarray(images))
    grad_err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree_util.tree_leaves(grads),
                                   jax.tree_util.tree_leaves(ref_grads), strict=True))
    state = create_state(model, optax.sgd(0.1), None, (SIZE, SIZE, 3), False, variables)
    return {"forward": hlo.per_device(forward), "grad": hlo.per_device(grad),
            "ideal": _ideal_bytes(state, 1),
            "logits_err": float(np.max(np.abs(np.asarray(logits) - np.asarray(ref_logits)))),
            "grad_err": grad_err, "warnings": [str(w.message) for w in caught]}


def parallel_apply_case(name: str) -> dict:
    """``rx.ParallelApply`` (what extract and viz run) over the 8 devices."""
    variables, images = _variables(name), np.asarray(_batch(MESHES[8])["image"])
    forward = rx.ParallelApply(rx.create_model(name))
    ref = jax.jit(rx.create_model(name).apply)(variables, images)
    return {"forward": hlo.per_device(forward.lower(variables, images).compile()),
            "logits_err": float(np.max(np.abs(np.asarray(forward(variables, images)) - ref)))}


def explicit_mesh_case(name: str) -> dict:
    """No ``data_axis``: under explicit sharding the input's type names the batch axis."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    variables, images = _variables(name), np.asarray(_batch(MESHES[8])["image"])
    model = rx.create_model(name)
    with jax.set_mesh(mesh):
        sharded = jax.device_put(images, P("data"))
        compiled = jax.jit(model.apply).lower(variables, sharded).compile()
        logits = compiled(variables, sharded)
    ref = jax.jit(model.apply)(variables, images)
    return {"forward": hlo.per_device(compiled),
            "logits_err": float(np.max(np.abs(np.asarray(logits) - np.asarray(ref))))}


def readme_case() -> dict:
    """The user guide's sharded-jit snippet, verbatim, on this process's devices."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from readme_snippets import snippet

    scope: dict = {}
    exec(snippet("sharded-jit"), scope)
    ref = jax.jit(scope["model"].apply)(scope["variables"], np.asarray(scope["images"]))
    return {"logits_err": float(np.max(np.abs(np.asarray(scope["logits"]) - ref))),
            "features": {k: list(v.shape) for k, v in scope["features"].items()}}


def main() -> None:
    mixing = Mixing(mixup_alpha=0.8, cutmix_alpha=1.0)
    cases = {  # (model, lowering, grad_accum_steps, compute dtype, drop_path_rate, mixing)
        "resnext_fast": ("tiny_resnext", "fast", 1, "float32", 0.0, Mixing()),
        "seresnext_fast_accum_droppath_mixing": ("tiny_seresnext", "fast", 2, "float32", 0.2,
                                                 mixing),
        "seresnext_xla_bf16_accum": ("tiny_seresnext", "xla", 2, "bfloat16", 0.0, Mixing()),
    }
    only = os.environ.get("SHARDED_CHECKS")
    result = {key: train_case(*args) for key, args in cases.items()
              if not only or key in only.split(",")}
    result["backbone"] = backbone_case("tiny_seresnext", "data")
    result["backbone_without_data_axis"] = backbone_case("tiny_seresnext", None)
    result["parallel_apply"] = parallel_apply_case("tiny_resnext")
    result["explicit_mesh"] = explicit_mesh_case("tiny_seresnext")
    result["readme"] = readme_case()
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
